"""The answer in words: one sentence per algorithm against the baseline, overall and per group,
worded by what the confidence intervals support.

The wording follows the probability of improvement P(X > baseline), the chance that a run of X
beats a run of the baseline on a task, averaged over tasks, with its stratified-bootstrap CI:

- **better** when the whole CI lies above 0.5,
- **worse** when it lies below 0.5,
- **indistinguishable** when it contains 0.5 (the study cannot tell them apart; not "equal").

Each sentence also gives both IQMs with their CIs. Every sentence is one test at the report's
confidence level: with k sentences, about k x 5% of "better"/"worse" calls may be chance (the
report says how many there are; no correction is applied).
"""

from __future__ import annotations

from dataclasses import dataclass

from marpo_bench.analysis import Analysis, Group
from marpo_bench.stats import Estimate


@dataclass(frozen=True)
class Verdict:
    group: Group
    algo: str
    baseline: str
    poi: Estimate
    iqm: Estimate
    iqm_baseline: Estimate

    @property
    def word(self) -> str:
        if self.poi.lo > 0.5:
            return "better"
        if self.poi.hi < 0.5:
            return "worse"
        return "indistinguishable"


def verdicts(res: Analysis) -> list[Verdict]:
    """Every (group, algorithm) comparison with the baseline, the "all tasks" group first."""
    out = []
    for g in res.groups:
        for (a, b), p in g.poi.items():
            if b == res.baseline and a in g.aggregates and b in g.aggregates:
                out.append(Verdict(g, a, b, p, g.aggregates[a]["IQM"], g.aggregates[b]["IQM"]))
    return out


def _ci(e: Estimate) -> str:
    return f"{e.point:.3f} [{e.lo:.3f}, {e.hi:.3f}]"


def sentence(v: Verdict, confidence: float) -> str:
    """e.g. "On all 9 tasks, marpo is indistinguishable from mappo: P(marpo > mappo) = 0.48 [0.33, 0.63],
    IQM 0.578 [0.52, 0.63] vs 0.589 [0.54, 0.64] (95% CIs)"."""
    relation = {"better": "better than", "worse": "worse than", "indistinguishable": "indistinguishable from"}[v.word]
    return (f"On {v.group.label}, {v.algo} is {relation} {v.baseline}: P({v.algo} > {v.baseline}) = {_ci(v.poi)}, "
            f"IQM {_ci(v.iqm)} vs {_ci(v.iqm_baseline)} ({round(100 * confidence)}% CIs).")


def efficiency_sentences(res: Analysis) -> list[str]:
    """e.g. "marpo needs 0.91x mappo's env steps and 1.05x its wall-clock time to reach mappo's final
    IQM (0.660)"; "never reaches it within the budget" where its curve stays below."""
    out = []
    for a, r in res.reach.items():
        if a == res.baseline:
            continue
        if r.steps != r.steps:  # NaN: not reached
            own = res.aggregates[a]["IQM"].point if a in res.aggregates else float("nan")
            out.append(f"{a} does not reach {res.baseline}'s final IQM ({r.target:.3f}) within the budget (its own "
                       f"final IQM: {own:.3f}).")
            continue
        time = f" and {r.seconds_ratio:.2f}x its wall-clock time" if r.seconds_ratio == r.seconds_ratio else ""
        out.append(f"{a} needs {r.steps_ratio:.2f}x {res.baseline}'s env steps{time} to reach {res.baseline}'s "
                   f"final IQM ({r.target:.3f}).")
    return out


def headline(res: Analysis) -> list[str]:
    """The verdict's sentences, then what they rest on (a note on multiple comparisons, the tasks
    left out); a one-line explanation when there is nothing to compare."""
    vs = verdicts(res)
    d = res.data
    lines = [sentence(v, res.confidence) for v in vs] + efficiency_sentences(res)
    if not vs:
        if not d.agg_tasks:
            lines.append("No verdict: no task is run by every algorithm with a normalised score (see the per-task "
                         "tables).")
        elif res.baseline is None:
            iqms = ", ".join(f"{a} {_ci(res.aggregates[a]['IQM'])}" for a in d.algos if a in res.aggregates)
            lines.append(f"No baseline in this study, so no comparison; IQM over {len(d.agg_tasks)} tasks: {iqms}.")
    if len(vs) > 1:
        lines.append(f"{len(vs)} comparisons, each at {round(100 * res.confidence)}% confidence: about "
                     f"{len(vs) * (1 - res.confidence):.1f} of them could read better or worse by chance alone "
                     "(no correction for multiple comparisons).")
    if d.unlearned:
        lines.append(f"Not learned by any algorithm (left out of the aggregates): {', '.join(d.unlearned)}.")
    left = [t.key for t in d.tasks if t.key not in d.agg_tasks and t.key not in d.unlearned]
    if left:
        lines.append(f"Not in the aggregates (no normalisation bounds, or not run by every algorithm): "
                     f"{', '.join(left)}.")
    return lines
