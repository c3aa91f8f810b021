"""Analysis of a study: load it, then compute everything the report shows.

The pipeline (``docs/algorithms.md``, "Comparison pitfalls")::

    store.read_study -> load_scores: complete runs only (the rest are listed, never dropped silently),
                        one task = (env family, task), common budget, final score = mean of the
                        last K evaluation points in the last 10% of that budget (FINAL_WINDOW),
                        scores normalised with the task's bounds
                        (:mod:`marpo_bench.normalisation`)
                     -> analyse: IQM / mean / median / optimality gap with stratified-bootstrap CIs,
                        probability of improvement, performance profiles, sample-efficiency curves
                        (:mod:`marpo_bench.stats`)
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marpo_bench import registry, store
from marpo_bench.envs.base import TaskBounds
from marpo_bench.normalisation import (
    MINMAX_EPS,
    NORMALISATIONS,
    Normalisation,
    minmax_bounds,
    normalise,
    run_minmax,
    score_kind,
    study_bounds,
    task_bounds,
)
from marpo_bench.stats import (
    Band,
    Estimate,
    Reach,
    aggregate_estimates,
    iqm_curves,
    mean_band,
    pairwise_poi,
    performance_profiles,
    reach_baseline,
    rng_for,
)

# --------------------------------------------------------------------------------------------
# loading a study


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


def _unlearned(t: TaskData) -> bool:
    means = [np.mean(np.clip([r.final_score for r in rs], 0.0, 1.0)) for rs in t.runs.values()]
    return bool(means) and max(means) < LEARNED
"""A run with a larger budget than the common one keeps its points up to ``(1 + slack) x`` the
common budget (evaluation points fall on rollout boundaries, not exactly on the budget)."""


def _display_order(algos: set[str], baseline: str | None) -> list[str]:
    """MARPO (the suite's subject) first, the baseline last, the others alphabetically between."""
    rest = sorted(a for a in algos if a not in ("marpo", baseline))
    return [a for a in ("marpo",) if a in algos] + rest + ([baseline] if baseline in algos and baseline != "marpo"
                                                            else [])


def _labels(records: list[dict]) -> dict[str, str]:
    """run_id -> algorithm label. Runs of one algorithm on one task with different ``--set``
    overrides are different variants: they get ``algo[k=v,...]`` labels instead of being pooled."""
    sets: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    ov = {r["run_id"]: ",".join(f"{k}={v}" for k, v in (r.get("overrides") or [])) for r in records}
    for r in records:
        sets[(r["algo"], r["env"], r["task"])].add(ov[r["run_id"]])
    split = {a for (a, _, _), s in sets.items() if len(s) > 1}
    return {r["run_id"]: (f"{r['algo']}[{ov[r['run_id']]}]" if r["algo"] in split and ov[r["run_id"]] else r["algo"])
            for r in records}


def _restrict(records: list[dict], algos: Sequence[str] | None, envs: Sequence[str] | None, study: str,
              notes: list[str]) -> list[dict]:
    """The records of the chosen algorithms and envs (all when both are None)."""
    said: list[str] = []
    if algos is not None:
        have = sorted({r["algo"] for r in records})
        missing = [a for a in algos if a not in have]
        if missing:
            raise AnalysisError(f"study {study} has no runs of {', '.join(missing)}; algorithms: {', '.join(have)}")
        keep = set(algos)
        records = [r for r in records if r["algo"] in keep]
        said.append(f"algorithms {', '.join(algos)}")
    if envs is not None:
        have = sorted({r["env"] for r in records} | {f"{r['env']}:{r['task']}" for r in records})
        missing = [e for e in envs if e not in have]
        if missing:
            raise AnalysisError(f"study {study} has no runs on {', '.join(missing)}; envs: {', '.join(have)}")
        keep = set(envs)
        records = [r for r in records if r["env"] in keep or f"{r['env']}:{r['task']}" in keep]
        said.append(f"envs {', '.join(envs)}")
    if said:
        notes.append("restricted to " + "; ".join(said))
    return records


def recipe_drift(records: list[dict]) -> list[str]:
    """One note per (algorithm, task, overrides) whose runs ran a config that differs from what the
    same command resolves to today (``train.build_config``): runs of a superseded recipe, e.g. a
    study trained before a baseline was calibrated. Imported runs (no config) and algorithms not
    installed here are skipped."""
    from marpo_bench.config import RunSpec
    from marpo_bench.train import build_config

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("config") and not r.get("imported"):
            key = (r["algo"], r["env"], r["task"], tuple(tuple(p) for p in r.get("overrides") or []))
            groups[key].append(r)
    notes = []
    for (algo, env, task, overrides), runs in sorted(groups.items()):
        try:
            today = vars(build_config(RunSpec(algo, env, task, 0, 1, overrides)))
        except Exception:  # noqa: BLE001 (an algorithm or env not installed here, a setting since removed)
            continue
        diffs: dict[str, tuple[Any, Any]] = {}
        for r in runs:
            for k, v in r["config"].items():
                if k in today and today[k] != v and k not in diffs:
                    diffs[k] = (v, today[k])
        if diffs:
            said = ", ".join(f"{k} {old!r} (today {new!r})" for k, (old, new) in sorted(diffs.items()))
            notes.append(f"{algo} on {env}:{task}: {len(runs)} run(s) ran a config that differs from today's recipe "
                         f"for the same command: {said}; they measure that config, not today's default")
    return notes


def _finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values (NaN when there are none, e.g. imported runs without timings)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


class _Loader:
    """The steps of :func:`load_scores` over one study's runs; every run left out is recorded in
    ``excluded`` with its reason, every caveat in ``notes``."""

    def __init__(self, records: list[dict], metrics: Any, last_k: int, notes: list[str]) -> None:
        self.labels = _labels(records)
        self.by_run = {rid: df.sort_values("env_steps") for rid, df in metrics.groupby("run_id", sort=False)}
        self.last_k, self.notes = last_k, notes
        self.excluded: list[Excluded] = []

    def exclude(self, r: dict, reason: str) -> None:
        self.excluded.append(Excluded(r["run_id"], self.labels[r["run_id"]], r["env"], r["task"], r.get("seed"),
                                      r["status"], reason, r.get("env_steps")))

    def usable_by_task(self, records: list[dict]) -> dict[tuple[str, str], list[dict]]:
        """Complete runs with a finite evaluation, grouped by (env, task)."""
        groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in records:
            if r["status"] != "complete":
                self.exclude(r, r.get("message") or f"run is {r['status']}")
                continue
            df = self.by_run.get(r["run_id"])
            col = "eval_win_rate" if score_kind(r["env"]) == "win_rate" else "eval_return_mean"
            if df is None or not np.isfinite(df[col].to_numpy()).any():
                self.exclude(r, f"complete, but no finite {col} in its metrics")
                continue
            groups[(r["env"], r["task"])].append(r)
        return groups

    def same_scale(self, key: str, runs: list[dict], bounds: TaskBounds | None) -> list[dict]:
        """The runs on the task's reward scale and horizon (its bounds', else the most common one):
        returns on two scales are never mixed."""
        want_scale = bounds.scale if bounds else Counter(r.get("reward_scale") for r in runs).most_common(1)[0][0]
        want_limit = bounds.episode_limit if bounds else Counter(
            r.get("episode_limit") for r in runs).most_common(1)[0][0]
        kept = []
        for r in runs:
            if r.get("reward_scale") not in (None, want_scale):
                hint = (f"; import with --reward-scale {want_scale} if its returns are on that scale"
                        if r.get("imported") else "")
                self.exclude(r, f"reward scale {r['reward_scale']} differs from {want_scale} (never mixed){hint}")
            elif r.get("episode_limit") not in (None, want_limit):
                self.exclude(r, f"episode limit {r['episode_limit']} differs from {want_limit} (never mixed)")
            else:
                kept.append(r)
        if any(r.get("reward_scale") is None for r in kept):
            self.notes.append(f"{key}: some runs do not record their reward scale; assumed {want_scale}")
        return kept

    def one_per_seed(self, runs: list[dict]) -> list[dict]:
        """One run per (label, seed): the longest, then the first by run id."""
        seen: dict[tuple[str, Any], dict] = {}
        for r in sorted(runs, key=lambda r: (-int(self.by_run[r["run_id"]]["env_steps"].max()), r["run_id"])):
            k = (self.labels[r["run_id"]], r["seed"])
            if k in seen:
                self.exclude(r, f"duplicate of seed {r['seed']} (run {seen[k]['run_id']} is used)")
            else:
                seen[k] = r
        return list(seen.values())

    def task_data(self, env: str, task: str, kind: str, bounds: TaskBounds | None, runs: list[dict]
                  ) -> TaskData | None:
        """The task's runs cut to their common budget, with final scores (None: none usable)."""
        ends = {r["run_id"]: int(self.by_run[r["run_id"]]["env_steps"].max()) for r in runs}
        budget_of = {r["run_id"]: int(r.get("budget") or ends[r["run_id"]]) for r in runs}
        budgets = sorted(set(budget_of.values()))
        common = budgets[0]
        if len(budgets) > 1:
            self.notes.append(f"{env}:{task}: runs have different budgets ({', '.join(f'{b:,}' for b in budgets)} "
                              f"env steps); statistics use the common prefix up to {common:,} env steps")
        per_algo: dict[str, list[RunScore]] = defaultdict(list)
        few: dict[str, int] = {}  # label -> fewest evaluation points of its runs in the final window
        by_absolute = 0  # imported runs scored by their absolute_metrics
        col = "eval_win_rate" if kind == "win_rate" else "eval_return_mean"
        for r in runs:
            df = self.by_run[r["run_id"]]
            steps = df["env_steps"].to_numpy(np.int64)
            vals = df[col].to_numpy(np.float64)
            keep = np.isfinite(vals)
            if budget_of[r["run_id"]] > common:
                keep &= steps <= common * (1 + BUDGET_SLACK)
            steps, vals = steps[keep], vals[keep]
            if steps.size == 0:
                self.exclude(r, f"no finite evaluation within the common budget {common:,}")
                continue
            final_raw = float(windowed_final(steps, vals, np.array([common]), self.last_k, common)[0])
            if not math.isfinite(final_raw):
                self.exclude(r, f"no evaluation in the last {FINAL_WINDOW:.0%} of the common budget {common:,} (its "
                                f"last one before it is at {int(steps[-1]):,}): its final score would come from "
                                "earlier training; evaluate more often (--set eval_interval=N) or compare at its "
                                "own budget")
                continue
            absolute = (r.get("absolute_metrics") or {}).get(col)
            if absolute is not None and math.isfinite(absolute) and budget_of[r["run_id"]] == common:
                final_raw = float(absolute)  # marl-eval's final score: the final policy re-evaluated
                by_absolute += 1
            in_window = int(np.sum(steps >= common - (FINAL_WINDOW + BUDGET_SLACK) * common))
            if in_window < self.last_k:
                few[self.labels[r["run_id"]]] = min(few.get(self.labels[r["run_id"]], in_window), in_window)
            wall = float(r.get("wall_seconds") or df["wall_seconds"].max())
            total = float(df["env_steps"].max())
            rate = float(df["wall_seconds"].max()) / total if total > 0 else math.nan
            label = self.labels[r["run_id"]]
            per_algo[label].append(RunScore(
                r["run_id"], label, env, task, r["seed"], final_raw,
                float(normalise(final_raw, env, task, bounds)), int(steps[-1]), wall, steps, vals, rate))
        if by_absolute:
            self.notes.append(f"{env}:{task}: {by_absolute} imported run(s) carry marl-eval's absolute_metrics (the "
                              "final policy re-evaluated); their final score is that figure, as marl-eval scores "
                              "them (their curves end at their last logging step)")
        for label, n in sorted(few.items()):
            self.notes.append(f"{env}:{task}: some runs of {label} have only {n} evaluation point(s) in the last "
                              f"{FINAL_WINDOW:.0%} of the common budget {common:,}; their final score is the mean of "
                              f"those, not of {self.last_k}")
        if not per_algo:
            return None
        return TaskData(env, task, kind, bounds, common, budgets,
                        {a: sorted(v, key=lambda s: s.seed) for a, v in per_algo.items()})


def _aggregated(tasks: list[TaskData], algos: list[str], study_path: Path, notes: list[str]
                ) -> tuple[list[str], list[str]]:
    """(tasks in the aggregate statistics, tasks no algorithm learns), saying why each other task
    is left out and what else limits the comparison."""
    agg = [t.key for t in tasks if t.normalisable and all(a in t.runs for a in algos)]
    unlearned = [t.key for t in tasks if t.normalisable and _unlearned(t)]
    for k in unlearned:
        notes.append(f"{k}: no algorithm learns it (every algorithm's mean final score is below {LEARNED:g}); it is "
                     "shown in its own table and left out of the aggregates, which it would only dilute")
    agg = [k for k in agg if k not in unlearned]
    for t in tasks:
        if t.key not in agg and t.key not in unlearned:
            why = (f"no normalisation bounds for its returns: `marpo-bench bounds {study_path} --reference "
                   f"{t.key}=SCORE` measures its random score and sets a reference" if not t.normalisable else
                   "not run by " + ", ".join(a for a in algos if a not in t.runs))
            notes.append(f"{t.key} is left out of the aggregate statistics ({why}); see its own table and curves")
    fams = sorted({t.env for t in tasks})
    for i, a in enumerate(fams):
        fam = registry.env_families().get(a)
        for b in fams[i + 1:]:
            if fam is not None and b in fam.not_comparable_with:
                notes.append(fam.not_comparable_with[b])
    if not agg:
        notes.append("no task is run by every algorithm with a normalised score: aggregate statistics skipped")
    for t in tasks:
        for a, rs in t.runs.items():
            if len(rs) < 3:
                notes.append(f"{t.key}: {a} has {len(rs)} seed(s); its confidence intervals are unreliable")
    return agg, unlearned


def load_scores(study_path: Path, last_k: int = 3, baseline: str | None = None,
                algos: Sequence[str] | None = None, envs: Sequence[str] | None = None,
                study_runs: store.StudyRuns | None = None, normalisation: Normalisation = "bounds") -> StudyScores:
    """Read a study (or take its ``study_runs`` already read with ``store.read_study``) and extract the
    final score and learning curve of every complete run.

    ``algos`` / ``envs`` restrict the analysis to those algorithms and to those env families or
    ``family:task`` pairs (e.g. an ablation reported on the MPE tasks of a larger study); naming
    one the study does not have is an AnalysisError listing what it has.

    Runs that are not complete, complete without usable evaluations, duplicated seeds, or on a
    different reward scale / horizon than the task's normalisation table are listed in
    ``excluded`` with the reason. Raises :class:`store.StoreError` for unreadable stores (missing,
    empty, other schema versions) and :class:`AnalysisError` when nothing complete is left.

    ``normalisation="minmax"`` normalises every return task as marl-eval does, by min-max over its
    own values (:func:`_minmax`), instead of by its stored bounds; every such task can then enter
    the aggregates.
    """
    if normalisation not in NORMALISATIONS:
        raise AnalysisError(f"unknown normalisation {normalisation!r}; valid: {', '.join(NORMALISATIONS)}")
    if last_k < 1:
        raise AnalysisError(f"--last-k must be at least 1, got {last_k}")
    study_path = Path(study_path)
    records, metrics = store.study_frame(study_runs if study_runs is not None else store.read_study(study_path))
    notes: list[str] = []
    records = _restrict(records, algos, envs, study_path.name, notes)
    imported = [r for r in records if r.get("imported")]
    if imported:
        files = sorted({f"{r['imported'].get('format')} file {r['imported'].get('file')}" for r in imported})
        notes.append(f"{len(imported)} run(s) imported from {', '.join(files)} (not trained here; provenance in "
                     f"each run.json under 'imported'): {', '.join(sorted({r['algo'] for r in imported}))}")
    notes += recipe_drift(records)
    load = _Loader(records, metrics, last_k, notes)
    groups = load.usable_by_task(records)
    if not groups:
        counts = Counter(r["status"] for r in records)
        raise AnalysisError(f"study {study_path.name} has no complete runs with evaluations "
                            f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); nothing to report")
    tasks: list[TaskData] = []
    measured = study_bounds(study_path)  # tasks without stored bounds: measured for this study
    for (env, task), runs in sorted(groups.items()):
        kind = score_kind(env)
        bounds = task_bounds(env, task) or (measured.get((env, task)) if kind == "return" else None)
        if kind == "return":
            runs = load.same_scale(f"{env}:{task}", runs, bounds)
        runs = load.one_per_seed(runs)
        if normalisation == "minmax" and kind == "return" and runs:
            bounds = _minmax(f"{env}:{task}", runs, load.by_run, notes)
        data = load.task_data(env, task, kind, bounds, runs) if runs else None
        if data is not None:
            tasks.append(data)
    if not tasks:
        first = load.excluded[0] if load.excluded else None
        why = f": e.g. run {first.run_id}: {first.reason}" if first else ""
        raise AnalysisError(f"study {study_path.name}: no run is usable{why}")
    algo_order = _display_order({a for t in tasks for a in t.runs}, baseline)
    if normalisation == "minmax":
        notes.insert(0, _minmax_note(tasks))
    agg, unlearned = _aggregated(tasks, algo_order, study_path, notes)
    used = {r.run_id for t in tasks for rs in t.runs.values() for r in rs}
    return StudyScores(study_path.name, study_path, records, tasks, algo_order, load.excluded, notes, last_k, agg,
                       unlearned, {rid: df for rid, df in load.by_run.items() if rid in used}, normalisation)


def _minmax(key: str, runs: list[dict], by_run: dict[str, Any], notes: list[str]) -> TaskBounds:
    """A return task's min-max bounds over its runs (``--normalise minmax``,
    :func:`marpo_bench.normalisation.minmax_bounds`), noting where they cannot be marl-eval's exactly."""
    ranges = [run_minmax(r, by_run[r["run_id"]]["eval_return_mean"].to_numpy(np.float64)) for r in runs]
    approx = sum(not exact for _, _, exact in ranges)
    if approx:
        notes.append(f"{key}: {approx} imported run(s) predate the stored marl-eval range (imported.return_minmax): "
                     "their min and max come from their evaluation means, not each episode's value as in "
                     "marl-eval; import the file into a new study for marl-eval's exact bounds")
    first = runs[0]
    return minmax_bounds([(lo, hi) for lo, hi, _ in ranges], first.get("reward_scale") or "unknown",
                         first.get("episode_limit"))


def _minmax_note(tasks: list[TaskData]) -> str:
    """What ``--normalise minmax`` did, and to which tasks (the report's mark of them)."""
    marked = ", ".join(f"{t.key} [{t.bounds.random:g}, {t.bounds.reference - MINMAX_EPS:g}]"
                       for t in tasks if t.kind == "return" and t.bounds is not None)
    return ("normalisation: min-max, as marl-eval normalises (--normalise minmax): each return task's score is "
            "(x - min) / (max - min + 1e-6) with min and max over all its values (every algorithm, run, evaluation "
            "and absolute metric; each episode's value where an imported file had them), not the stored bounds; "
            "scores are comparable within this report only. Tasks normalised so [min, max]: " + (marked or "none"))


@dataclass
class SummaryRow:
    """One line of the per-task summary table."""

    task: str
    algo: str
    kind: str
    mean: Estimate  # final return / win rate over seeds, bootstrap CI of the mean
    score: float  # mean normalised score (clipped), NaN without bounds
    seeds: list[int]
    budget: int
    final_steps: float  # mean env steps of the last point used
    wall_mean: float
    wall_min: float
    wall_max: float
    eval_modes: list[str]


@dataclass
class Group:
    """A set of aggregate tasks with its own statistics: all of them, one score kind, one family."""

    name: str  # "all" | "kind:return" | "kind:win_rate" | "family:<env family>"
    label: str  # e.g. "all 9 tasks", "win-rate tasks (smax, 3 tasks)"
    tasks: list[str]
    aggregates: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    poi: dict[tuple[str, str], Estimate] = field(default_factory=dict)  # (algo, baseline) -> P(algo > baseline)


_KIND_LABEL = {"return": "normalised-return tasks", "win_rate": "win-rate tasks"}


def group_tasks(data: StudyScores, keys: Sequence[str] | None = None) -> list[tuple[str, str, list[str]]]:
    """(name, label, tasks) of every group worth its own statistics among ``keys`` (default: the
    aggregate tasks): all of them, then each score kind and each env family when there is more
    than one (a group that holds the same tasks as an earlier one is skipped)."""
    keys = list(data.agg_tasks if keys is None else keys)
    n = lambda ks: f"{len(ks)} task{'s' if len(ks) != 1 else ''}"  # noqa: E731
    out = [("all", f"all {n(keys)}", keys)]
    for kind in ("return", "win_rate"):
        ks = [k for k in keys if data.task(k).kind == kind]
        fams = sorted({data.task(k).env for k in ks})
        out.append((f"kind:{kind}", f"{_KIND_LABEL[kind]} ({', '.join(fams)}; {n(ks)})", ks))
    for fam in sorted({data.task(k).env for k in keys}):
        ks = [k for k in keys if data.task(k).env == fam]
        out.append((f"family:{fam}", f"{fam} ({n(ks)})", ks))
    seen: list[list[str]] = []
    kept = []
    for name, label, ks in out:
        if ks and ks not in seen:
            seen.append(ks)
            kept.append((name, label, ks))
    return kept


@dataclass(frozen=True)
class Cost:
    """What an algorithm's used runs cost: wall-clock hours, CPU-hours (wall-clock x torch threads)
    and seconds per env step (training and evaluation), summed or averaged over its runs."""

    algo: str
    runs: int
    run_hours: float
    cpu_hours: float
    seconds_per_step: float  # mean over its runs of the aggregate tasks (all its runs if none)
    threads: float  # mean torch threads per run


def costs(data: StudyScores) -> tuple[dict[str, Cost], list[str]]:
    """Cost per algorithm and the warnings that qualify it: runs timed on different machines, or
    on a machine busier than its CPU count when the run started (``run.json``'s host)."""
    rec = {r["run_id"]: r for r in data.records}
    out: dict[str, Cost] = {}
    used: list[dict] = []
    for a in data.algos:
        runs = [r for t in data.tasks for r in t.runs.get(a, [])]
        agg = [r for k in data.agg_tasks for r in data.task(k).runs.get(a, [])] or runs
        threads = [int(rec[r.run_id].get("torch_threads") or 1) for r in runs]
        out[a] = Cost(a, len(runs), sum(r.wall_seconds for r in runs) / 3600,
                      sum(r.wall_seconds * n for r, n in zip(runs, threads, strict=True)) / 3600,
                      _finite_mean([r.seconds_per_step for r in agg]),
                      float(np.mean(threads)) if threads else math.nan)
        used += [rec[r.run_id] for r in runs]
    warnings = []
    def machine(r: dict) -> str:
        h = r.get("host") or {}
        gpu = f", {h['gpu']}" if h.get("gpu") else ""
        return f"{h.get('cpu_model') or h.get('processor') or '?'} ({h.get('cpus') or '?'} CPUs{gpu})"

    machines = Counter(machine(r) for r in used)
    if len(machines) > 1:
        warnings.append(f"the runs' timings come from {len(machines)} different machines "
                        f"({'; '.join(f'{n} runs on {m}' for m, n in machines.most_common())}): wall-clock and "
                        "CPU-hours compare algorithms fairly only where their runs shared a machine")
    busy = [r for r in used if (r.get("host") or {}).get("load_1min") is not None
            and r["host"]["load_1min"] > (r["host"].get("cpus") or math.inf)]
    if busy:
        warnings.append(f"{len(busy)} of {len(used)} runs started on a machine busier than its CPU count (1-minute "
                        "load average in run.json): their timings include waiting for a CPU")
    if not any((r.get("host") or {}).get("cpu_model") for r in used):
        warnings.append("the runs do not record their CPU model (run.json's host.cpu_model, recorded by runs trained "
                        "since it was added): runs timed on different CPUs cannot be told apart")
    if not any((r.get("host") or {}).get("load_1min") is not None for r in used):
        warnings.append("the runs do not record the machine's load (run.json's host.load_1min, recorded by runs "
                        "trained since it was added): timings from a shared machine may include waiting")
    return out, warnings


@dataclass
class Analysis:
    """Every number the report shows, computed by :func:`analyse`."""

    data: StudyScores
    reps: int
    seed: int
    confidence: float
    baseline: str | None
    aggregates: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    poi: dict[tuple[str, str], Estimate] = field(default_factory=dict)
    poi_pairs: list[tuple[str, str]] = field(default_factory=list)
    # fraction of the budget -> P(algo > baseline) at that point
    poi_at: dict[float, dict[tuple[str, str], Estimate]] = field(default_factory=dict)
    profiles: dict[str, Band] = field(default_factory=dict)
    curve: dict[str, Band] = field(default_factory=dict)  # aggregate IQM vs env steps
    reach: dict[str, Reach] = field(default_factory=dict)  # algo -> steps to the baseline's final IQM
    task_curves: dict[str, dict[str, Band]] = field(default_factory=dict)  # task -> algo -> IQM band
    raw_curves: dict[str, dict[str, tuple[Band, np.ndarray]]] = field(default_factory=dict)  # mean band, per seed
    summary: list[SummaryRow] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)  # "all" first; aggregates and P vs the baseline per group
    # each algorithm vs the baseline on the tasks both ran, per group (what the verdict says)
    comparisons: list[Group] = field(default_factory=list)
    # MARPO's diagnostics: env family -> metric -> algo -> mean band over its runs vs env steps
    diagnostics: dict[str, dict[str, dict[str, Band]]] = field(default_factory=dict)
    cost: dict[str, Cost] = field(default_factory=dict)
    cost_warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def pair_tasks(data: StudyScores, a: str, b: str) -> list[str]:
    """The tasks a comparison of ``a`` with ``b`` aggregates: every normalisable task some algorithm
    learns that both ran, whether or not the study's other algorithms ran it (a missing ablation
    cell never removes a task from MARPO vs MAPPO)."""
    return [t.key for t in data.tasks
            if t.normalisable and t.key not in data.unlearned and a in t.runs and b in t.runs]


