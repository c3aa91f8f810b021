"""Rendezvous: N agents on a G x G grid must all stand on one cell. A small env family in one
file, written against marpo-bench's env contract (``marpo_bench.envs.base``) in plain torch.

- Actions: 0 stay, 1 up, 2 down, 3 left, 4 right (all always available; moves stop at the walls).
- Observation of agent i: its own (x, y) / (G - 1), then every other agent's offset / (G - 1),
  in agent order; plus a one-hot agent id when asked. Global state: every agent's (x, y) / (G - 1).
- Team reward: -0.05 per step while apart; +1 and the episode *terminates* when all agents meet.
  After 20 steps apart the episode is *truncated* (a time limit, not a terminal state).
  Returns lie in [-1, 1]; a uniform-random policy rarely meets.
- Task parameter: ``rendezvous:meet?num_agents=3`` (2 to 4 agents, default 2).
- ``snapshot``/``restore``: the whole state is a few tensors and a torch generator, so a resumed
  run continues exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from marpo_bench.envs.base import EnvFamily, EnvInfo, TaskParam, TimeStep, agent_id_onehot

GRID = 5
HORIZON = 20
STEP_COST = 0.05
MOVES = torch.tensor([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]])


class RendezvousVecEnv:
    """E rendezvous games stepped together as tensors."""

    def __init__(self, num_envs: int, num_agents: int = 2, device: torch.device | str = "cpu",
                 agent_id: bool = True) -> None:
        self.device = torch.device(device)
        self._E, self._N, self._agent_id = num_envs, num_agents, agent_id
        obs_dim = 2 * num_agents + (num_agents if agent_id else 0)
        task = "meet" if num_agents == 2 else f"meet?num_agents={num_agents}"
        self.info = EnvInfo(family="rendezvous", task=task, num_envs=num_envs, num_agents=num_agents,
                            obs_dim=obs_dim, state_dim=2 * num_agents, num_actions=len(MOVES),
                            episode_limit=HORIZON, reward_scale="team_shared", has_won=False)
        self._gen = torch.Generator()
        self._pos = torch.zeros(num_envs, num_agents, 2, dtype=torch.int64)
        self._t = torch.zeros(num_envs, dtype=torch.int64)
        self._ret = torch.zeros(num_envs)

    def _draw(self, n: int) -> torch.Tensor:
        return torch.randint(0, GRID, (n, self._N, 2), generator=self._gen)

    def _observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        pos = self._pos.float() / (GRID - 1)
        offsets = pos.unsqueeze(1) - pos.unsqueeze(2)  # [E, i, j, 2]: agent j relative to agent i
        keep = ~torch.eye(self._N, dtype=torch.bool)
        others = offsets[:, keep].reshape(self._E, self._N, 2 * (self._N - 1))
        obs = torch.cat([pos, others], dim=-1)
        if self._agent_id:
            obs = torch.cat([obs, agent_id_onehot(self._E, self._N, "cpu")], dim=-1)
        return obs, pos.reshape(self._E, -1)

    def _avail(self) -> torch.Tensor:
        return torch.ones(self._E, self._N, len(MOVES), dtype=torch.bool, device=self.device)

    def reset(self, seed: int) -> TimeStep:
        self._gen.manual_seed(seed)
        self._pos = self._draw(self._E)
        self._t.zero_()
        self._ret.zero_()
        obs, state = self._observe()
        alive = torch.ones(self._E, self._N, dtype=torch.bool)
        return TimeStep.first(obs, state, self._avail().cpu(), alive).to(self.device)

    def step(self, actions: torch.Tensor) -> TimeStep:
        acts = actions.detach().to("cpu", torch.int64)
        self._pos = (self._pos + MOVES[acts]).clamp(0, GRID - 1)
        self._t += 1
        met = (self._pos == self._pos[:, :1]).all(dim=-1).all(dim=-1)
        reward = torch.where(met, torch.tensor(1.0), torch.tensor(-STEP_COST))
        self._ret += reward
        terminated = met
        truncated = ~met & (self._t >= HORIZON)
        done = terminated | truncated
        final_obs, final_state = self._observe()
        episode_return = torch.where(done, self._ret, torch.tensor(float("nan")))
        episode_length = torch.where(done, self._t, torch.zeros_like(self._t))
        if bool(done.any()):
            fresh = self._draw(self._E)
            self._pos = torch.where(done.view(-1, 1, 1), fresh, self._pos)
            self._t[done] = 0
            self._ret[done] = 0.0
        obs, state = self._observe()
        return TimeStep(obs=obs, state=state, avail_actions=self._avail().cpu(),
                        alive=torch.ones(self._E, self._N, dtype=torch.bool), reward=reward,
                        terminated=terminated, truncated=truncated, final_obs=final_obs,
                        final_state=final_state, episode_return=episode_return,
                        episode_length=episode_length,
                        won=torch.full((self._E,), float("nan"))).to(self.device)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "rendezvous", "pos": self._pos.clone(), "t": self._t.clone(), "ret": self._ret.clone(),
                "gen": self._gen.get_state()}

    def restore(self, snap: dict[str, Any], seed: int) -> None:
        if snap.get("kind") != "rendezvous" or tuple(snap["pos"].shape) != tuple(self._pos.shape):
            raise ValueError("the saved state is not a rendezvous state of this size")
        self._pos, self._t, self._ret = snap["pos"].clone(), snap["t"].clone(), snap["ret"].clone()
        self._gen.set_state(snap["gen"])

    def close(self) -> None:
        pass


def _make(task: str, num_envs: int, device: torch.device | str, agent_id: bool,
          num_agents: int = 2) -> RendezvousVecEnv:
    return RendezvousVecEnv(num_envs, num_agents=num_agents, device=device, agent_id=agent_id)


FAMILY = EnvFamily(
    name="rendezvous",
    description="Example plugin: N agents on a 5x5 grid must meet on one cell (plain torch)",
    tasks=("meet",),
    factory=_make,
    score="return",  # no bounds: the report shows its raw returns and says why
    params={"meet": (TaskParam("num_agents", int, 2, "agents that must meet", low=2, high=4),)},
    # Per-algorithm defaults for this family: 20-step rollouts, one episode horizon per rollout.
    algo_defaults={"ppo_kl": {"rollout_len": HORIZON}},
)
