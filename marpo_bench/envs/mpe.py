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

import copy
import importlib
from typing import Any

import numpy as np
import torch

from marpo_bench.envs.base import EnvFamily, EnvInfo, TaskBounds, TaskParam, TimeStep, agent_id_onehot

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


SPREAD_PARAMS = (TaskParam("num_agents", int, 3, "agents, and as many landmarks", low=1, high=10),)
"""simple_spread's parameter (``jax_mpe:simple_spread?num_agents=5``), in both MPE families."""


def task_name(task: str, num_agents: int | None) -> str:
    """The canonical task name of an env built with these parameters (``EnvInfo.task``)."""
    return task if num_agents in (None, 3) else f"{task}?num_agents={num_agents}"


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
        num_agents: int | None = None,
    ) -> None:
        check_task(task)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        module_name, kwargs = _MPE2_TASKS[task]
        if num_agents is not None:  # simple_spread only (SPREAD_PARAMS): N agents and N landmarks
            kwargs = {**kwargs, "N": num_agents}
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
            task=task_name(task, num_agents),
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
        self._rng_at_reset: list[dict] = []  # each generator's state before its env's last reset
        self._ep_return = np.zeros(num_envs, dtype=np.float64)
        self._ep_length = np.zeros(num_envs, dtype=np.int64)

    # ------------------------------------------------------------------ helpers
    def _reset_env(self, e: int, out: np.ndarray) -> None:
        """Reset env ``e`` with the next seed of its generator; write its padded obs into ``out``."""
        self._rng_at_reset[e] = copy.deepcopy(self._rngs[e].bit_generator.state)
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
        self._rng_at_reset = [{} for _ in range(self._E)]
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

    def snapshot(self) -> dict[str, Any] | None:
        """Each generator's state before its env's last reset, when every env has just been reset
        (mpe2's simulator state cannot be read generically, but a reset can be replayed); None
        mid-episode. MAPPO's default rollout (25 steps = the horizon) ends at episode starts."""
        if not self._rngs or bool(self._ep_length.any()):
            return None
        return {"kind": "mpe", "rng_states": copy.deepcopy(self._rng_at_reset)}

    def restore(self, snap: dict[str, Any], seed: int) -> None:
        """Replay each env's last reset from the generator state saved in ``snap``."""
        if snap.get("kind") != "mpe" or len(snap.get("rng_states", ())) != self._E:
            raise ValueError("the saved env state does not match this env (kind or num_envs)")
        self.reset(seed)
        for e, state in enumerate(snap["rng_states"]):
            self._rngs[e].bit_generator.state = state
            self._reset_env(e, np.zeros((self._N, self._D), dtype=np.float32))

    def close(self) -> None:
        """Close every PettingZoo env."""
        for env in self._envs:
            env.close()
        self._envs = []


# ------------------------------------------------------------------------------------------------
# The family: normalisation bounds (shared with jax_mpe.py, measured per backend) and registration

MPE_MEASUREMENT = (
    "Each MPE row is measured by measure_bounds(env, task) in the tests (tests/mpe_oracle.py): evaluation.evaluate on "
    "make_env(env, task, 512), i.e. one 25-step episode in each of 512 parallel envs with eval seed 123, for the "
    "uniform-random policy (UniformRandomPolicy, sampled actions) and for a scripted oracle (MPEOracle, "
    "deterministic) that reads goals and positions from the observations and steers with a one-step look-ahead. "
    "The oracle is a strong, reproducible reference on exactly this scale, not an optimum: learned policies may "
    "exceed it (scores above 1 are clipped for aggregation and listed). ± is the standard error over the episodes."
)
"""How the MPE families' normalisation bounds were obtained (printed above the table in the report)."""

ORACLE_STRATEGIES: dict[str, str] = {  # how the tests' MPEOracle (tests/mpe_oracle.py) plays each task
    "simple_spread": "agents take the landmark assignment with the least total distance",
    "simple_reference": "each agent says the other's goal, then moves to the goal it hears",
    "simple_speaker_listener": "the speaker says the goal, the listener moves to the goal it hears",
}


def mpe_bounds(measured: dict[str, tuple[float, float, float, float]]) -> dict[str, TaskBounds]:
    """Per-task bounds from measured (random, its sem, reference, its sem) on the team_sum scale."""
    return {
        task: TaskBounds(
            random=rnd, reference=ref, scale="team_sum", episode_limit=DEFAULT_MAX_CYCLES,
            random_source=f"uniform-random policy over available actions (± {rnd_se:.2f})",
            reference_source=f"scripted oracle: {ORACLE_STRATEGIES[task]} (± {ref_se:.2f})",
        )
        for task, (rnd, rnd_se, ref, ref_se) in measured.items()
    }


# Measured with measure_bounds() (see MPE_MEASUREMENT); tests/test_analysis.py re-measures them
# (slow test). mpe2 scores 1-6% higher than JaxMARL in all six measurements (0.6-2.5 standard errors
# each: a small systematic difference between the implementations), so each family has its own.
_MEASURED = {  # random, sem, reference, sem
    "simple_spread": (-77.00, 0.97, -21.37, 0.41),
    "simple_reference": (-55.68, 0.86, -14.62, 0.33),
    "simple_speaker_listener": (-79.06, 3.02, -14.43, 0.69),
}


def _make(task: str, num_envs: int, device: torch.device | str, agent_id: bool, **params: Any) -> MPEVecEnv:
    return MPEVecEnv(task, num_envs, device=device, agent_id=agent_id, **params)


FAMILY = EnvFamily(
    name="mpe",
    description="PettingZoo MPE via mpe2: reference dynamics, one Python env per slot (CPU)",
    tasks=MPE_TASKS,
    factory=_make,
    score="return",
    bounds=mpe_bounds(_MEASURED),
    measurement=MPE_MEASUREMENT,
    bench_sizes=(1, 8),
    params={"simple_spread": SPREAD_PARAMS},
    packages=("mpe2", "pettingzoo"),
)
