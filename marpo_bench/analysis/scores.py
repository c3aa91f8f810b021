"""What the statistics see of a study: its runs' final scores and learning curves, and the one
rule for "final" (the mean of the last K evaluation points inside a window at the end of a budget,
:data:`FINAL_WINDOW`), the same in the aggregate tables, along the curves and in each comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marpo_bench.envs.base import TaskBounds
from marpo_bench.normalisation import Normalisation, normalise


class AnalysisError(ValueError):
    """A one-line, user-facing reason why a study cannot be analysed."""


@dataclass
class RunScore:
    """One complete run as the statistics see it."""

    run_id: str
    algo: str  # the label (algo, or algo[overrides] when one task mixes override sets)
    env: str
    task: str
    seed: int
    final_raw: float  # mean of the last K eval points at the common budget (return or win rate)
    final_score: float  # normalised, unclipped (NaN when the task has no bounds)
    final_steps: int  # env steps of the last point used
    wall_seconds: float
    steps: np.ndarray  # env steps of the points kept (common prefix)
    raw: np.ndarray  # values at those points
    seconds_per_step: float = math.nan  # wall-clock seconds per env step over the whole run (training + evaluation)
    budget: int = 0  # the run's own budget (at least the task's common budget)
    all_steps: np.ndarray | None = field(default=None, repr=False)  # every finite evaluation, past the common budget
    all_raw: np.ndarray | None = field(default=None, repr=False)
    absolute: float = math.nan  # an imported run's marl-eval absolute metric: its final score at its own budget

    def final_at(self, budget: int, last_k: int) -> float:
        """The run's final raw score compared at ``budget`` env steps (at most its own): the window rule
        over all its evaluations (:func:`windowed_final`), or its absolute metric at its own budget;
        NaN when it has no evaluation in the window before ``budget``. At the task's common budget
        this is ``final_raw``."""
        if budget == self.budget and math.isfinite(self.absolute):
            return self.absolute
        return float(final_along(self, np.array([budget]), last_k, budget)[0])


@dataclass
class Excluded:
    """A run the statistics do not use, and why (shown in the report, never dropped silently)."""

    run_id: str
    algo: str
    env: str
    task: str
    seed: Any
    status: str
    reason: str
    env_steps: Any = None


@dataclass
class TaskData:
    """All used runs of one task, ``(env family, task)``."""

    env: str
    task: str
    kind: str  # "return" | "win_rate"
    bounds: TaskBounds | None
    budget: int  # common budget: the smallest budget of its runs
    budgets: list[int]  # distinct budgets of its runs
    runs: dict[str, list[RunScore]]  # algo -> runs sorted by seed

    @property
    def key(self) -> str:
        return f"{self.env}:{self.task}"

    @property
    def normalisable(self) -> bool:
        return self.kind == "win_rate" or self.bounds is not None


@dataclass
class StudyScores:
    """What :func:`load_scores` extracts from a study."""

    study: str
    path: Path
    records: list[dict]
    tasks: list[TaskData]
    algos: list[str]  # display order
    excluded: list[Excluded]
    notes: list[str]
    last_k: int
    agg_tasks: list[str]  # task keys in the aggregates (normalisable, every algorithm present, learned)
    unlearned: list[str] = field(default_factory=list)  # normalisable tasks no algorithm learns (shown apart)
    frames: dict[str, Any] = field(default_factory=dict)  # run_id -> its metrics rows (training metrics too)
    normalisation: Normalisation = "bounds"  # how return tasks are normalised (load_scores' parameter)

    def task(self, key: str) -> TaskData:
        return next(t for t in self.tasks if t.key == key)

    def final_scores(self, clip: bool = True) -> dict[str, list[np.ndarray]]:
        """Per algorithm, one array of normalised final scores per aggregate task."""
        out: dict[str, list[np.ndarray]] = {}
        for a in self.algos:
            arrs = [np.array([r.final_score for r in self.task(k).runs[a]]) for k in self.agg_tasks]
            out[a] = [np.clip(v, 0.0, 1.0) for v in arrs] if clip else arrs
        return out

    def scores_at(self, fraction: float) -> dict[str, list[np.ndarray]]:
        """Like :meth:`final_scores` (clipped) at ``fraction`` of each task's common budget: the same
        "final" rule (:func:`windowed_final`) over the points before it; NaN for a run with no
        evaluation in the window there."""
        out: dict[str, list[np.ndarray]] = {}
        for a in self.algos:
            out[a] = []
            for k in self.agg_tasks:
                td = self.task(k)
                raw = np.array([final_along(r, np.array([fraction * td.budget]), self.last_k, td.budget)[0]
                                for r in td.runs[a]])
                out[a].append(np.clip(normalise(raw, td.env, td.task, td.bounds), 0.0, 1.0))
        return out

    def clipped(self) -> list[RunScore]:
        """Used runs whose normalised final score lies outside [0, 1] (clipped for aggregation)."""
        return [r for t in self.tasks for rs in t.runs.values() for r in rs
                if math.isfinite(r.final_score) and not 0.0 <= r.final_score <= 1.0]


BUDGET_SLACK = 0.05
"""A run with a larger budget than the common one keeps its points up to ``(1 + slack) x`` the
common budget (evaluation points fall on rollout boundaries, not exactly on the budget)."""

FINAL_WINDOW = 0.10
"""The final score of a run at x env steps is the mean of its last K evaluation points inside the
final window: the last ``FINAL_WINDOW`` of the task's budget before x (widened by ``BUDGET_SLACK``
on both sides, as evaluation points fall on rollout boundaries). At the default evaluation interval
(budget / 20) that is exactly the last 3 points. A run with no point in the window has no final
score there: when runs of a long budget are cut to a shorter common one and evaluated coarsely
(e.g. every 1M of a 20M run, compared at 2M), the mean of the "last 3 points" would reach back to
the first evaluation of a random policy; such a run is left out, with the reason."""

LEARNED = 0.05
"""A task counts as learned when some algorithm's mean final score (normalised return, clipped to
[0, 1], or win rate) reaches this; a task no algorithm learns is shown apart from the aggregates."""


def windowed_final(steps: np.ndarray, values: np.ndarray, x: np.ndarray, last_k: int, budget: float) -> np.ndarray:
    """At each ``x``: the mean of the last ``last_k`` evaluation points inside the final window
    before ``x`` (``FINAL_WINDOW`` of ``budget``, with the slack), NaN where the window holds none.
    The one rule for "final", in the aggregate table as along the curves (bit for bit)."""
    x = np.asarray(x, dtype=np.float64)
    end = np.searchsorted(steps, x * (1 + BUDGET_SLACK), side="right")
    start = np.searchsorted(steps, x - (FINAL_WINDOW + BUDGET_SLACK) * budget, side="left")
    first = np.maximum(end - last_k, start)
    return np.array([values[a:b].mean() if b > a else math.nan for a, b in zip(first, end, strict=True)])


def final_along(run: RunScore, x: np.ndarray, last_k: int, budget: float) -> np.ndarray:
    """The run's final raw score had it stopped at each ``x`` (:func:`windowed_final`; NaN where it
    has no evaluation in the window before x). ``x`` may pass the task's common budget (a
    comparison of two algorithms that both trained longer), up to the run's own budget."""
    if run.all_steps is None:
        return windowed_final(run.steps, run.raw, x, last_k, budget)
    return windowed_final(run.all_steps, run.all_raw, x, last_k, budget)


def curve_along(run: RunScore, x: np.ndarray, last_k: int, budget: float) -> np.ndarray:
    """:func:`final_along` on a curve's grid, with the gaps of a coarsely evaluated run (no point in
    the window before some x) filled linearly between the grid points where it is defined. The
    curve ends at the run's final score, which always exists for a run the statistics use."""
    y = final_along(run, x, last_k, budget)
    ok = np.isfinite(y)
    return y if ok.all() else np.interp(np.asarray(x, dtype=np.float64), np.asarray(x, dtype=np.float64)[ok], y[ok])


def raw_at(run: RunScore, x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (one per kept evaluation point of the run) linearly interpolated at ``x``."""
    return np.interp(x, run.steps.astype(np.float64), values)


def finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values (NaN when there are none, e.g. imported runs without timings)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan
