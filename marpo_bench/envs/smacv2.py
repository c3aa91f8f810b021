"""Real SMACv2 (StarCraft II) behind ``MultiAgentVecEnv``: one StarCraft II per env, in a process pool.

Needs the ``smacv2`` package (not on PyPI: ``pip install git+https://github.com/oxwhirl/smacv2``),
a StarCraft II installation (``SC2PATH``, pysc2's default ``~/StarCraftII`` on Linux) and smacv2's
``SMAC_Maps`` copied into ``$SC2PATH/Maps``. ``check_smacv2()`` says in one line what is missing;
the CLI calls it before any run starts.

Tasks and settings are the SMACv2 paper's (``smacv2/examples/configs/sc2_gen_{protoss,terran,zerg}
.yaml``, used by ``RUNNING_EXPERIMENTS.md``): map ``10gen_<race>``, ``capability_config`` with
``n_units``/``n_enemies`` (5 or 10), ``team_gen`` = ``weighted_teams`` over the race's three unit
types (protoss stalker/zealot/colossus 0.45/0.45/0.1; terran marine/marauder/medivac 0.45/0.45/0.1,
medivac never a whole team; zerg zergling/baneling/hydralisk 0.45/0.1/0.45, baneling never a whole
team), ``start_positions`` = ``surrounded_and_reflect`` with p = 0.5 on a 32 x 32 map, and the
configs' ``env_args`` (unit ranges, own position observed, no conic field of view, shaped reward
scaled to 20, ...). Episode limit: the map's, 200 steps for ``10gen_*``.

One deliberate change: ``continuing_episode=True``. In smacv2 that flag does one thing: a time-out
adds ``info["episode_limit"] = True`` to the step's info (``StarCraft2Env.step``). Without it a
time-out is reported as an ordinary termination (pymarl then treats it as terminal); with it the
wrapper reports ``truncated`` (bootstrap through it), a battle end ``terminated``, never both.

Mapping to the contract:
- ``reward``: smacv2's team reward (one scalar per env step, already shared): ``"team_shared"``.
- ``won``: ``info["battle_won"]`` at the end of the episode (a time-out or a restarted game is 0).
- ``alive``: SMAC's convention, as pymarl uses it: only a dead agent has the no-op (action 0)
  available (``get_avail_agent_actions`` returns ``[1, 0, ...]`` exactly when the unit's health is 0).
- ``state``: ``get_state()``; ``obs``: ``get_obs()`` (+ agent id one-hot when asked).
- Auto-reset inside ``step``, in the worker: the finished episode's last obs/state come back as
  ``final_obs``/``final_state``, then the worker calls ``reset()``.

The pool follows pymarl's ``ParallelRunner``: one worker process per env talking over a ``Pipe``
(commands ``reset``, ``step``, ``get_env_info``, ``close``); all envs step in parallel, the parent
waits for every reply. Workers are started with ``spawn`` (forking a process that runs JAX/torch
threads can deadlock). A worker error comes back as a ``RuntimeError`` naming the env.

Seeding, best effort: StarCraft II's own ``seed`` (``StarCraft2Env(seed=...)``) is fixed when the game
launches, at the first ``reset(seed)``; every ``reset(seed)`` also re-seeds the scenario draws (unit
types, start positions), which smacv2 makes from unseeded ``numpy.random.default_rng()`` generators
and Python's ``random``, by replacing those generators. StarCraft II is not bit-reproducible across
machines anyway; do not expect identical episodes from a seed.
"""

from __future__ import annotations

import copy
import importlib.util
import multiprocessing as mp
import os
import platform
import random
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marpo_bench.envs.base import EnvFamily, EnvInfo, TimeStep

SMACV2_TASKS: tuple[str, ...] = (
    "protoss_5_vs_5",
    "terran_5_vs_5",
    "zerg_5_vs_5",
    "protoss_10_vs_10",
    "terran_10_vs_10",
    "zerg_10_vs_10",
)

# race -> (unit types, weights, exception unit types): sc2_gen_<race>.yaml's team_gen.
_TEAMS: dict[str, tuple[list[str], list[float], list[str] | None]] = {
    "protoss": (["stalker", "zealot", "colossus"], [0.45, 0.45, 0.1], None),
    "terran": (["marine", "marauder", "medivac"], [0.45, 0.45, 0.1], ["medivac"]),
    "zerg": (["zergling", "baneling", "hydralisk"], [0.45, 0.1, 0.45], ["baneling"]),
}

