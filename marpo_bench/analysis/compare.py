"""Which tasks each comparison aggregates, and its statistics: the groups of tasks worth their own
numbers (all, each score kind, each env family), each algorithm against the baseline on the tasks
the two both ran at the budget both ran (with its sample-efficiency ratio), and the pairs the
probability-of-improvement matrix shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from marpo_bench.analysis.scores import FINAL_WINDOW, StudyScores, curve_along, finite_mean
from marpo_bench.normalisation import normalise
from marpo_bench.stats import Estimate, Reach, aggregate_estimates, iqm_curves, pairwise_poi, reach_baseline


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


@dataclass
class PairTasks:
    """The tasks a comparison of two algorithms aggregates, each at the budget both ran, and why any
    task both ran is left out."""

    scores: dict[str, dict[str, np.ndarray]]  # task -> algo -> normalised final scores (unclipped), by seed
    budgets: dict[str, int]  # task -> the budget the comparison uses there
    left_out: dict[str, str] = field(default_factory=dict)  # task -> why
    cut: dict[str, str] = field(default_factory=dict)  # task -> which runs trained longer than that budget


def pair_tasks(data: StudyScores, a: str, b: str) -> PairTasks:
    """The tasks a comparison of ``a`` with ``b`` aggregates: every normalisable task some algorithm
    learns that both ran, whether or not the study's other algorithms ran it (a missing ablation
    cell never removes a task from MARPO vs MAPPO), each at the budget both ran: the smaller of
    their runs' budgets there, not the task's common budget (an ablation or a baseline trained
    shorter never cuts MARPO vs MAPPO short). A run that trained longer is scored at that budget by
    the window rule (:data:`~marpo_bench.analysis.scores.FINAL_WINDOW`); a task where some run has
    no evaluation in that window is left out, with the reason."""
    out = PairTasks({}, {})
    for t in data.tasks:
        if not (t.normalisable and t.key not in data.unlearned and a in t.runs and b in t.runs):
            continue
        runs = {x: t.runs[x] for x in (a, b)}
        budget = min(r.budget or t.budget for rs in runs.values() for r in rs)
        if budget == t.budget:  # the aggregate table's scores, bit for bit
            scores = {x: np.array([r.final_score for r in rs]) for x, rs in runs.items()}
        else:
            raw = {x: np.array([r.final_at(budget, data.last_k) for r in rs]) for x, rs in runs.items()}
            blind = [x for x, v in raw.items() if not np.isfinite(v).all()]
            if blind:
                out.left_out[t.key] = (f"{' and '.join(blind)} ha{'ve' if len(blind) > 1 else 's'} runs with no "
                                       f"evaluation in the last {FINAL_WINDOW:.0%} of {budget:,} env steps, the "
                                       "budget both ran")
                continue
            scores = {x: np.asarray(normalise(v, t.env, t.task, t.bounds), dtype=np.float64) for x, v in raw.items()}
        longer = {x: max(r.budget for r in rs) for x, rs in runs.items() if any(r.budget > budget for r in rs)}
        if longer:
            out.cut[t.key] = (" and ".join(f"{x}'s runs trained to {n:,}" for x, n in longer.items())
                              + f" and are scored on their evaluations in the last {FINAL_WINDOW:.0%} before "
                              f"{budget:,}")
        out.scores[t.key], out.budgets[t.key] = scores, budget
    return out


@dataclass
class Comparison:
    """One algorithm against the baseline on one group of the tasks the two both ran (each at the
    budget both ran): what the verdict and page 1's table say."""

    algo: str
    baseline: str
    group: str  # "all" | "kind:return" | "kind:win_rate" | "family:<env family>"
    label: str  # e.g. "all 5 tasks", "win-rate tasks (smax; 2 tasks)"
    tasks: list[str]
    budgets: dict[str, int]  # task -> budget compared at
    seeds: tuple[int, int]  # fewest and most runs of either algorithm on one of the tasks
    poi: Estimate  # P(algo > baseline)
    iqm: Estimate
    iqm_baseline: Estimate
    reach: Reach | None = None  # the group "all" only: steps to the baseline's final IQM, as fractions of the budgets
    left_out: dict[str, str] = field(default_factory=dict)  # tasks of the group's kind both ran, left out: why
    cut: dict[str, str] = field(default_factory=dict)  # tasks where runs trained longer were cut to the budget


