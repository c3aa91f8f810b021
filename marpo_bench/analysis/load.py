"""Reading a study into :class:`~marpo_bench.analysis.scores.StudyScores`: complete runs only (the
rest are listed with the reason, never dropped silently), one task = (env family, task), cut to the
task's common budget, each run's final score by the window rule, normalised with the task's bounds
(:mod:`marpo_bench.normalisation`) or min-max over its own values (``--normalise minmax``)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marpo_bench import registry, store
from marpo_bench.analysis.scores import (
    BUDGET_SLACK,
    FINAL_WINDOW,
    LEARNED,
    AnalysisError,
    Excluded,
    RunScore,
    StudyScores,
    TaskData,
    windowed_final,
)
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

SUBJECT = "marpo"
"""The suite's subject: first in every table, and the primary comparison's first algorithm."""
DEFAULT_BASELINE = "mappo"
"""The baseline every algorithm is compared against when the study has it (``report --baseline``)."""


def _unlearned(t: TaskData) -> bool:
    means = [np.mean(np.clip([r.final_score for r in rs], 0.0, 1.0)) for rs in t.runs.values()]
    return bool(means) and max(means) < LEARNED


def _display_order(algos: set[str], baseline: str | None) -> list[str]:
    """MARPO (the suite's subject) first, the baseline last, the others alphabetically between."""
    rest = sorted(a for a in algos if a not in (SUBJECT, baseline))
    return [a for a in (SUBJECT,) if a in algos] + rest + ([baseline] if baseline in algos and baseline != SUBJECT
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
    same command resolves to today (``recipes.build_config``): runs of a superseded recipe, e.g. a
    study trained before a baseline was calibrated. Imported runs (no config) and algorithms not
    installed here are skipped."""
    from marpo_bench.config import RunSpec
    from marpo_bench.recipes import build_config

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
                              f"env steps); the aggregate and per-task tables use the common prefix up to {common:,} "
                              "env steps; each comparison of two algorithms, the budget both ran")
        per_algo: dict[str, list[RunScore]] = defaultdict(list)
        few: dict[str, int] = {}  # label -> fewest evaluation points of its runs in the final window
        by_absolute = 0  # imported runs scored by their absolute_metrics
        col = "eval_win_rate" if kind == "win_rate" else "eval_return_mean"
        for r in runs:
            df = self.by_run[r["run_id"]]
            steps = df["env_steps"].to_numpy(np.int64)
            vals = df[col].to_numpy(np.float64)
            keep = np.isfinite(vals)
            all_steps, all_vals = steps[keep], vals[keep]
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
            absolute = float(absolute) if absolute is not None and math.isfinite(absolute) else math.nan
            if math.isfinite(absolute) and budget_of[r["run_id"]] == common:
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
                float(normalise(final_raw, env, task, bounds)), int(steps[-1]), wall, steps, vals, rate,
                budget_of[r["run_id"]], all_steps, all_vals, absolute))
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