# sc2_gen_<race>.yaml's env_args except map_name and capability_config (identical for all races),
# with continuing_episode switched on (see the module docstring).
_ENV_ARGS: dict[str, Any] = {
    "continuing_episode": True,
    "difficulty": "7",
    "game_version": None,
    "move_amount": 2,
    "obs_all_health": True,
    "obs_instead_of_state": False,
    "obs_last_action": False,
    "obs_own_health": True,
    "obs_pathing_grid": False,
    "obs_terrain_height": False,
    "obs_timestep_number": False,
    "reward_death_value": 10,
    "reward_defeat": 0,
    "reward_negative_scale": 0.5,
    "reward_only_positive": True,
    "reward_scale": True,
    "reward_scale_rate": 20,
    "reward_sparse": False,
    "reward_win": 200,
    "replay_dir": "",
    "replay_prefix": "",
    "conic_fov": False,
    "use_unit_ranges": True,
    "min_attack_range": 2,
    "obs_own_pos": True,
    "num_fov_actions": 12,
    "state_last_action": True,
    "state_timestep_number": False,
    "step_mul": 8,
    "heuristic_ai": False,
    "debug": False,
    "prob_obs_enemy": 1.0,
    "action_mask": True,
}

_INSTALL = (
    "SMACv2 needs the smacv2 package and StarCraft II: pip install git+https://github.com/oxwhirl/smacv2 "
    "and set SC2PATH to your StarCraft II installation"
)
_MAP_FILE = Path("Maps") / "SMAC_Maps" / "32x32_flat.SC2Map"  # the map every 10gen_* scenario loads


def check_task(task: str) -> None:
    """Raise a one-line ``ValueError`` for an unknown SMACv2 task."""
    if task not in SMACV2_TASKS:
        raise ValueError(f"unknown SMACv2 task {task!r}; valid tasks: {', '.join(SMACV2_TASKS)}")


def env_args(task: str) -> dict[str, Any]:
    """The keyword arguments of ``StarCraftCapabilityEnvWrapper`` for ``task`` (a fresh dict: the
    wrapper mutates ``capability_config``)."""
    check_task(task)
    race, n, _, _ = task.split("_")
    units, weights, exceptions = _TEAMS[race]
    team_gen: dict[str, Any] = {"dist_type": "weighted_teams", "unit_types": list(units),
                                "weights": list(weights), "observe": True}
    if exceptions:
        team_gen["exception_unit_types"] = list(exceptions)
    capability_config = {
        "n_units": int(n),
        "n_enemies": int(n),
        "team_gen": team_gen,
        "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "map_x": 32, "map_y": 32},
    }
    return {**copy.deepcopy(_ENV_ARGS), "map_name": f"10gen_{race}", "capability_config": capability_config}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _default_sc2_dir() -> str:
    """pysc2's default StarCraft II location when SC2PATH is not set (``run_configs/platforms.py``)."""
    system = platform.system()
    if system == "Darwin":
        return "/Applications/StarCraft II"
    if system == "Windows":
        return "C:/Program Files (x86)/StarCraft II"
    return "~/StarCraftII"


def check_smacv2() -> None:
    """Raise ``ValueError`` with one line saying what is missing for real SMACv2 and what to do."""
    if not _installed("smacv2"):
        raise ValueError(f"{_INSTALL} (the smacv2 package is not installed)")
    if not _installed("pysc2"):
        raise ValueError(f"{_INSTALL} (pysc2, which smacv2 needs, is not installed)")
    env_dir = os.environ.get("SC2PATH")
    if env_dir is None:
        default = _default_sc2_dir()
        if not Path(default).expanduser().is_dir():
            raise ValueError(f"{_INSTALL} (SC2PATH is not set and the default {default} does not exist)")
        sc2 = Path(default).expanduser()
    elif not env_dir:
        raise ValueError(f"{_INSTALL} (SC2PATH is set but empty)")
    else:
        sc2 = Path(env_dir).expanduser()
        if not sc2.is_dir():
            raise ValueError(f"{_INSTALL} (SC2PATH={env_dir} does not exist or is not a directory)")
    if not (sc2 / _MAP_FILE).is_file():
        raise ValueError(
            f"SMACv2 needs its maps inside StarCraft II: copy smacv2's SMAC_Maps folder "
            f"(smacv2/env/starcraft2/maps/SMAC_Maps) into {sc2 / 'Maps'} ({_MAP_FILE.name} is missing)"
        )


# ------------------------------------------------------------------------------------------------
# Worker process


def make_smacv2_env(kwargs: dict[str, Any], seed: int | None) -> Any:
    """The real env: ``smacv2.env.starcraft2.wrapper.StarCraftCapabilityEnvWrapper``."""
    from smacv2.env.starcraft2.wrapper import StarCraftCapabilityEnvWrapper

    return StarCraftCapabilityEnvWrapper(seed=seed, **kwargs)


