"""The analysis of a study: load it (:mod:`~marpo_bench.analysis.load`), then compute every number
the report shows: IQM / mean / median / optimality gap with stratified-bootstrap CIs, probability
of improvement, performance profiles, sample-efficiency curves (:mod:`marpo_bench.stats`, rliable's
definitions), the comparisons (:mod:`~marpo_bench.analysis.compare`), costs and diagnostics."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from marpo_bench.analysis.compare import Comparison, Group, comparisons, group_tasks, poi_pairs
from marpo_bench.analysis.cost import Cost, costs
from marpo_bench.analysis.diagnostics import diagnostics
from marpo_bench.analysis.load import DEFAULT_BASELINE, load_scores
from marpo_bench.analysis.scores import AnalysisError, StudyScores, curve_along, finite_mean, raw_at
from marpo_bench.analysis.selection import Selection, SelectRule, choose
from marpo_bench.normalisation import Normalisation, normalise
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
    # each algorithm vs the baseline on the tasks both ran at a common budget, per group (what page 1 says)
    comparisons: list[Comparison] = field(default_factory=list)
    primary: str | None = None  # the algorithm of the headline: the first in display order, or --primary
    # MARPO's diagnostics: env family -> metric -> algo -> mean band over its runs vs env steps
    diagnostics: dict[str, dict[str, dict[str, Band]]] = field(default_factory=dict)
    cost: dict[str, Cost] = field(default_factory=dict)
    cost_warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    selection: Selection | None = None  # report --select best: the configs chosen, on which seeds


POI_FRACTIONS = (0.25, 0.5, 1.0)
"""Fractions of the budget at which the probability of improvement over the baseline is given."""


def analyse(
    study_path: Path, *, reps: int = 50_000, seed: int = 0, baseline: str | None = None, last_k: int = 3,
    confidence: float = 0.95, grid_points: int = 21,
    algos: Sequence[str] | None = None, envs: Sequence[str] | None = None, normalisation: Normalisation = "bounds",
    select: SelectRule | None = None,
    primary: str | None = None,
) -> Analysis:
    """Load a study and compute everything the report shows.

    ``baseline=None`` picks MAPPO when the study has it; a named baseline must be in the study
    (unless the study has a single algorithm). ``primary``, the algorithm of page 1's headline (its
    comparison with the baseline comes first), defaults to the first in display order (MARPO when
    the study has it, else the first alphabetically). ``algos`` / ``envs`` restrict the study
    (``load_scores``), as ``normalisation`` (``"bounds"`` or marl-eval's ``"minmax"``) does. The
    statistics are :mod:`marpo_bench.stats`'s (rliable's definitions).
    """
    if reps < 1:
        raise AnalysisError(f"--reps must be positive, got {reps}")
    t0 = time.perf_counter()
    study_runs, selection = None, None
    if select is not None:  # each algorithm's best config on the selection seeds, compared on the others
        study_runs, selection = choose(study_path, select, last_k=last_k, algos=algos, envs=envs,
                                       normalisation=normalisation)
    data = load_scores(study_path, last_k, baseline or DEFAULT_BASELINE, algos=algos, envs=envs,
                       normalisation=normalisation, study_runs=study_runs)
    if baseline is None:  # automatic: MAPPO when the study has it, else no baseline
        baseline = DEFAULT_BASELINE if DEFAULT_BASELINE in data.algos else None
    elif baseline not in data.algos:
        if len(data.algos) > 1:
            raise AnalysisError(f"baseline {baseline!r} is not in study {data.study}; algorithms: "
                                f"{', '.join(data.algos)}")
        baseline = None
    if primary is not None and primary not in data.algos:
        raise AnalysisError(f"primary {primary!r} is not in study {data.study}; algorithms: {', '.join(data.algos)}")
    if primary is not None and primary == baseline:
        raise AnalysisError(f"primary {primary!r} is the baseline; name another algorithm, or another baseline with "
                            "--baseline")
    if primary is not None and baseline is None:
        raise AnalysisError(f"primary {primary!r}: study {data.study} has no baseline to compare it with; name one "
                            f"with --baseline ({', '.join(a for a in data.algos if a != primary)})")
    if primary is None and baseline is not None:
        primary = next((a for a in data.algos if a != baseline), None)
    res = Analysis(data, reps, seed, confidence, baseline, selection=selection,
                   notes=[*(selection.notes() if selection else []), *data.notes], primary=primary)
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
            per_seed = np.stack([raw_at(r, grid, r.raw) for r in rs])
            res.raw_curves[td.key][a] = (
                mean_band(per_seed, grid, reps, confidence, rng_for(seed, "raw-curve", td.key, a)), per_seed)
    res.timings["summary"] = time.perf_counter() - t
    res.cost, res.cost_warnings = costs(data)
    t = time.perf_counter()
    res.diagnostics = diagnostics(data, min(reps, 2000), confidence, seed)
    res.timings["diagnostics"] = time.perf_counter() - t

    t = time.perf_counter()
    res.comparisons = comparisons(data, baseline, reps, confidence, seed, grid_points)
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
        rates = {a: finite_mean([r.seconds_per_step for k in data.agg_tasks for r in data.task(k).runs[a]])
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