def comparisons(data: StudyScores, baseline: str | None, reps: int, confidence: float, seed: int) -> list[Group]:
    """Each algorithm against the baseline, per group of the tasks the two both ran
    (:func:`pair_tasks`): one Group per (algorithm, group) holding the two IQMs and P(a > baseline).
    The bootstrap streams are keyed by algorithm, so where the pair's tasks are the aggregate
    tasks the numbers equal the aggregate table's."""
    out: list[Group] = []
    if baseline is None:
        return out
    for a in data.algos:
        if a == baseline:
            continue
        for name, label, keys in group_tasks(data, pair_tasks(data, a, baseline)):
            scores = {x: [np.clip([r.final_score for r in data.task(k).runs[x]], 0.0, 1.0) for k in keys]
                      for x in (a, baseline)}
            out.append(Group(name, label, keys, aggregate_estimates(scores, reps, confidence, seed),
                             pairwise_poi(scores, [(a, baseline)], reps, confidence, seed)))
    return out


def poi_pairs(algos: Sequence[str], baseline: str | None) -> list[tuple[str, str]]:
    """The ``(x, y)`` pairs shown: every algorithm against the baseline first, then every other
    pair once, oriented by display order (MARPO first). P(y > x) is ``1 - P(x > y)``."""
    pairs = [(a, baseline) for a in algos if baseline in algos and a != baseline]
    rest = [a for a in algos if a != baseline]
    pairs += [(a, b) for i, a in enumerate(rest) for b in rest[i + 1:]]
    return pairs


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
    has no evaluation in the window before x)."""
    return windowed_final(run.steps, run.raw, x, last_k, budget)


def curve_along(run: RunScore, x: np.ndarray, last_k: int, budget: float) -> np.ndarray:
    """:func:`final_along` on a curve's grid, with the gaps of a coarsely evaluated run (no point in
    the window before some x) filled linearly between the grid points where it is defined. The
    curve ends at the run's final score, which always exists for a run the statistics use."""
    y = final_along(run, x, last_k, budget)
    ok = np.isfinite(y)
    return y if ok.all() else np.interp(np.asarray(x, dtype=np.float64), np.asarray(x, dtype=np.float64)[ok], y[ok])