def _reseed_scenarios(env: Any, seed: int) -> None:
    """Seed smacv2's scenario draws: Python's ``random`` and every numpy ``Generator`` held by the
    wrapper's distributions (``env_key_to_distribution_map``), searched through their attributes."""
    random.seed(seed)
    seen: set[int] = set()
    k = 0

    def visit(obj: Any) -> None:
        nonlocal k
        if id(obj) in seen or not hasattr(obj, "__dict__"):
            return
        seen.add(id(obj))
        for name, value in list(vars(obj).items()):
            if isinstance(value, np.random.Generator):
                setattr(obj, name, np.random.default_rng([seed, k]))
                k += 1
            elif hasattr(value, "generate") and hasattr(value, "__dict__"):
                visit(value)

    for dist in getattr(env, "env_key_to_distribution_map", {}).values():
        visit(dist)


def _observe(env: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    obs = np.asarray(env.get_obs(), dtype=np.float32)
    state = np.asarray(env.get_state(), dtype=np.float32)
    avail = np.asarray(env.get_avail_actions(), dtype=bool)
    return obs, state, avail


def _worker(remote: Connection, parent_remote: Connection, kwargs: dict[str, Any],
            factory: Callable[[dict[str, Any], int | None], Any]) -> None:
    """One env in its own process, driven over ``remote`` (pymarl's ``env_worker`` protocol, plus
    auto-reset). Replies ``("ok", payload)`` or ``("error", traceback)``. StarCraft II is closed
    however the worker ends (``close`` command, parent gone, Ctrl-C or SIGTERM)."""
    parent_remote.close()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally clause: close SC2
    env = None
    try:
        while True:
            cmd, data = remote.recv()
            try:
                if cmd == "step":
                    reward, terminated, info = env.step([int(a) for a in data])  # type: ignore[union-attr]
                    limit = bool(info.get("episode_limit", False))
                    won = bool(info.get("battle_won", False))
                    restarted = not info  # smacv2 returns (0, True, {}) after restarting a crashed game
                    final_obs, final_state, _ = _observe(env)
                    if terminated:
                        env.reset()  # type: ignore[union-attr]
                    obs, state, avail = _observe(env)
                    truncated = bool(terminated) and (limit or restarted)
                    payload = (float(reward), bool(terminated) and not truncated, truncated, won,
                               obs, state, avail, final_obs, final_state)
                    remote.send(("ok", payload))
                elif cmd == "reset":
                    if env is None:  # the game launches on this first reset, with this seed
                        env = factory(copy.deepcopy(kwargs), data)
                    _reseed_scenarios(env, data)
                    env.reset()
                    remote.send(("ok", _observe(env)))
                elif cmd == "get_env_info":
                    probe = env if env is not None else factory(copy.deepcopy(kwargs), None)
                    info = dict(probe.get_env_info())
                    if probe is not env:
                        probe.close()  # never launched: closing only drops the object
                    remote.send(("ok", info))
                elif cmd == "close":
                    if env is not None:
                        env, closing = None, env
                        closing.close()
                    remote.send(("ok", None))
                    return
                else:
                    raise ValueError(f"unknown command {cmd!r}")
            except Exception:
                remote.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt, SystemExit):  # the parent went away, Ctrl-C or SIGTERM
        pass
    finally:
        if env is not None:
            env.close()
        remote.close()


# ------------------------------------------------------------------------------------------------
# Vectorised env


