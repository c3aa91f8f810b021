"""Envs by name: ``family:task`` -> a vectorised env, through the registry (``marpo_bench/registry.py``).

Tasks with parameters: ``family:task?name=value&name=value`` (quote it in a shell), e.g.
``jax_mpe:simple_spread?num_agents=5``. A task's parameters are declared by its family
(``EnvFamily.params``); the canonical name sorts them and drops those equal to their default, so
``jax_mpe:simple_spread?num_agents=3`` *is* ``jax_mpe:simple_spread`` (same run ids).

Each family declares itself (tasks, factory, score kind, bounds, cost hints) as an
:class:`~marpo_bench.envs.base.EnvFamily` in its own file; built-ins and plugins are found by the
registry. Factories import their backend lazily, so importing this package imports neither JAX
nor mpe2.
"""

from __future__ import annotations

from typing import Any

import torch

from marpo_bench.envs.base import EnvFamily, EnvInfo, MultiAgentVecEnv, TaskParam, TimeStep, agent_id_onehot

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
    "split_task",
]


def _family(name: str) -> EnvFamily:
    from marpo_bench.registry import env_family

    return env_family(name)


def _convert(param: TaskParam, raw: str, where: str) -> Any:
    try:
        if param.type is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            value: Any = raw.lower() in ("true", "1")
        else:
            value = param.type(raw)
    except ValueError:
        raise ValueError(f"bad value {raw!r} for {param.name} in {where}: expected {param.type.__name__}; "
                         f"{param.describe()}") from None
    if (param.low is not None and value < param.low) or (param.high is not None and value > param.high):
        raise ValueError(f"{param.name}={raw} is out of range in {where}; {param.describe()}")
    return value


def _parse(family: str, task: str) -> tuple[EnvFamily, str, dict[str, Any]]:
    """The family, the base task and its typed parameters (defaults omitted), after one-line
    ``ValueError``s naming the valid choices for an unknown family, task or parameter."""
    fam = _family(family)
    base, sep, query = task.partition("?")
    if fam.check_task is not None:  # open-ended tasks (e.g. an import path)
        fam.check_task(base)
    elif base not in (tasks := fam.task_names()):
        raise ValueError(f"unknown task {base!r} for env family {family!r}; valid tasks: {', '.join(tasks)}")
    declared = {p.name: p for p in fam.params.get(base, ())}
    where = f"{family}:{task}"
    params: dict[str, Any] = {}
    for item in query.split("&") if sep else ():
        key, eq, raw = item.partition("=")
        if not eq or not raw:
            raise ValueError(f"parameter {key!r} in {where} has no value: use {key}=VALUE")
        if fam.free_params is not None and key.isidentifier() and key not in params:
            params[key] = fam.free_params(raw)
            continue
        if key not in declared:
            valid = "; ".join(p.describe() for p in declared.values()) or "none"
            raise ValueError(f"unknown parameter {key!r} in {where}; valid parameters of {family}:{base}: {valid}")
        if key in params:
            raise ValueError(f"parameter {key!r} is given twice in {where}")
        params[key] = _convert(declared[key], raw, where)
    return fam, base, {k: v for k, v in sorted(params.items()) if k not in declared or v != declared[k].default}


def split_task(family: str, task: str) -> tuple[str, dict[str, Any]]:
    """``task?name=value&...`` -> (base task, typed parameters that differ from their defaults)."""
    _, base, params = _parse(family, task)
    return base, params


def _canonical(base: str, params: dict[str, Any]) -> str:
    query = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
    return f"{base}?{query}" if query else base


def parse_env(name: str) -> tuple[str, str]:
    """Split and validate ``"family:task"`` (e.g. ``"mpe:simple_spread"``, or with parameters
    ``"jax_mpe:simple_spread?num_agents=5"``) into ``(family, canonical task)``."""
    family, sep, task = name.partition(":")
    if not sep:
        valid = ", ".join(n for n, _ in list_envs())
        raise ValueError(f"env name {name!r} is not 'family:task'; valid names: {valid}")
    _, base, params = _parse(family, task)
    return family, _canonical(base, params)


def check_backend(family: str) -> None:
    """Raise the family's one-line ``ValueError`` when its backend is not usable on this machine."""
    fam = _family(family)
    if fam.check is not None:
        fam.check()


def make_env(
    family: str, task: str, num_envs: int, device: torch.device | str = "cpu", agent_id: bool = True
) -> MultiAgentVecEnv:
    """Build ``num_envs`` parallel envs of ``family:task`` (parameters included) on ``device``."""
    fam, base, params = _parse(family, task)
    return fam.factory(base, num_envs, device, agent_id, **params)


def list_envs() -> list[tuple[str, str]]:
    """Every ``"family:task"`` name with its family's one-line description."""
    from marpo_bench.registry import env_families

    return [(f"{name}:{task}", fam.description) for name, fam in env_families().items() for task in fam.task_names()]
