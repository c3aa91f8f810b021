"""Env registry: family name -> tasks, one-line description and a factory.

Adding a family means one entry in ``ENV_FAMILIES``. Factories import their backend lazily, so
importing this package imports neither JAX nor mpe2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from marpo_bench.envs.base import EnvInfo, MultiAgentVecEnv, TimeStep, agent_id_onehot
from marpo_bench.envs.mpe import MPE_TASKS
from marpo_bench.envs.smacv2 import SMACV2_TASKS, check_smacv2
from marpo_bench.envs.smax import SMAX_TASKS

__all__ = [
    "ENV_FAMILIES",
    "EnvInfo",
    "MultiAgentVecEnv",
    "TimeStep",
    "agent_id_onehot",
    "list_envs",
    "make_env",
    "parse_env",
]

Factory = Callable[[str, int, torch.device | str, bool], MultiAgentVecEnv]


def _make_mpe(task: str, num_envs: int, device: torch.device | str, agent_id: bool) -> MultiAgentVecEnv:
    from marpo_bench.envs.mpe import MPEVecEnv

    return MPEVecEnv(task, num_envs, device=device, agent_id=agent_id)


def _make_jax_mpe(task: str, num_envs: int, device: torch.device | str, agent_id: bool) -> MultiAgentVecEnv:
    from marpo_bench.envs.jax_mpe import JaxMPEVecEnv

    return JaxMPEVecEnv(task, num_envs, device=device, agent_id=agent_id)


def _make_smax(task: str, num_envs: int, device: torch.device | str, agent_id: bool) -> MultiAgentVecEnv:
    from marpo_bench.envs.smax import SMAXVecEnv

    return SMAXVecEnv(task, num_envs, device=device, agent_id=agent_id)


def _make_smacv2(task: str, num_envs: int, device: torch.device | str, agent_id: bool) -> MultiAgentVecEnv:
    from marpo_bench.envs.smacv2 import SMACv2VecEnv

    return SMACv2VecEnv(task, num_envs, device=device, agent_id=agent_id)


ENV_FAMILIES: dict[str, dict[str, Any]] = {
    "mpe": {
        "tasks": MPE_TASKS,
        "description": "PettingZoo MPE via mpe2: reference dynamics, one Python env per slot (CPU)",
        "factory": _make_mpe,
    },
    "jax_mpe": {
        "tasks": MPE_TASKS,
        "description": "JaxMARL MPE, same tasks and spaces as mpe, vmapped and jitted (fast path)",
        "factory": _make_jax_mpe,
    },
    "smax": {
        "tasks": SMAX_TASKS,
        "description": "JaxMARL SMAX vs its heuristic enemy: SMAC-like StarCraft micro without SC2 (not SMAC numbers)",
        "factory": _make_smax,
    },
    "smacv2": {
        "tasks": SMACV2_TASKS,
        "description": "real SMACv2 (StarCraft II, one process per env); needs smacv2 and SC2PATH",
        "factory": _make_smacv2,
        "check": check_smacv2,
    },
}


def _check(family: str, task: str) -> None:
    """Raise a one-line ``ValueError`` naming the valid choices for an unknown family or task."""
    if family not in ENV_FAMILIES:
        raise ValueError(f"unknown env family {family!r}; valid families: {', '.join(ENV_FAMILIES)}")
    tasks = ENV_FAMILIES[family]["tasks"]
    if task not in tasks:
        raise ValueError(f"unknown task {task!r} for env family {family!r}; valid tasks: {', '.join(tasks)}")


def parse_env(name: str) -> tuple[str, str]:
    """Split and validate ``"family:task"`` (e.g. ``"mpe:simple_spread"``) into ``(family, task)``."""
    family, sep, task = name.partition(":")
    if not sep:
        valid = ", ".join(n for n, _ in list_envs())
        raise ValueError(f"env name {name!r} is not 'family:task'; valid names: {valid}")
    _check(family, task)
    return family, task


def make_env(
    family: str, task: str, num_envs: int, device: torch.device | str = "cpu", agent_id: bool = True
) -> MultiAgentVecEnv:
    """Build ``num_envs`` parallel envs of ``family:task`` on ``device``."""
    _check(family, task)
    factory: Factory = ENV_FAMILIES[family]["factory"]
    return factory(task, num_envs, device, agent_id)


def list_envs() -> list[tuple[str, str]]:
    """Every ``"family:task"`` name with its family's one-line description."""
    return [
        (f"{family}:{task}", spec["description"]) for family, spec in ENV_FAMILIES.items() for task in spec["tasks"]
    ]
