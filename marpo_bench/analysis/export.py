"""The analysis as plain JSON (``analysis.json``: the headline numbers, for scripts and regressions)."""

from __future__ import annotations

import json
import math
from typing import Any

from marpo_bench.analysis.study import Analysis
from marpo_bench.stats import Estimate


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
        "primary": [res.primary, res.baseline] if res.primary else None,
        "comparisons": [{"algo": c.algo, "baseline": c.baseline, "group": c.group, "label": c.label, "tasks": c.tasks,
                         "budgets": c.budgets, "seeds": list(c.seeds),
                         "probability_of_improvement": est(c.poi),
                         "iqm": {c.algo: est(c.iqm), c.baseline: est(c.iqm_baseline)},
                         "steps_to_baseline_final_iqm": None if c.reach is None else {
                             "target": c.reach.target, "ratio": c.reach.steps_ratio,
                             "band_crossing": [c.reach.early / c.reach.baseline_steps,
                                               c.reach.late / c.reach.baseline_steps]
                             if c.reach.baseline_steps > 0 else None},
                         "left_out": c.left_out, "cut": c.cut} for c in res.comparisons],
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
