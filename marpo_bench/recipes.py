"""A run's configuration, resolved: the algorithm's config from its class defaults, the env
family's defaults, its published recipe for the family and the task, and the user's settings; and
the device it trains on. Planning, the trainer, bench, memory estimates and the report all resolve
a run the same way, here."""

from __future__ import annotations

from typing import Any

import torch

from marpo_bench import registry
from marpo_bench.algos import get_algorithm
from marpo_bench.config import ConfigError, Recipe, RunSpec, apply_overrides, overrides_for


def recipe_entries(algo_cls: Any, family: str, task: str) -> list[tuple[str, Any]]:
    """The entries of an algorithm's recipe table (``DEFAULTS_BY_FAMILY``) that apply to
    ``family:task``, least specific first: the family's, then the task's (key ``family:task``).
    An entry is a :class:`~marpo_bench.config.Recipe` (values and their source) or a plain dict.
    A task with parameters takes its base task's entry (``simple_spread?num_agents=5``:
    ``simple_spread``'s)."""
    table = getattr(algo_cls, "DEFAULTS_BY_FAMILY", {})
    base = task.partition("?")[0]
    return [(key, table[key]) for key in (family, f"{family}:{base}") if key in table]


def build_config(spec: RunSpec) -> Any:
    """The algorithm's config for this run: class defaults, then the env family's defaults for
    this algorithm (``EnvFamily.algo_defaults``, for families the algorithm's own table does not
    know), then its recipe for the env family and for the task (``recipe_entries``), then the
    user's ``--set`` overrides, then the config's own ``resolved()`` where it has one (every
    setting left to the algorithm filled in)."""
    algo_cls = get_algorithm(spec.algo)
    cfg = algo_cls.Config()
    family_defaults = registry.env_family(spec.env).algo_defaults.get(spec.algo, {})
    if family_defaults:
        cfg = apply_overrides(cfg, {k: str(v) for k, v in family_defaults.items()}, spec.algo)
    for _, entry in recipe_entries(algo_cls, spec.env, spec.task):
        values = entry.values if isinstance(entry, Recipe) else entry
        cfg = apply_overrides(cfg, {k: str(v) for k, v in values.items()}, spec.algo)
    scoped = overrides_for(spec.algo, spec.overrides, set(registry.algorithm_names()))
    known = set(cfg.__dataclass_fields__)
    # Unscoped keys apply to every algorithm that has the setting; the CLI checks each is known
    # to at least one algorithm of the grid. Scoped keys (``algo.key``) must exist.
    scoped_keys = {k.split(".", 1)[1] for k, _ in spec.overrides if k.startswith(spec.algo + ".")}
    mine = {k: v for k, v in scoped.items() if k in known or k in scoped_keys}
    cfg = apply_overrides(cfg, mine, spec.algo)
    # Settings an algorithm fills itself (QMix's lineage defaults) are spelled out, so that run.json
    # stores the values the run used, not nulls.
    resolved = getattr(cfg, "resolved", None)
    return resolved() if callable(resolved) else cfg


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a clear error when CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but this machine has no CUDA device; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"bad --device {device!r}: use cpu, cuda, cuda:N or auto") from None