class SMACv2VecEnv:
    """E real SMACv2 envs, one StarCraft II process each, stepped in parallel from torch."""

    def __init__(
        self,
        task: str,
        num_envs: int,
        device: torch.device | str = "cpu",
        agent_id: bool = True,
        _env_factory: Callable[[dict[str, Any], int | None], Any] | None = None,
    ) -> None:
        """``_env_factory(kwargs, seed) -> env`` replaces smacv2 in tests (a picklable, module-level
        function returning an object with smacv2's API); by default smacv2 must be available."""
        check_task(task)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if _env_factory is None:
            check_smacv2()
        factory = _env_factory or make_smacv2_env
        self.device = torch.device(device)
        self._E = num_envs
        self._agent_id = agent_id
        ctx = mp.get_context("spawn")
        self._remotes: list[Connection] = []
        self._procs: list[Any] = []
        self._closed = False
        kwargs = env_args(task)
        for _ in range(num_envs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, parent, kwargs, factory), daemon=True)
            p.start()
            child.close()
            self._remotes.append(parent)
            self._procs.append(p)
        try:
            self._remotes[0].send(("get_env_info", None))
            env_info = self._recv(0)
        except BaseException:
            self.close()
            raise
        N, A = int(env_info["n_agents"]), int(env_info["n_actions"])
        self._N, self._A = N, A
        self.info = EnvInfo(
            family="smacv2",
            task=task,
            num_envs=num_envs,
            num_agents=N,
            obs_dim=int(env_info["obs_shape"]) + (N if agent_id else 0),
            state_dim=int(env_info["state_shape"]),
            num_actions=A,
            episode_limit=int(env_info["episode_limit"]),
            reward_scale="team_shared",
            has_won=True,
        )
        self._ep_ret = np.zeros(num_envs, np.float64)
        self._ep_len = np.zeros(num_envs, np.int64)
        self._onehot = torch.eye(N).expand(num_envs, N, N)
        self._started = False

    def _recv(self, e: int) -> Any:
        try:
            status, payload = self._remotes[e].recv()
        except EOFError:
            raise RuntimeError(f"SMACv2 worker {e} exited unexpectedly") from None
        if status != "ok":
            last = payload.strip().splitlines()[-1] if payload.strip() else "unknown error"
            raise RuntimeError(f"SMACv2 env {e} failed: {last}\n{payload}")
        return payload

    def _obs(self, obs: np.ndarray) -> torch.Tensor:
        o = torch.from_numpy(obs)
        if self._agent_id:
            o = torch.cat([o, self._onehot], dim=-1)
        return o.to(self.device)

    def reset(self, seed: int) -> TimeStep:
        """Reset every env; env e's scenario draws are seeded from ``(seed, e)`` (see the module doc)."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        E = self._E
        for e, r in enumerate(self._remotes):
            # Distinct, reproducible per-env seeds that fit StarCraft II's 32-bit random_seed.
            r.send(("reset", int(np.random.SeedSequence([seed, e]).generate_state(1)[0] >> 1)))
        obs, state, avail = (np.stack(x) for x in zip(*(self._recv(e) for e in range(E)), strict=True))
        self._ep_ret[:] = 0.0
        self._ep_len[:] = 0
        self._started = True
        dev = self.device
        o, s = self._obs(obs), torch.from_numpy(state).to(dev)
        av = torch.from_numpy(avail).to(dev)
        return TimeStep.first(o, s, av, ~av[..., 0])

    def step(self, actions: torch.Tensor) -> TimeStep:
        """Step all E envs in parallel with ``actions`` [E, N]; auto-reset finished envs."""
        if not self._started:
            raise RuntimeError("call reset(seed) before step()")
        if tuple(actions.shape) != (self._E, self._N):
            raise ValueError(f"actions must have shape {(self._E, self._N)}, got {tuple(actions.shape)}")
        acts = actions.detach().to("cpu", torch.int64).numpy()
        for e, r in enumerate(self._remotes):
            r.send(("step", acts[e]))
        res = [self._recv(e) for e in range(self._E)]
        reward, terminated, truncated, won, obs, state, avail, final_obs, final_state = (
            np.stack(x) for x in zip(*res, strict=True)
        )
        done = terminated | truncated
        self._ep_ret += reward
        self._ep_len += 1
        ep_ret = np.where(done, self._ep_ret, np.nan)
        ep_len = np.where(done, self._ep_len, 0)
        self._ep_ret[done] = 0.0
        self._ep_len[done] = 0
        dev = self.device
        av = torch.from_numpy(avail).to(dev)
        return TimeStep(
            obs=self._obs(obs),
            state=torch.from_numpy(state).to(dev),
            avail_actions=av,
            alive=~av[..., 0],
            reward=torch.from_numpy(reward.astype(np.float32)).to(dev),
            terminated=torch.from_numpy(terminated).to(dev),
            truncated=torch.from_numpy(truncated).to(dev),
            final_obs=self._obs(final_obs),
            final_state=torch.from_numpy(final_state).to(dev),
            episode_return=torch.from_numpy(ep_ret.astype(np.float32)).to(dev),
            episode_length=torch.from_numpy(ep_len).to(dev),
            won=torch.from_numpy(np.where(done, won.astype(np.float32), np.nan).astype(np.float32)).to(dev),
        )

    def close(self) -> None:
        """Close every StarCraft II and worker process (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for r in self._remotes:
            try:
                r.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for r in self._remotes:
            try:
                if r.poll(30):
                    r.recv()
            except (EOFError, OSError):
                pass
            r.close()
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


def _make(task: str, num_envs: int, device: torch.device | str, agent_id: bool, **params: Any) -> SMACv2VecEnv:
    return SMACv2VecEnv(task, num_envs, device=device, agent_id=agent_id, **params)


FAMILY = EnvFamily(
    name="smacv2",
    description="real SMACv2 (StarCraft II, one process per env); needs smacv2 and SC2PATH",
    tasks=SMACV2_TASKS,
    factory=_make,
    score="win_rate",
    check=check_smacv2,
    packages=("smacv2",),
    not_comparable_with={"smax": "SMAX (JaxMARL) and SMACv2 (StarCraft II) tasks are different games; their "
                                 "win rates are not comparable across families"},
)