def _in_group(data: StudyScores, group: str, key: str) -> bool:
    """Whether task ``key`` belongs to the group named ``group`` (by score kind, family, or all)."""
    kind, _, value = group.partition(":")
    t = data.task(key)
    return kind == "all" or (kind == "kind" and t.kind == value) or (kind == "family" and t.env == value)


def pair_reach(data: StudyScores, pair: PairTasks, a: str, b: str, keys: Sequence[str], target: float, reps: int,
               confidence: float, seed: int, grid_points: int = 21) -> Reach | None:
    """Sample efficiency of ``a`` against ``b`` on the pair's tasks: their IQM curves (each run's
    final score by the window rule at each fraction of the task's compared budget, as in the
    aggregate curve), and where ``a``'s curve and its band edges reach ``target``, ``b``'s final
    IQM; steps are fractions of each task's budget, so tasks of different budgets pool. None when
    a curve cannot be drawn (a run with no evaluation in any window)."""
    frac = np.linspace(0.0, 1.0, grid_points)
    curves: dict[str, list[np.ndarray]] = {}
    try:
        for x in (a, b):
            curves[x] = []
            for k in keys:
                td, budget = data.task(k), pair.budgets[k]
                curves[x].append(np.stack([np.clip(normalise(curve_along(r, frac * budget, data.last_k, budget),
                                                             td.env, td.task, td.bounds), 0.0, 1.0)
                                           for r in td.runs[x]]))
        bands = iqm_curves(curves, frac, reps, confidence, seed, key="aggregate")
    except ValueError:  # no finite point to interpolate from, or a NaN left in a curve
        return None
    rates = {x: finite_mean([r.seconds_per_step for k in keys for r in data.task(k).runs[x]]) for x in (a, b)}
    return reach_baseline(bands, b, target, rates)[a]


def comparisons(data: StudyScores, baseline: str | None, reps: int, confidence: float, seed: int,
                grid_points: int = 21) -> list[Comparison]:
    """Each algorithm against the baseline, per group of the tasks the two both ran at a common
    budget (:func:`pair_tasks`), in display order, "all" first for each algorithm. The bootstrap
    streams are keyed by algorithm, so where the pair's tasks and budgets are the aggregate
    table's the numbers equal it."""
    out: list[Comparison] = []
    if baseline is None:
        return out
    for a in data.algos:
        if a == baseline:
            continue
        pair = pair_tasks(data, a, baseline)
        for name, label, keys in group_tasks(data, list(pair.scores)):
            scores = {x: [np.clip(pair.scores[k][x], 0.0, 1.0) for k in keys] for x in (a, baseline)}
            agg = aggregate_estimates(scores, reps, confidence, seed)
            poi = pairwise_poi(scores, [(a, baseline)], reps, confidence, seed)[(a, baseline)]
            n = [len(pair.scores[k][x]) for k in keys for x in (a, baseline)]
            c = Comparison(a, baseline, name, label, keys, {k: pair.budgets[k] for k in keys}, (min(n), max(n)), poi,
                           agg[a]["IQM"], agg[baseline]["IQM"],
                           left_out={k: why for k, why in pair.left_out.items() if _in_group(data, name, k)},
                           cut={k: why for k, why in pair.cut.items() if k in keys})
            if name == "all":
                c.reach = pair_reach(data, pair, a, baseline, keys, c.iqm_baseline.point, reps, confidence, seed,
                                     grid_points)
            out.append(c)
    return out


def poi_pairs(algos: Sequence[str], baseline: str | None) -> list[tuple[str, str]]:
    """The ``(x, y)`` pairs shown: every algorithm against the baseline first, then every other
    pair once, oriented by display order (MARPO first). P(y > x) is ``1 - P(x > y)``."""
    pairs = [(a, baseline) for a in algos if baseline in algos and a != baseline]
    rest = [a for a in algos if a != baseline]
    pairs += [(a, b) for i, a in enumerate(rest) for b in rest[i + 1:]]
    return pairs
