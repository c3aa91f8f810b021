"""The presets: study files shipped with the package (``marpo_bench/studies/NAME.toml``), for
``marpo-bench run --preset NAME``; ``default`` is what ``run`` trains without grid flags.

A preset is read by the loader of ``run --study-file`` (:func:`marpo_bench.studyfile.parse`), so
``marpo-bench preset show NAME > mine.toml`` is a study file that plans the same runs. Each file
holds its cells (algorithms x envs x seeds at a budget, with settings), its description, why these
budgets (``budget_note``) and, where measured, each cell's CPU-hours; docs/studies.md has the
speeds they were estimated from. An explicit ``--algos/--envs/--seeds/--steps`` flag replaces that
field in every cell and ``--set`` options are applied after each cell's settings (so they win). The
settings are part of every run's id, so a preset run and a hand-written command with the same grid
and settings share runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

from marpo_bench.config import ConfigError
from marpo_bench.studyfile import Cell, Grid, parse, with_flags

__all__ = ["DEFAULT", "Cell", "Grid", "Preset", "get_preset", "load", "names", "resolve", "text", "with_flags"]

DEFAULT = "default"
"""The preset ``marpo-bench run`` trains when no grid flag, preset or study file is given."""

STUDIES = "studies"  # the presets' folder in the package

# `marpo-bench bench`'s default rows (not a study): both MPE backends, the suite's fast path and its reference.
BENCH_ALGOS = "mappo,marpo"
BENCH_ENVS = "jax_mpe:simple_spread,mpe:simple_spread"


@dataclass(frozen=True)
class Preset:
    """One named study file of the package: the cells ``run --preset`` trains (one product grid, or
    several where the study is not a product, e.g. ablations on some tasks only), and notes on
    budget and cost."""

    name: str
    description: str
    cells: tuple[Cell, ...]
    budget: str  # why these budgets, and what they cost (the file's budget_note)
    text: str  # the file as shipped (`marpo-bench preset show NAME`)

    @property
    def cpu_hours(self) -> float | None:
        """The cells' measured CPU-hours summed (None when any cell is unmeasured)."""
        hours = [c.cpu_hours for c in self.cells]
        return None if any(h is None for h in hours) else sum(hours)


def _folder() -> Any:
    return resources.files("marpo_bench").joinpath(STUDIES)


@functools.cache
def names() -> tuple[str, ...]:
    """The presets' names (their files' stems), sorted."""
    return tuple(sorted(p.name.removesuffix(".toml") for p in _folder().iterdir() if p.name.endswith(".toml")))


def text(name: str) -> str:
    """The preset's file as shipped; ConfigError (one line, naming the valid ones) for an unknown name."""
    if name not in names():
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(names())}")
    return _folder().joinpath(f"{name}.toml").read_text(encoding="utf-8")


@functools.cache
def load(name: str) -> Preset:
    """The preset called ``name``, read as ``run --study-file`` reads a file."""
    study = parse(text(name), f"{name}.toml")
    return Preset(name, study.description, study.cells, study.budget_note, study.text)


get_preset = load


def resolve(preset: str | None, *, algos: str | None, envs: str | None, seeds: int | None, steps: str | None,
            sets: list[str] | tuple[str, ...]) -> tuple[Grid, ...]:
    """The grids to run: the cells of ``preset`` (the ``default`` preset when None), each explicit flag
    replacing that field and ``sets`` appended to each cell's settings, so the user's win."""
    return with_flags(load(DEFAULT if preset is None else preset).cells, algos=algos, envs=envs, seeds=seeds,
                      steps=steps, sets=sets)


_DEFAULT_FIELDS = {"DEFAULT_ALGOS": "algos", "DEFAULT_ENVS": "envs", "DEFAULT_SEEDS": "seeds",
                   "DEFAULT_STEPS": "steps"}


def __getattr__(attr: str) -> Any:
    """``PRESETS`` (every preset by name) and the default study's fields (``DEFAULT_ALGOS``, ...),
    read from the files when first asked for."""
    if attr == "PRESETS":
        return {n: load(n) for n in names()}
    if attr in _DEFAULT_FIELDS:
        (cell,) = load(DEFAULT).cells
        return getattr(cell, _DEFAULT_FIELDS[attr])
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
