"""Any PettingZoo Parallel API env with discrete actions, named by its import path.

``pettingzoo:mpe2.simple_spread_v3`` builds ``mpe2.simple_spread_v3.parallel_env()``;
``pettingzoo:pkg.module:make_env`` calls another factory; parameters are passed to it as keyword
arguments, their values read as Python literals:
``'pettingzoo:pettingzoo.sisl.pursuit_v5?n_pursuers=3&max_cycles=100'``.

How a PettingZoo env becomes this suite's env contract (``base.py``):

- Agents are ``possible_agents``, in order. Observations are flattened and zero-padded to the
  widest agent's; a ``Dict`` observation space with ``"observation"`` and ``"action_mask"`` gives
  the observation and the mask. Actions must be ``Discrete``; action sets are padded to the largest
  and each agent's real actions marked in ``avail_actions`` (masks from the observation or from
  ``infos[agent]["action_mask"]`` where the env gives them).
- Global state: the env's ``state()`` where it implements one (flattened), else the concatenated
  padded observations.
- Team reward: the sum over agents of their rewards (``reward_scale="team_sum"``).
- An agent that leaves ``env.agents`` mid-episode is dead: ``alive`` False, zero observation, only
  action 0 available. The episode ends when no agent is left (or all report done); it is
  *truncated* when any agent reports truncation at that step (a time limit), else *terminated*.
- ``episode_limit``: the ``max_cycles`` / ``max_steps`` parameter or attribute of the env.
- Seeding (as ``mpe.py``): env ``e`` has a generator seeded from ``SeedSequence(seed,
  spawn_key=(e,))`` whose next draw seeds each of its resets, so whole runs are reproducible, and a
  checkpoint taken when every env has just reset resumes exactly by replaying those resets.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import inspect
import sys
from typing import Any

import numpy as np
import torch

from marpo_bench.envs.base import EnvFamily, EnvInfo, TimeStep, agent_id_onehot

_LIMIT_NAMES = ("max_cycles", "max_steps", "max_episode_steps", "_max_episode_steps", "episode_limit")


def _top(module_path: str) -> str:
    return module_path.partition(".")[0]


def _factory(task: str) -> Any:
    """The factory named by ``module`` (its ``parallel_env``) or ``module:callable``: a class or a
    Python function outside the standard library (so ``os:system``, ``builtins:exec`` or
    ``shutil:rmtree`` are refused before they are called). Reached only for a task the user typed
    (``EnvFamily.imports_code``)."""
    module_path, _, name = task.partition(":")
    if _top(module_path) in sys.stdlib_module_names:
        raise ValueError(f"pettingzoo task {task!r}: {module_path!r} is part of Python's standard library, not a "
                         "PettingZoo env; name the env's module, e.g. mpe2.simple_spread_v3")
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ValueError(f"pettingzoo task {task!r}: cannot import {module_path!r} ({exc}); install the "
                         "package that provides it") from None
    make = getattr(module, name or "parallel_env", None)
    if not (inspect.isclass(make) or inspect.isfunction(make)) or _top(make.__module__) in sys.stdlib_module_names:
        raise ValueError(f"pettingzoo task {task!r}: {module_path} has no {name or 'parallel_env'} class or function "
                         "of its own; name a Parallel API factory as module or module:callable")
    return make


def _check_env(task: str, env: Any) -> Any:
    """``env`` when it has the PettingZoo Parallel API this adapter reads, else a one-line error."""
    missing = [a for a in ("possible_agents", "observation_space", "action_space", "reset", "step")
               if not hasattr(env, a)]
    if missing:
        raise ValueError(f"pettingzoo task {task!r}: the factory returned a {type(env).__name__}, not a PettingZoo "
                         f"Parallel env (no {', '.join(missing)})")
    return env


def check_task(task: str) -> None:
    """A one-line ``ValueError`` when ``task`` is not an importable module (``module[:callable]``)."""
    module_path = task.partition(":")[0]
    if not module_path or any(not part.isidentifier() for part in module_path.split(".")):
        raise ValueError(f"pettingzoo task {task!r} is not an import path: use e.g. pettingzoo:mpe2.simple_spread_v3")
    if _top(module_path) in sys.stdlib_module_names:
        raise ValueError(f"pettingzoo task {task!r}: {module_path!r} is part of Python's standard library, not a "
                         "PettingZoo env; name the env's module, e.g. mpe2.simple_spread_v3")
    try:
        found = importlib.util.find_spec(module_path) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ValueError(f"pettingzoo task {task!r}: no module {module_path!r} is installed")


def literal(raw: str) -> Any:
    """A parameter's value: a Python literal (``3``, ``0.5``, ``True``) where it parses, else the text."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _episode_limit(env: Any, kwargs: dict[str, Any]) -> int:
    for name in _LIMIT_NAMES:
        if isinstance(kwargs.get(name), int):
            return kwargs[name]
    seen, todo = set(), [env]
    while todo:  # the env, its unwrapped env and what they wrap
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        for name in _LIMIT_NAMES:
            value = getattr(obj, name, None)
            if isinstance(value, int) and value > 0:
                return value
        todo += [getattr(obj, "unwrapped", None), getattr(obj, "env", None), getattr(obj, "aec_env", None)]
    raise ValueError("the env states no episode limit: pass it, e.g. ?max_cycles=100")


