"""MPE through mpe2's PettingZoo parallel envs: the reference dynamics (CPU, one Python env per slot).

Conventions shared with ``jax_mpe.py`` (the two backends expose identical spaces and rewards):

- Team reward = sum over agents of PettingZoo's per-agent rewards (``reward_scale="team_sum"``).
  simple_spread and simple_reference mix ``local_ratio * local + (1 - local_ratio) * global``
  per agent with ``local_ratio=0.5``; simple_speaker_listener gives both agents the same reward.
- The ``max_cycles`` limit (25) is truncation; MPE has no terminal states here.
- Observations are padded with zeros to the widest agent's observation, actions to the largest
  action set; ``avail_actions`` marks each agent's real actions (indices ``0..n_i-1``, PettingZoo's
  own discrete encoding, e.g. simple_reference ``a = 5 * say + move``).
- Global state = concatenation of the agents' padded observations without agent ids.
- Seeding: ``reset(seed)`` gives env ``e`` its own ``numpy`` generator seeded from
  ``SeedSequence(seed, spawn_key=(e,))``; every reset of env ``e`` (the first and each auto-reset)
  seeds the PettingZoo env with the next draw of that generator, so whole runs are reproducible.

mpe2 is imported lazily (in the constructor), so this module is cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch

from marpo_bench.envs.base import EnvInfo, TimeStep, agent_id_onehot

MPE_TASKS: tuple[str, ...] = ("simple_spread", "simple_reference", "simple_speaker_listener")
"""Tasks both MPE backends provide."""

DEFAULT_MAX_CYCLES = 25
"""Episode horizon of MAPPO's and EPyMARL's MPE papers (and PettingZoo's default)."""

# task -> (mpe2 module, constructor kwargs besides max_cycles / continuous_actions)
_MPE2_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "simple_spread": ("mpe2.simple_spread_v3", {"N": 3, "local_ratio": 0.5}),
    "simple_reference": ("mpe2.simple_reference_v3", {"local_ratio": 0.5}),
    "simple_speaker_listener": ("mpe2.simple_speaker_listener_v4", {}),
}


def check_task(task: str) -> None:
    """Raise ``ValueError`` naming the valid tasks if ``task`` is not an MPE task."""
    if task not in MPE_TASKS:
        raise ValueError(f"unknown MPE task {task!r}; valid tasks: {', '.join(MPE_TASKS)}")


