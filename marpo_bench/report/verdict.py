"""The answer in words: one sentence per algorithm against the baseline, overall and per group,
worded by what the confidence intervals support.

The wording follows the probability of improvement P(X > baseline), the chance that a run of X
beats a run of the baseline on a task, averaged over tasks, with its stratified-bootstrap CI:

- **better** when the whole CI lies above 0.5,
- **worse** when it lies below 0.5,
- **indistinguishable** when it contains 0.5 (the study cannot tell them apart; not "equal"),
- **tied** when every run scored alike (P = 0.5 with an interval of no width, e.g. every win rate 0),
- **too few seeds to tell** when an algorithm has fewer than ``MIN_SEEDS`` runs on one of the
  group's tasks: whatever the interval says, the sentence gives point estimates only.

Why a minimum: the stratified bootstrap resamples seeds within each task, and n seeds have only
C(2n-1, n) distinct resamples per task (2 seeds: 3; 3: 10; 5: 126). With 2 seeds per algorithm the
interval of P is built from a handful of values and collapses (``make demo``'s 2-seed study once
read "worse: P = 0.000 [0.000, 0.000]"), so its width says nothing about the evidence. 5 seeds is
the smallest count the MARPO paper and on-policy's scripts run per task, and what rliable's authors
show intervals for; below it the report says so instead of choosing a word.

Each sentence also gives both IQMs with their CIs. Every sentence is one test at the report's
confidence level: with k sentences, about k x 5% of "better"/"worse" calls may be chance (the
report says how many there are; no correction is applied).
"""

from __future__ import annotations

from dataclasses import dataclass

from marpo_bench.analysis.compare import Group
from marpo_bench.analysis.study import Analysis
from marpo_bench.stats import Estimate, Reach

MIN_SEEDS = 5
"""Runs per (algorithm, task) below which no comparison gets a directional word (see above)."""


@dataclass(frozen=True)
class Verdict:
    group: Group
    algo: str
    baseline: str
    poi: Estimate
    iqm: Estimate
    iqm_baseline: Estimate
    seeds: int = MIN_SEEDS  # the fewest runs either algorithm has on one of the group's tasks

    @property
    def word(self) -> str:
        if self.seeds < MIN_SEEDS:
            return "too few seeds"
        if self.poi.lo == self.poi.hi == 0.5:
            return "tied"
        if self.poi.lo > 0.5:
            return "better"
        if self.poi.hi < 0.5:
            return "worse"
        return "indistinguishable"


def verdicts(res: Analysis) -> list[Verdict]:
    """Every algorithm against the baseline, on the tasks the two both ran (``res.comparisons``),
    per group, "all" first: grouped by group, then by algorithm."""
    order = {name: i for i, name in enumerate(_group_order(res))}
    out = []
    for g in res.comparisons:
        for (a, b), p in g.poi.items():
            seeds = min(len(res.data.task(k).runs[x]) for k in g.tasks for x in (a, b))
            out.append(Verdict(g, a, b, p, g.aggregates[a]["IQM"], g.aggregates[b]["IQM"], seeds))
    return sorted(out, key=lambda v: (order.get(v.group.name, len(order)), res.data.algos.index(v.algo)))


def _group_order(res: Analysis) -> list[str]:
    """Group names in their display order: all, score kinds, families."""
    return ["all", "kind:return", "kind:win_rate"] + [f"family:{f}" for f in sorted({t.env for t in res.data.tasks})]


def _where(g: Group) -> str:
    """The group and the tasks it aggregates: "all 2 tasks (jax_mpe:simple_spread, smax:3m)",
    "win-rate tasks (smax:3m)", "jax_mpe (jax_mpe:simple_spread, ...)"."""
    return f"{g.label.split(' (')[0]} ({', '.join(g.tasks)})"


def _ci(e: Estimate) -> str:
    return f"{e.point:.3f} [{e.lo:.3f}, {e.hi:.3f}]"


def sentence(v: Verdict, confidence: float) -> str:
    """e.g. "On all 9 tasks, marpo is indistinguishable from mappo: P(marpo > mappo) = 0.48 [0.33, 0.63],
    IQM 0.578 [0.52, 0.63] vs 0.589 [0.54, 0.64] (95% CIs)"."""
    if v.word == "too few seeds":
        return (f"On {_where(v.group)}, too few seeds to tell {v.algo} from {v.baseline} ({v.seeds} on a task; "
                f"{MIN_SEEDS} needed for better or worse): point estimates P({v.algo} > {v.baseline}) = "
                f"{v.poi.point:.3f}, IQM {v.iqm.point:.3f} vs {v.iqm_baseline.point:.3f}.")
    if v.word == "tied":
        return (f"On {_where(v.group)}, {v.algo} and {v.baseline} tie: every run of one scored like every run of the "
                f"other (P({v.algo} > {v.baseline}) = 0.500, an interval of no width; IQM {_ci(v.iqm)} vs "
                f"{_ci(v.iqm_baseline)}).")
    relation = {"better": "better than", "worse": "worse than", "indistinguishable": "indistinguishable from"}[v.word]
    return (f"On {_where(v.group)}, {v.algo} is {relation} {v.baseline}: P({v.algo} > {v.baseline}) = {_ci(v.poi)}, "
            f"IQM {_ci(v.iqm)} vs {_ci(v.iqm_baseline)} ({round(100 * confidence)}% CIs).")


def _ratio_range(r: Reach) -> str:
    """The steps ratio's range where the edges of the algorithm's IQM band reach the target
    (upper edge first), e.g. "[0.80x, 1.25x]"; "beyond the budget" where the lower edge never does."""
    if not r.baseline_steps > 0:
        return ""
    hi = f"{r.late / r.baseline_steps:.2f}x" if r.late == r.late else "beyond the budget"
    return f"[{r.early / r.baseline_steps:.2f}x, {hi}]"


def efficiency_sentences(res: Analysis) -> list[str]:
    """e.g. "marpo needs 0.91x [0.80x, 1.10x] mappo's env steps and 1.05x its wall-clock time to reach
    mappo's final IQM (0.660)" (the range: where the edges of marpo's IQM band reach it; a
    band-crossing range, not a bootstrap CI of the ratio); "does not reach" where its curve stays
    below."""
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
        out.append(f"{a} needs {r.steps_ratio:.2f}x {_ratio_range(r)} {res.baseline}'s env steps{time} to reach "
                   f"{res.baseline}'s final IQM ({r.target:.3f}).")
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
    if any(v.word == "too few seeds" for v in vs):
        lines.append(f"Evidence rule: a comparison is called better or worse only with at least {MIN_SEEDS} seeds of "
                     "each algorithm on every task it aggregates; with fewer, the bootstrap interval is built from a "
                     "handful of resamples and says nothing (run more seeds: --seeds 5).")
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
