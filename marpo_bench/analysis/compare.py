"""Which tasks each comparison aggregates, and its statistics: the groups of tasks worth their own
numbers (all, each score kind, each env family), each algorithm against the baseline on the tasks
the two both ran, and the pairs the probability-of-improvement matrix shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from marpo_bench.analysis.scores import StudyScores
from marpo_bench.stats import Estimate, aggregate_estimates, pairwise_poi


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
