"""Envs by name: ``family:task`` -> a vectorised env, through the registry (``marpo_bench/registry.py``).

Tasks with parameters: ``family:task?name=value&name=value`` (quote it in a shell), e.g.
``jax_mpe:simple_spread?num_agents=5``. A task's parameters are declared by its family
(``EnvFamily.params``); the canonical name sorts them and drops those equal to their default, so
``jax_mpe:simple_spread?num_agents=3`` *is* ``jax_mpe:simple_spread`` (same run ids).

Each family declares itself (tasks, factory, score kind, bounds, cost hints) as an
:class:`~marpo_bench.envs.base.EnvFamily` in its own file; built-ins and plugins are found by the
registry. Factories import their backend lazily, so importing this package imports neither JAX
nor mpe2.

A task that names code to import (a family with ``imports_code``, e.g. ``pettingzoo:pkg.module``)
is parsed or built only with ``trust_imports=True``: callers pass it for names the user typed
(the command line, a preset, code), never for names read from files (run.json, policy.pt, an
imported marl-eval file), so opening someone else's results never imports a module they chose.
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
    "UntrustedTaskError",
    "agent_id_onehot",
    "check_backend",
    "list_envs",
    "make_env",
    "parse_env",
    "split_task",
]


class UntrustedTaskError(ValueError):
    """A task that would import a module was given without ``trust_imports`` (it came from a file)."""


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


def _parse(family: str, task: str, trust_imports: bool) -> tuple[EnvFamily, str, dict[str, Any]]:
    """The family, the base task and its typed parameters (defaults omitted), after one-line
    ``ValueError``s naming the valid choices for an unknown family, task or parameter, and an
    ``UntrustedTaskError`` before anything is imported for an untrusted task that names code."""
    fam = _family(family)
    base, sep, query = task.partition("?")
    if fam.imports_code and not trust_imports:
        raise UntrustedTaskError(
            f"{family}:{base} names a module to import ({base.partition(':')[0]!r}) and was read from stored data, "
            "so nothing was imported; pass --trust-imports if you trust where the data came from")
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


def split_task(family: str, task: str, *, trust_imports: bool = False) -> tuple[str, dict[str, Any]]:
    """``task?name=value&...`` -> (base task, typed parameters that differ from their defaults)."""
    _, base, params = _parse(family, task, trust_imports)
    return base, params


def _canonical(base: str, params: dict[str, Any]) -> str:
    query = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
    return f"{base}?{query}" if query else base


def parse_env(name: str, *, trust_imports: bool = False) -> tuple[str, str]:
    """Split and validate ``"family:task"`` (e.g. ``"mpe:simple_spread"``, or with parameters
    ``"jax_mpe:simple_spread?num_agents=5"``) into ``(family, canonical task)``. ``trust_imports``:
    the name was typed by the user, so a task naming a module may import it."""
    family, sep, task = name.partition(":")
    if not sep:
        valid = ", ".join(n for n, _ in list_envs())
        raise ValueError(f"env name {name!r} is not 'family:task'; valid names: {valid}")
    _, base, params = _parse(family, task, trust_imports)
    return family, _canonical(base, params)


def check_backend(family: str) -> None:
    """Raise the family's one-line ``ValueError`` when its backend is not usable on this machine."""
    fam = _family(family)
    if fam.check is not None:
        fam.check()


def make_env(
    family: str, task: str, num_envs: int, device: torch.device | str = "cpu", agent_id: bool = True, *,
    trust_imports: bool = False,
) -> MultiAgentVecEnv:
    """Build ``num_envs`` parallel envs of ``family:task`` (parameters included) on ``device``;
    ``trust_imports`` as for :func:`parse_env`."""
    fam, base, params = _parse(family, task, trust_imports)
    return fam.factory(base, num_envs, device, agent_id, **params)


def list_envs() -> list[tuple[str, str]]:
    """Every ``"family:task"`` name with its family's one-line description."""
    from marpo_bench.registry import env_families

    return [(f"{name}:{task}", fam.description) for name, fam in env_families().items() for task in fam.task_names()]
