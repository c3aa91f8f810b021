"""Typed configuration: the run specification, step-string parsing and ``--set key=value`` overrides.

Each algorithm owns its config dataclass (in its own file); this module only knows how to build,
override and serialise dataclasses generically, so adding an algorithm touches nothing here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin


class ConfigError(ValueError):
    """A user-facing, one-line configuration error."""


def one_line(exc: BaseException) -> str:
    """``Type: message``, first line only: how an exception is shown to a user or stored in run.json."""
    return (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class Recipe:
    """An algorithm's defaults for one env family or task (an entry of its ``DEFAULTS_BY_FAMILY``
    table, keyed ``family`` or ``family:task``) and where they come from: the published script or
    config file and the values it sets, so every default can be checked against its source."""

    source: str
    values: dict[str, Any]


@dataclass(frozen=True)
class RunConfig:
    """Run settings, the same for every algorithm (BenchMARL's ``ExperimentConfig`` idea): how the
    runner evaluates. Set with unscoped ``--set`` keys (``--set eval_episodes=16``); ``run.json``'s
    ``config`` lists them beside the algorithm's settings. Defaults: 32 greedy evaluation episodes,
    on-policy's ``eval_episodes`` 32 with deterministic actions and pymarl's ``test_nepisode`` 32
    with ``test_greedy``; the interval is 20 evaluations per run."""

    eval_interval: int = 0  # env steps between evaluations; 0 = budget / 20
    eval_episodes: int = 32  # one episode in each of this many parallel eval envs
    eval_mode: Literal["greedy", "sample"] = "greedy"

    def validate(self) -> None:
        if self.eval_episodes <= 0:
            raise ConfigError(f"eval_episodes must be positive, got {self.eval_episodes}")
        if self.eval_interval < 0:
            raise ConfigError(f"eval_interval must be >= 0, got {self.eval_interval}")


RUN_SETTINGS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(RunConfig))
"""The ``--set`` keys that are run settings, not algorithm settings."""


# Torch threads per run. One: the suite's networks (64 units, a few thousand rows) are too small for
# intra-op parallelism to pay, and a second thread waking per op costs more than it gives (measured
# with `marpo-bench bench --threads 1` vs `--threads 2`, 2 cores: QMix on jax_mpe:simple_spread 1,428
# vs 766 env steps/s, MAPPO on smax:3m 5,505 vs 4,519); the cores are better used by `--workers`.
DEFAULT_THREADS = 1

_STEP_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")
_MULT = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_steps(text: str | int) -> int:
    """Parse an env-step budget such as ``200k``, ``1.5M`` or ``30000`` into an int (> 0)."""
    if isinstance(text, int):
        value = text
    else:
        m = _STEP_RE.match(str(text))
        if not m:
            raise ConfigError(f"bad step count {text!r}: use an integer with an optional k/M suffix, e.g. 200k")
        value = int(round(float(m.group(1)) * _MULT[m.group(2).lower()]))
    if value <= 0:
        raise ConfigError(f"step count must be positive, got {text!r}")
    return value


def format_steps(n: float) -> str:
    """Env steps in a few characters, the reverse of :func:`parse_steps`: 950, 12k, 300k, 1.2M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


def parse_budgets(text: str) -> dict[str, int]:
    """Parse ``--steps``: one budget for every env (``2M``) or per env, most specific first:
    ``1M,smax=500k,smax:5m_vs_6m=300k`` (a bare count is the default; ``family=`` sets a family's,
    ``family:task=`` one task's). Returns {"" (default) | family | family:task: env steps}."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        key, _, value = part.rpartition("=")
        key = key.strip()
        if key in out:
            raise ConfigError(f"--steps gives a budget for {key or 'the default'!r} twice")
        out[key] = parse_steps(value.strip())
    if not out:
        raise ConfigError("--steps is empty: give a budget such as 200k or jax_mpe=1M,smax=500k")
    return out


def budget_for(budgets: dict[str, int], family: str, task: str) -> int:
    """The budget of ``family:task`` from :func:`parse_budgets`' table (task, then family, then
    default); a ConfigError naming the env when none applies."""
    for key in (f"{family}:{task}", family, ""):
        if key in budgets:
            return budgets[key]
    raise ConfigError(f"--steps gives no budget for {family}:{task}: add a default (e.g. 1M,...) "
                      f"or {family}=N")


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid: what to train, where, with which seed and budget."""

    algo: str
    env: str  # env family, e.g. "jax_mpe"
    task: str  # canonical task name, parameters included (e.g. "simple_spread?num_agents=5")
    seed: int
    steps: int  # env-step budget: every env step of every parallel env counts (docs/algorithms.md, pitfalls)
    overrides: tuple[tuple[str, str], ...] = ()  # raw ``--set`` pairs, applied in order
    device: str = "cpu"

    @property
    def run_id(self) -> str:
        """A stable, readable id; the hash covers everything that changes the result."""
        payload = json.dumps(
            {"algo": self.algo, "env": self.env, "task": self.task, "seed": self.seed,
             "steps": self.steps, "overrides": list(self.overrides)},
            sort_keys=True,
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
        task = self.task.replace("?", ".").replace("&", ",")  # a task's parameters, path-safe
        return f"{self.algo}__{self.env}-{task}__s{self.seed}__{digest}"


def _convert(value: str, tp: Any, key: str) -> Any:
    """Convert a string to the dataclass field type ``tp``, with a clear error."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in [str(c) for c in choices]:
            raise ConfigError(f"bad value {value!r} for {key}: choose one of {', '.join(map(str, choices))}")
        return next(c for c in choices if str(c) == value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value.lower() in ("none", "null") and len(args) < len(get_args(tp)):
            return None
        return _convert(value, args[0], key)
    try:
        if tp is bool:
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return parse_steps(value) if re.search(r"[kKmM]$", value) else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return value
    except (ValueError, ConfigError):
        raise ConfigError(f"bad value {value!r} for {key}: expected {getattr(tp, '__name__', tp)}") from None
    raise ConfigError(f"{key} cannot be set from the command line (type {tp})")


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def with_new_settings(cls: type, stored: dict[str, Any]) -> dict[str, Any]:
    """A stored (resolved) config as this version of ``cls`` reads it: each setting added since
    the run was stored takes the value such runs ran with (the class's ``LEGACY_VALUES`` where it
    names one, else the setting's default); settings this version no longer has are kept as stored.
    A new setting whose default is ``None`` (filled when the config is resolved) needs its entry in
    ``LEGACY_VALUES``, or a stored run reads as having run with ``None``."""
    legacy, defaults = getattr(cls, "LEGACY_VALUES", {}), cls()
    added = {f.name: legacy.get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(cls)
             if f.name not in stored}
    return {**added, **stored}


def apply_overrides(cfg: Any, overrides: dict[str, str], where: str) -> Any:
    """Return a copy of dataclass ``cfg`` with string ``overrides`` converted to the field types.

    Unknown keys raise a ConfigError naming the valid ones. ``where`` names the config in errors.
    """
    types_ = field_types(type(cfg))
    changes: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in types_:
            raise ConfigError(f"unknown setting {key!r} for {where}; valid: {', '.join(sorted(types_))}")
        changes[key] = _convert(raw, types_[key], f"{where}.{key}")
    new = dataclasses.replace(cfg, **changes)
    validate = getattr(new, "validate", None)
    if callable(validate):
        validate()
    return new


def parse_set_options(items: list[str]) -> tuple[tuple[str, str], ...]:
    """Parse ``--set key=value`` strings into ordered pairs (``algo.key`` scopes to one algorithm)."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"bad --set {item!r}: use key=value, e.g. --set lr=5e-4 or --set marpo.alpha=0.3")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"bad --set {item!r}: empty key")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def overrides_for(algo: str, pairs: tuple[tuple[str, str], ...], known_algos: set[str]) -> dict[str, str]:
    """The overrides that apply to ``algo``'s config: unscoped keys plus ``algo.key`` ones, without
    the run settings (:data:`RUN_SETTINGS`, see :func:`run_config`)."""
    out: dict[str, str] = {}
    for key, value in pairs:
        if "." in key:
            scope, sub = key.split(".", 1)
            if scope not in known_algos:
                valid = ", ".join(sorted(known_algos))
                raise ConfigError(f"unknown algorithm {scope!r} in --set {key}; valid: {valid}")
            if sub in RUN_SETTINGS:
                raise ConfigError(f"{sub} is a run setting, the same for every algorithm: use --set {sub}={value}")
            if scope == algo:
                out[sub] = value
        elif key not in RUN_SETTINGS:
            out[key] = value
    return out


def run_config(pairs: tuple[tuple[str, str], ...]) -> RunConfig:
    """The run settings of a run: defaults, then the unscoped ``--set`` keys that name them."""
    return apply_overrides(RunConfig(), {k: v for k, v in pairs if k in RUN_SETTINGS}, "run")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a dataclass config."""
    return dataclasses.asdict(cfg)


__all__ = [
    "ConfigError", "RUN_SETTINGS", "Recipe", "RunConfig", "RunSpec", "apply_overrides", "field", "overrides_for",
    "budget_for", "parse_budgets", "parse_set_options", "parse_steps", "to_dict",
    "with_new_settings",
]