class MPEVecEnv:
    """E independent mpe2 parallel envs stepped in a Python loop, behind ``MultiAgentVecEnv``."""

    def __init__(
        self,
        task: str,
        num_envs: int,
        device: torch.device | str = "cpu",
        agent_id: bool = True,
        max_cycles: int = DEFAULT_MAX_CYCLES,
    ) -> None:
        check_task(task)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        module_name, kwargs = _MPE2_TASKS[task]
        module = importlib.import_module(module_name)
        self._envs = [
            module.parallel_env(max_cycles=max_cycles, continuous_actions=False, **kwargs) for _ in range(num_envs)
        ]
        env0 = self._envs[0]
        self._agents: list[str] = list(env0.possible_agents)
        self._obs_sizes = [int(env0.observation_space(a).shape[0]) for a in self._agents]
        self._num_actions = [int(env0.action_space(a).n) for a in self._agents]

        self.device = torch.device(device)
        self._agent_id = agent_id
        self._E = num_envs
        self._N = len(self._agents)
        self._D = max(self._obs_sizes)  # padded obs width, without agent id
        self._A = max(self._num_actions)
        self.info = EnvInfo(
            family="mpe",
            task=task,
            num_envs=num_envs,
            num_agents=self._N,
            obs_dim=self._D + (self._N if agent_id else 0),
            state_dim=self._N * self._D,
            num_actions=self._A,
            episode_limit=max_cycles,
            reward_scale="team_sum",
            has_won=False,
        )
        avail = torch.zeros(self._N, self._A, dtype=torch.bool)
        for i, n in enumerate(self._num_actions):
            avail[i, :n] = True
        self._avail = avail.to(self.device)
        self._onehot = agent_id_onehot(num_envs, self._N, self.device)
        self._rngs: list[np.random.Generator] = []
        self._ep_return = np.zeros(num_envs, dtype=np.float64)
        self._ep_length = np.zeros(num_envs, dtype=np.int64)

    # ------------------------------------------------------------------ helpers
    def _reset_env(self, e: int, out: np.ndarray) -> None:
        """Reset env ``e`` with the next seed of its generator; write its padded obs into ``out``."""
        obs, _ = self._envs[e].reset(seed=int(self._rngs[e].integers(2**31 - 1)))
        self._fill(out, obs)
        self._ep_return[e] = 0.0
        self._ep_length[e] = 0

    def _fill(self, out: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """Write the per-agent obs dict into ``out`` [N, D] (zero padding already in place)."""
        for i, a in enumerate(self._agents):
            out[i, : self._obs_sizes[i]] = obs[a]

    def _timestep(
        self,
        obs: np.ndarray,
        final_obs: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        episode_return: np.ndarray,
        episode_length: np.ndarray,
    ) -> TimeStep:
        """Build a ``TimeStep`` on ``self.device`` from numpy buffers (fresh tensors every call)."""
        dev = self.device
        o = torch.from_numpy(obs).to(dev)
        fo = torch.from_numpy(final_obs).to(dev)
        state = o.reshape(self._E, -1).clone()
        final_state = fo.reshape(self._E, -1).clone()
        if self._agent_id:
            o = torch.cat([o, self._onehot], dim=-1)
            fo = torch.cat([fo, self._onehot], dim=-1)
        return TimeStep(
            obs=o,
            state=state,
            avail_actions=self._avail.expand(self._E, -1, -1).clone(),
            alive=torch.ones(self._E, self._N, dtype=torch.bool, device=dev),
            reward=torch.from_numpy(reward.astype(np.float32)).to(dev),
            terminated=torch.from_numpy(terminated).to(dev),
            truncated=torch.from_numpy(truncated).to(dev),
            final_obs=fo,
            final_state=final_state,
            episode_return=torch.from_numpy(episode_return.astype(np.float32)).to(dev),
            episode_length=torch.from_numpy(episode_length).to(dev),
            won=torch.full((self._E,), float("nan"), device=dev),
        )

    # ------------------------------------------------------------------ API
    def reset(self, seed: int) -> TimeStep:
        """Reset all E envs from ``seed`` (a non-negative int); see the module doc for the scheme."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self._rngs = [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(e,))) for e in range(self._E)]
        obs = np.zeros((self._E, self._N, self._D), dtype=np.float32)
        for e in range(self._E):
            self._reset_env(e, obs[e])
        false = np.zeros(self._E, dtype=bool)
        return self._timestep(
            obs,
            obs.copy(),
            np.zeros(self._E, dtype=np.float32),
            false,
            false.copy(),
            np.full(self._E, np.nan),
            np.zeros(self._E, dtype=np.int64),
        )

    def step(self, actions: torch.Tensor) -> TimeStep:
        """Step every env with ``actions`` [E, N] (int, each available) and auto-reset finished ones."""
        if not self._rngs:
            raise RuntimeError("call reset(seed) before step()")
        if tuple(actions.shape) != (self._E, self._N):
            raise ValueError(f"actions must have shape {(self._E, self._N)}, got {tuple(actions.shape)}")
        acts = actions.detach().to("cpu", torch.int64).numpy()
        E, N, D = self._E, self._N, self._D
        final_obs = np.zeros((E, N, D), dtype=np.float32)
        reward = np.zeros(E, dtype=np.float64)
        terminated = np.zeros(E, dtype=bool)
        truncated = np.zeros(E, dtype=bool)
        episode_return = np.full(E, np.nan)
        episode_length = np.zeros(E, dtype=np.int64)
        done_envs: list[int] = []
        for e, env in enumerate(self._envs):
            act = {a: int(acts[e, i]) for i, a in enumerate(self._agents)}
            obs, rew, term, trunc, _ = env.step(act)
            self._fill(final_obs[e], obs)
            r = float(sum(rew[a] for a in self._agents))
            reward[e] = r
            self._ep_return[e] += r
            self._ep_length[e] += 1
            terminated[e] = any(term[a] for a in self._agents)
            truncated[e] = any(trunc[a] for a in self._agents) and not terminated[e]
            if terminated[e] or truncated[e]:
                episode_return[e] = self._ep_return[e]
                episode_length[e] = self._ep_length[e]
                done_envs.append(e)
        obs_next = final_obs.copy()
        for e in done_envs:
            obs_next[e] = 0.0
            self._reset_env(e, obs_next[e])
        return self._timestep(obs_next, final_obs, reward, terminated, truncated, episode_return, episode_length)

    def close(self) -> None:
        """Close every PettingZoo env."""
        for env in self._envs:
            env.close()
        self._envs = []