class PettingZooVecEnv:
    """E PettingZoo parallel envs stepped in a Python loop, behind ``MultiAgentVecEnv``."""

    def __init__(self, task: str, num_envs: int, device: torch.device | str = "cpu", agent_id: bool = True,
                 **kwargs: Any) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        make = _factory(task)
        self._envs = [_check_env(task, make(**kwargs)) for _ in range(num_envs)]
        env0 = self._envs[0]
        self._agents: list[str] = list(env0.possible_agents)
        self._masked_obs: list[bool] = []
        self._obs_sizes: list[int] = []
        self._num_actions: list[int] = []
        for a in self._agents:
            space = env0.observation_space(a)
            masked = hasattr(space, "spaces") and "observation" in space.spaces and "action_mask" in space.spaces
            shape = (space["observation"] if masked else space).shape
            act = env0.action_space(a)
            if not hasattr(act, "n") or shape is None:
                raise ValueError(f"pettingzoo task {task!r}: agent {a!r} has a {type(act).__name__} action space; "
                                 "only discrete actions and array observations are supported")
            self._masked_obs.append(bool(masked))
            self._obs_sizes.append(int(np.prod(shape)))
            self._num_actions.append(int(act.n))
        self.device = torch.device(device)
        self._agent_id, self._E, self._N = agent_id, num_envs, len(self._agents)
        self._D, self._A = max(self._obs_sizes), max(self._num_actions)
        env0.reset(seed=0)
        try:
            self._state_dim = int(np.asarray(env0.state()).size)
            self._env_state = True
        except (NotImplementedError, AttributeError):
            self._state_dim, self._env_state = self._N * self._D, False
        query = "&".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
        self.info = EnvInfo(family="pettingzoo", task=f"{task}?{query}" if query else task, num_envs=num_envs,
                            num_agents=self._N, obs_dim=self._D + (self._N if agent_id else 0),
                            state_dim=self._state_dim, num_actions=self._A,
                            episode_limit=_episode_limit(env0, kwargs), reward_scale="team_sum", has_won=False)
        self._onehot = agent_id_onehot(num_envs, self._N, self.device)
        self._rngs: list[np.random.Generator] = []
        self._rng_at_reset: list[dict] = []
        self._ep_return = np.zeros(num_envs)
        self._ep_length = np.zeros(num_envs, dtype=np.int64)

    # ------------------------------------------------------------------ per env
    def _write(self, e: int, obs: dict, infos: dict, o: np.ndarray, avail: np.ndarray, alive: np.ndarray) -> None:
        """Write env ``e``'s observations, masks and alive flags into the row buffers."""
        o[:] = 0.0
        avail[:] = False
        alive[:] = False
        for i, a in enumerate(self._agents):
            if a not in obs:
                avail[i, 0] = True  # a dead agent's only action
                continue
            alive[i] = True
            x = obs[a]["observation"] if self._masked_obs[i] else obs[a]
            o[i, : self._obs_sizes[i]] = np.asarray(x, dtype=np.float32).reshape(-1)
            mask = obs[a]["action_mask"] if self._masked_obs[i] else (infos.get(a) or {}).get("action_mask")
            if mask is None:
                avail[i, : self._num_actions[i]] = True
            else:
                avail[i, : self._num_actions[i]] = np.asarray(mask, dtype=bool)[: self._num_actions[i]]

    def _state(self, e: int, o: np.ndarray) -> np.ndarray:
        if self._env_state:
            return np.asarray(self._envs[e].state(), dtype=np.float32).reshape(-1)
        return o.reshape(-1)

    def _reset_env(self, e: int, o: np.ndarray, avail: np.ndarray, alive: np.ndarray, state: np.ndarray) -> None:
        self._rng_at_reset[e] = copy.deepcopy(self._rngs[e].bit_generator.state)
        obs, infos = self._envs[e].reset(seed=int(self._rngs[e].integers(2**31 - 1)))
        self._write(e, obs, infos, o, avail, alive)
        state[:] = self._state(e, o)
        self._ep_return[e] = 0.0
        self._ep_length[e] = 0

    def _buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        E, N = self._E, self._N
        return (np.zeros((E, N, self._D), np.float32), np.zeros((E, N, self._A), bool),
                np.zeros((E, N), bool), np.zeros((E, self._state_dim), np.float32))

    def _obs_tensor(self, o: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(o).to(self.device)
        return torch.cat([t, self._onehot], dim=-1) if self._agent_id else t

    # ------------------------------------------------------------------ API
    def reset(self, seed: int) -> TimeStep:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self._rngs = [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(e,))) for e in range(self._E)]
        self._rng_at_reset = [{} for _ in range(self._E)]
        o, avail, alive, state = self._buffers()
        for e in range(self._E):
            self._reset_env(e, o[e], avail[e], alive[e], state[e])
        dev = self.device
        return TimeStep.first(self._obs_tensor(o), torch.from_numpy(state).to(dev),
                              torch.from_numpy(avail).to(dev), torch.from_numpy(alive).to(dev))

    def step(self, actions: torch.Tensor) -> TimeStep:
        if not self._rngs:
            raise RuntimeError("call reset(seed) before step()")
        if tuple(actions.shape) != (self._E, self._N):
            raise ValueError(f"actions must have shape {(self._E, self._N)}, got {tuple(actions.shape)}")
        acts = actions.detach().to("cpu", torch.int64).numpy()
        E = self._E
        fo, _, _, fs = self._buffers()
        o, avail, alive, state = self._buffers()
        reward, terminated, truncated = np.zeros(E), np.zeros(E, bool), np.zeros(E, bool)
        ep_ret, ep_len = np.full(E, np.nan), np.zeros(E, np.int64)
        index = {a: i for i, a in enumerate(self._agents)}
        for e, env in enumerate(self._envs):
            live = list(env.agents)
            obs, rew, term, trunc, infos = env.step({a: int(acts[e, index[a]]) for a in live})
            r = float(sum(rew.values()))
            reward[e] = r
            self._ep_return[e] += r
            self._ep_length[e] += 1
            done = not env.agents or all(term.get(a, False) or trunc.get(a, False) for a in live)
            if done:  # the finished episode's last observation, then the next episode's first
                self._write(e, obs, infos, fo[e], avail[e], alive[e])
                fs[e] = self._state(e, fo[e])
                truncated[e] = any(trunc.get(a, False) for a in live)
                terminated[e] = not truncated[e]
                ep_ret[e], ep_len[e] = self._ep_return[e], self._ep_length[e]
                self._reset_env(e, o[e], avail[e], alive[e], state[e])
            else:  # agents that left env.agents this step are dead from now on
                self._write(e, {a: x for a, x in obs.items() if a in env.agents}, infos, o[e], avail[e], alive[e])
                state[e] = fs[e] = self._state(e, o[e])
                fo[e] = o[e]
        dev = self.device
        return TimeStep(
            obs=self._obs_tensor(o), state=torch.from_numpy(state).to(dev),
            avail_actions=torch.from_numpy(avail).to(dev),
            alive=torch.from_numpy(alive).to(dev), reward=torch.from_numpy(reward.astype(np.float32)).to(dev),
            terminated=torch.from_numpy(terminated).to(dev), truncated=torch.from_numpy(truncated).to(dev),
            final_obs=self._obs_tensor(fo), final_state=torch.from_numpy(fs).to(dev),
            episode_return=torch.from_numpy(ep_ret.astype(np.float32)).to(dev),
            episode_length=torch.from_numpy(ep_len).to(dev), won=torch.full((E,), float("nan"), device=dev),
        )

    def snapshot(self) -> dict[str, Any] | None:
        """The generators' states before each env's last reset, when every env has just reset; None
        mid-episode (a PettingZoo env's state cannot be read generically, but a reset can be replayed)."""
        if not self._rngs or bool(self._ep_length.any()):
            return None
        return {"kind": "pettingzoo", "rng_states": copy.deepcopy(self._rng_at_reset)}

    def restore(self, snap: dict[str, Any], seed: int) -> None:
        if snap.get("kind") != "pettingzoo" or len(snap.get("rng_states", ())) != self._E:
            raise ValueError("the saved env state does not match this env (kind or num_envs)")
        self.reset(seed)
        o, avail, alive, state = self._buffers()
        for e, rng_state in enumerate(snap["rng_states"]):
            self._rngs[e].bit_generator.state = rng_state
            self._reset_env(e, o[e], avail[e], alive[e], state[e])

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []


def _make(task: str, num_envs: int, device: torch.device | str, agent_id: bool, **params: Any) -> PettingZooVecEnv:
    return PettingZooVecEnv(task, num_envs, device=device, agent_id=agent_id, **params)


FAMILY = EnvFamily(
    name="pettingzoo",
    description="any PettingZoo Parallel API env with discrete actions, by import path (parameters: its kwargs)",
    tasks=("mpe2.simple_spread_v3", "pettingzoo.sisl.pursuit_v5"),  # examples: any import path works
    factory=_make,
    score="return",
    bench_sizes=(1, 8),
    check_task=check_task,
    free_params=literal,
    packages=("pettingzoo",),
    imports_code=True,
)
