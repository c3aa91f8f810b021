"""Where env families and algorithms are found: the built-ins, then plugins' entry points.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."marpo_bench.envs"]
    my_family = "my_package.envs:FAMILY"          # an envs.base.EnvFamily

    [project.entry-points."marpo_bench.algorithms"]
    my_algo = "my_package.algo:MyAlgo"            # a class satisfying algos.Algorithm

and once installed (``pip install -e .``) its names work everywhere a built-in's does (``run``,
``bench``, ``list``, ``report``). A plugin that fails to load, or that takes a name already in use,
is left out with a one-line problem (``problems()``, printed by the CLI); the rest still works.
Nothing here imports an env backend or an algorithm module until it is asked for.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from marpo_bench.config import one_line
from marpo_bench.envs.base import EnvFamily

ENV_GROUP = "marpo_bench.envs"
ALGO_GROUP = "marpo_bench.algorithms"

# Built-in env families: module holding its ``FAMILY`` declaration (cheap to import: backends load
# when an env is built).
_BUILTIN_FAMILIES = ("marpo_bench.envs.mpe", "marpo_bench.envs.jax_mpe", "marpo_bench.envs.smax",
                     "marpo_bench.envs.smacv2", "marpo_bench.envs.pettingzoo")

# Built-in algorithms: name -> (module, class, one-line description), imported when first used.
_BUILTIN_ALGORITHMS: Mapping[str, tuple[str, str, str]] = {
    "mappo": ("baselines.mappo", "MAPPO", "MAPPO (Yu et al. 2022): PPO with a centralised critic, GAE, ValueNorm"),
    "marpo": ("marpo_bench.algos.marpo", "MARPO",
              "MARPO (Wu et al. 2025): MAPPO + reflection term + KL-derived asymmetric clipping"),
    "marpo_noreflect": ("marpo_bench.algos.marpo", "MARPONoReflection",
                        "MARPO ablation: no reflection term (MAPPO objective + KL-derived asymmetric clip)"),
    "marpo_symclip": ("marpo_bench.algos.marpo", "MARPOSymmetricClip",
                      "MARPO ablation: reflection term with PPO's fixed symmetric clip [1-eps, 1+eps]"),
    "marpo_ppoclip": ("marpo_bench.algos.marpo", "MARPOPPOMainClip",
                      "MARPO ablation: adaptive bounds in the reflection term only, PPO's clip in L0 (official code)"),
    "qmix": ("baselines.qmix", "QMix",
             "QMix (Rashid et al. 2018): recurrent per-agent Q, monotonic hypernetwork mixer"),
}


@dataclass(frozen=True)
class AlgorithmEntry:
    """A registered algorithm: its name, one-line description, where it comes from and how to load it."""

    name: str
    description: str
    origin: str  # "built-in" or "plugin <distribution>"
    load: Callable[[], Any]


@dataclass(frozen=True)
class Registry:
    families: dict[str, EnvFamily]
    family_origin: dict[str, str]
    algorithms: dict[str, AlgorithmEntry]
    problems: tuple[str, ...]


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=group), key=lambda ep: ep.name)


def _origin(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"plugin {dist.name}" if dist is not None else f"plugin {ep.value}"


def _builtin_algorithm(module: str, cls: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), cls)


@functools.cache
def registry() -> Registry:
    """The registry of this process, built once: built-ins, then the installed plugins."""
    problems: list[str] = []
    families: dict[str, EnvFamily] = {}
    origin: dict[str, str] = {}
    for module in _BUILTIN_FAMILIES:
        fam = importlib.import_module(module).FAMILY
        families[fam.name], origin[fam.name] = fam, "built-in"
    for ep in _entry_points(ENV_GROUP):
        try:
            fam = ep.load()
            fam = fam() if callable(fam) and not isinstance(fam, EnvFamily) else fam
            if not isinstance(fam, EnvFamily):
                raise TypeError(f"{ep.value} is a {type(fam).__name__}, not an EnvFamily")
        except Exception as exc:  # a broken plugin must not take the suite down
            problems.append(f"env plugin {ep.name!r} ({ep.value}) failed to load and is left out: {one_line(exc)}")
            continue
        if ep.name != fam.name:
            problems.append(f"env plugin {ep.name!r} declares the family {fam.name!r}; use one name for both "
                            "(left out)")
        elif fam.name in families:
            problems.append(f"env plugin {ep.name!r} ({ep.value}) takes the name of the {origin[fam.name]} "
                            "family; rename it (left out)")
        else:
            families[fam.name], origin[fam.name] = fam, _origin(ep)
    algorithms = {name: AlgorithmEntry(name, desc, "built-in", _builtin_algorithm(module, cls))
                  for name, (module, cls, desc) in _BUILTIN_ALGORITHMS.items()}
    for ep in _entry_points(ALGO_GROUP):
        if ep.name in algorithms:
            problems.append(f"algorithm plugin {ep.name!r} ({ep.value}) takes the name of a "
                            f"{algorithms[ep.name].origin} algorithm; rename it (left out)")
            continue
        try:
            cls = ep.load()
            missing = [a for a in ("Config", "metrics", "resumes_mid_episode", "learn", "act", "state_dict")
                       if not hasattr(cls, a)]
            if missing:
                raise TypeError(f"{ep.value} lacks {', '.join(missing)} (see marpo_bench.algos.Algorithm)")
        except Exception as exc:
            problems.append(f"algorithm plugin {ep.name!r} ({ep.value}) failed to load and is left out: "
                            f"{one_line(exc)}")
            continue
        doc = (cls.__doc__ or "").strip().splitlines()
        algorithms[ep.name] = AlgorithmEntry(ep.name, getattr(cls, "description", doc[0] if doc else ep.value),
                                             _origin(ep), lambda cls=cls: cls)
    return Registry(families, origin, algorithms, tuple(problems))


def refresh() -> Registry:
    """Rebuild the registry (after installing a plugin in this process; tests)."""
    registry.cache_clear()
    return registry()


def plugin_distributions() -> set[str]:
    """The distributions that registered a family or an algorithm here (their versions go in run.json)."""
    reg = registry()
    origins = [*reg.family_origin.values(), *(a.origin for a in reg.algorithms.values())]
    return {o.removeprefix("plugin ") for o in origins if o.startswith("plugin ")}


def problems() -> tuple[str, ...]:
    """One line per plugin left out, and why."""
    return registry().problems


def env_families() -> dict[str, EnvFamily]:
    """Every registered env family by name, built-ins first."""
    return registry().families


def env_family(name: str) -> EnvFamily:
    """The family registered as ``name`` (ValueError naming the valid ones)."""
    fams = env_families()
    if name not in fams:
        raise ValueError(f"unknown env family {name!r}; valid families: {', '.join(fams)}")
    return fams[name]


def algorithm_names() -> list[str]:
    """Every registered algorithm name, sorted."""
    return sorted(registry().algorithms)


def algorithm_entry(name: str) -> AlgorithmEntry:
    """The registration of ``name`` (ValueError naming the valid ones)."""
    algos = registry().algorithms
    if name not in algos:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(algos))}")
    return algos[name]


def algorithm_class(name: str) -> Any:
    """The class registered as ``name``."""
    return algorithm_entry(name).load()