def _interp(run: RunScore, x: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.interp(x, run.steps.astype(np.float64), values)


DIAGNOSTICS: dict[str, str] = {
    "kl_delta": "δ (KL budget)",
    "clip_low_p5": "lower bound x1, 5th percentile",
    "clip_high_p95": "upper bound x2, 95th percentile",
    "clip_fraction": "clip fraction",
    "reflection_term": "reflection term α·L1",
}
"""MARPO's training diagnostics (docs/algorithms.md §4) the report draws when a study has them."""


def diagnostics(data: StudyScores, reps: int, confidence: float, seed: int,
                grid_points: int = 21) -> dict[str, dict[str, dict[str, Band]]]:
    """Per env family, per diagnostic, per algorithm that logs it: the mean over its runs (all the
    family's tasks) against env steps, with bootstrap bands; {} when no run logs ``kl_delta``."""
    out: dict[str, dict[str, dict[str, Band]]] = {}
    for fam in sorted({t.env for t in data.tasks}):
        tasks = [t for t in data.tasks if t.env == fam]
        grid = np.linspace(0, min(t.budget for t in tasks), grid_points)
        for metric in DIAGNOSTICS:
            for a in data.algos:
                rows = []
                for t in tasks:
                    for r in t.runs.get(a, []):
                        df = data.frames.get(r.run_id)
                        if df is None or metric not in df:
                            continue
                        ok = df[metric].notna().to_numpy()
                        if ok.sum() >= 2:
                            rows.append(np.interp(grid, df["env_steps"].to_numpy(np.float64)[ok],
                                                  df[metric].to_numpy(np.float64)[ok]))
                if rows:
                    out.setdefault(fam, {}).setdefault(metric, {})[a] = mean_band(
                        np.stack(rows), grid, reps, confidence, rng_for(seed, "diagnostics", fam, metric, a))
    return {fam: d for fam, d in out.items() if "kl_delta" in d}


DEFAULT_BASELINE = "mappo"
POI_FRACTIONS = (0.25, 0.5, 1.0)
"""Fractions of the budget at which the probability of improvement over the baseline is given."""


def analyse(
    study_path: Path, *, reps: int = 50_000, seed: int = 0, baseline: str | None = None, last_k: int = 3,
    confidence: float = 0.95, grid_points: int = 21,
    algos: Sequence[str] | None = None, envs: Sequence[str] | None = None, normalisation: Normalisation = "bounds",
) -> Analysis:
    """Load a study and compute everything the report shows.

    ``baseline=None`` picks MAPPO when the study has it; a named baseline must be in the study
    (unless the study has a single algorithm). ``algos`` / ``envs`` restrict the study
    (``load_scores``), as ``normalisation`` (``"bounds"`` or marl-eval's ``"minmax"``) does. The
    statistics are :mod:`marpo_bench.stats`'s (rliable's definitions).
    """
    if reps < 1:
        raise AnalysisError(f"--reps must be positive, got {reps}")
    t0 = time.perf_counter()
    data = load_scores(study_path, last_k, baseline or DEFAULT_BASELINE, algos=algos, envs=envs,
                       normalisation=normalisation)
    if baseline is None:  # automatic: MAPPO when the study has it, else no baseline
        baseline = DEFAULT_BASELINE if DEFAULT_BASELINE in data.algos else None
    elif baseline not in data.algos:
        if len(data.algos) > 1:
            raise AnalysisError(f"baseline {baseline!r} is not in study {data.study}; algorithms: "
                                f"{', '.join(data.algos)}")
        baseline = None
    res = Analysis(data, reps, seed, confidence, baseline, notes=list(data.notes))
    res.timings["load"] = time.perf_counter() - t0

    # summary table and per-task raw curves
    t = time.perf_counter()
    for td in data.tasks:
        grid = np.linspace(0, td.budget, grid_points)
        res.raw_curves[td.key] = {}
        for a in data.algos:
            rs = td.runs.get(a)
            if not rs:
                continue
            raw = np.array([r.final_raw for r in rs])
            band = mean_band(raw[:, None], np.zeros(1), reps, confidence, rng_for(seed, "summary", td.key, a))
            modes = sorted({str(next((rec.get("eval_mode") for rec in data.records if rec["run_id"] == r.run_id),
                                     None)) for r in rs})
            walls = np.array([r.wall_seconds for r in rs])
            scores = np.array([r.final_score for r in rs])
            res.summary.append(SummaryRow(
                td.key, a, td.kind, Estimate(float(raw.mean()), float(band.lo[0]), float(band.hi[0])),
                float(np.clip(scores, 0, 1).mean()) if np.isfinite(scores).all() else math.nan,
                [int(r.seed) for r in rs], td.budget, float(np.mean([r.final_steps for r in rs])),
                float(walls.mean()), float(walls.min()), float(walls.max()), modes))
            per_seed = np.stack([_interp(r, grid, r.raw) for r in rs])
            res.raw_curves[td.key][a] = (
                mean_band(per_seed, grid, reps, confidence, rng_for(seed, "raw-curve", td.key, a)), per_seed)
    res.timings["summary"] = time.perf_counter() - t
    res.cost, res.cost_warnings = costs(data)
    t = time.perf_counter()
    res.diagnostics = diagnostics(data, min(reps, 2000), confidence, seed)
    res.timings["diagnostics"] = time.perf_counter() - t

    t = time.perf_counter()
    res.comparisons = comparisons(data, baseline, reps, confidence, seed)
    res.timings["comparisons"] = time.perf_counter() - t
    if not data.agg_tasks:
        return res
    scores = data.final_scores(clip=True)
    t = time.perf_counter()
    res.aggregates = aggregate_estimates(scores, reps, confidence, seed)
    res.timings["aggregates"] = time.perf_counter() - t

    t = time.perf_counter()
    if len(data.algos) >= 2:
        res.poi_pairs = poi_pairs(data.algos, baseline)
        res.poi = pairwise_poi(scores, res.poi_pairs, reps, confidence, seed)
    else:
        res.notes.append(f"only one algorithm ({data.algos[0]}) in the study: probability of improvement and other "
                         f"pairwise statistics are skipped")
    if baseline is not None and len(data.algos) >= 2:
        vs_base = [(a, baseline) for a in data.algos if a != baseline]
        for frac in POI_FRACTIONS:
            if frac == 1.0:
                res.poi_at[frac] = {p: res.poi[p] for p in vs_base}
                continue
            at = data.scores_at(frac)
            defined = [p for p in vs_base if all(np.isfinite(v).all() for a in p for v in at[a])]
            if len(defined) < len(vs_base):
                res.notes.append(f"at {frac:.0%} of the budget some runs have no evaluation in the window before it "
                                 f"(evaluated too coarsely): P at {frac:.0%} is not given for "
                                 + ", ".join(f"{a} vs {b}" for a, b in vs_base if (a, b) not in defined))
            res.poi_at[frac] = pairwise_poi(at, defined, reps, confidence, seed) if defined else {}
    res.timings["poi"] = time.perf_counter() - t

    t = time.perf_counter()
    for name, label, keys in group_tasks(data):
        g = Group(name, label, keys)
        if keys == data.agg_tasks:
            g.aggregates, g.poi = res.aggregates, {p: e for p, e in res.poi.items() if p[1] == baseline}
        else:
            idx = [data.agg_tasks.index(k) for k in keys]
            sub_scores = {a: [v[i] for i in idx] for a, v in scores.items()}
            g.aggregates = aggregate_estimates(sub_scores, reps, confidence, seed)
            if baseline is not None and len(data.algos) >= 2:
                g.poi = pairwise_poi(sub_scores, [(a, baseline) for a in data.algos if a != baseline], reps,
                                     confidence, seed)
        res.groups.append(g)
    res.timings["groups"] = time.perf_counter() - t

    t = time.perf_counter()
    res.profiles = performance_profiles(scores, np.linspace(0.0, 1.0, 101), reps, confidence, seed)
    res.timings["profiles"] = time.perf_counter() - t

    t = time.perf_counter()
    common = min(data.task(k).budget for k in data.agg_tasks)
    if len({data.task(k).budget for k in data.agg_tasks}) > 1:
        res.notes.append(f"tasks have different budgets: the aggregate sample-efficiency curve stops at "
                         f"{common:,} env steps, the smallest; per-task curves go to each task's budget")
    grid = np.linspace(0, common, grid_points)
    curves: dict[str, list[np.ndarray]] = {}
    for a in data.algos:
        curves[a] = []
        for k in data.agg_tasks:
            td = data.task(k)
            curves[a].append(np.stack([np.clip(normalise(curve_along(r, grid, data.last_k, td.budget), td.env,
                                                         td.task, td.bounds), 0, 1)
                                       for r in td.runs[a]]))
    res.curve = iqm_curves(curves, grid, reps, confidence, seed, key="aggregate")
    if baseline is not None and baseline in res.curve:
        rates = {a: _finite_mean([r.seconds_per_step for k in data.agg_tasks for r in data.task(k).runs[a]])
                 for a in data.algos}
        res.reach = reach_baseline(res.curve, baseline, res.aggregates[baseline]["IQM"].point, rates)
    for k in data.agg_tasks:
        td = data.task(k)
        tgrid = np.linspace(0, td.budget, grid_points)
        per = {a: [np.stack([np.clip(normalise(curve_along(r, tgrid, data.last_k, td.budget), td.env, td.task,
                                               td.bounds), 0, 1)
                             for r in td.runs[a]])] for a in data.algos}
        res.task_curves[k] = iqm_curves(per, tgrid, reps, confidence, seed, key=k)
    res.timings["curves"] = time.perf_counter() - t
    return res


def to_jsonable(res: Analysis) -> dict[str, Any]:
    """The headline numbers as plain JSON (for scripts and regressions)."""
    def est(e: Estimate) -> list[float]:
        return [e.point, e.lo, e.hi]

    return {
        "study": res.data.study, "reps": res.reps, "seed": res.seed, "confidence": res.confidence,
        "last_k": res.data.last_k, "tasks": res.data.agg_tasks, "algos": res.data.algos,
        "aggregates": {a: {m: est(e) for m, e in d.items()} for a, d in res.aggregates.items()},
        "probability_of_improvement": {f"{a}>{b}": est(e) for (a, b), e in res.poi.items()},
        "groups": {g.name: {"label": g.label, "tasks": g.tasks,
                            "aggregates": {a: {m: est(e) for m, e in d.items()} for a, d in g.aggregates.items()},
                            "probability_of_improvement": {f"{a}>{b}": est(e) for (a, b), e in g.poi.items()}}
                   for g in res.groups},
        "comparisons": [{"group": g.name, "label": g.label, "tasks": g.tasks,
                         "probability_of_improvement": {f"{a}>{b}": est(e) for (a, b), e in g.poi.items()},
                         "iqm": {a: est(d["IQM"]) for a, d in g.aggregates.items()}} for g in res.comparisons],
        "unlearned_tasks": res.data.unlearned,
        "cost": {a: c.__dict__ for a, c in res.cost.items()}, "cost_warnings": res.cost_warnings,
        "probability_of_improvement_at_budget_fraction": {
            str(f): {f"{a}>{b}": est(e) for (a, b), e in d.items()} for f, d in res.poi_at.items()},
        "steps_to_baseline_final_iqm": {a: {"target": r.target, "steps": r.steps, "early": r.early, "late": r.late,
                                            "budget": r.budget, "baseline_steps": r.baseline_steps,
                                            "steps_ratio": r.steps_ratio, "seconds": r.seconds,
                                            "seconds_ratio": r.seconds_ratio} for a, r in res.reach.items()},
        "summary": [{"task": s.task, "algo": s.algo, "final": est(s.mean), "score": s.score, "seeds": s.seeds,
                     "budget": s.budget} for s in res.summary],
        "excluded": [e.__dict__ for e in res.data.excluded],
        "configs": {r["run_id"]: {"config": r.get("config"), "overrides": r.get("overrides") or []}
                    for r in res.data.records
                    if any(r["run_id"] == s.run_id for t in res.data.tasks for rs in t.runs.values() for s in rs)},
        "notes": res.notes,
    }


def dumps(res: Analysis) -> str:
    """:func:`to_jsonable` as text (NaN written as null)."""
    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(to_jsonable(res)), indent=2, default=str) + "\n"
