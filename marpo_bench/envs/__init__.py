"""Envs by name: ``family:task`` -> a vectorised env, through the registry (``marpo_bench/registry.py``).

Each family declares itself (tasks, factory, score kind, bounds, cost hints) as an
:class:`~marpo_bench.envs.base.EnvFamily` in its own file; built-ins and plugins are found by the
registry. Factories import their backend lazily, so importing this package imports neither JAX
nor mpe2.
"""

from __future__ import annotations

import torch

from marpo_bench.envs.base import EnvFamily, EnvInfo, MultiAgentVecEnv, TimeStep, agent_id_onehot

__all__ = [
    "EnvFamily",
    "EnvInfo",
    "MultiAgentVecEnv",
    "TimeStep",
    "agent_id_onehot",
    "check_backend",
    "list_envs",
    "make_env",
    "parse_env",
]


def _family(name: str) -> EnvFamily:
    from marpo_bench.registry import env_family

    return env_family(name)


def _check(family: str, task: str) -> EnvFamily:
    """The family, after a one-line ``ValueError`` naming the valid choices for an unknown family or task."""
    fam = _family(family)
    tasks = fam.task_names()
    if task not in tasks:
        raise ValueError(f"unknown task {task!r} for env family {family!r}; valid tasks: {', '.join(tasks)}")
    return fam


def parse_env(name: str) -> tuple[str, str]:
    """Split and validate ``"family:task"`` (e.g. ``"mpe:simple_spread"``) into ``(family, task)``."""
    family, sep, task = name.partition(":")
    if not sep:
        valid = ", ".join(n for n, _ in list_envs())
        raise ValueError(f"env name {name!r} is not 'family:task'; valid names: {valid}")
    _check(family, task)
    return family, task


def check_backend(family: str) -> None:
    """Raise the family's one-line ``ValueError`` when its backend is not usable on this machine."""
    fam = _family(family)
    if fam.check is not None:
        fam.check()


def make_env(
    family: str, task: str, num_envs: int, device: torch.device | str = "cpu", agent_id: bool = True
) -> MultiAgentVecEnv:
    """Build ``num_envs`` parallel envs of ``family:task`` on ``device``."""
    fam = _check(family, task)
    return fam.factory(task, num_envs, device, agent_id)


def list_envs() -> list[tuple[str, str]]:
    """Every ``"family:task"`` name with its family's one-line description."""
    from marpo_bench.registry import env_families

    return [(f"{name}:{task}", fam.description) for name, fam in env_families().items() for task in fam.task_names()]
