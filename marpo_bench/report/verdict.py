"""Page 1's answer in words: one headline sentence for the primary comparison (the first algorithm
against the baseline: MARPO vs MAPPO by default), then every other comparison as a row of one
compact table, then what the words rest on. HTML, Markdown and the terminal show the same text.

The word follows the probability of improvement P(X > baseline), the chance that a run of X beats
a run of the baseline on a task, averaged over the tasks the two both ran (at the budget both ran),
with its stratified-bootstrap CI:

- **better** when the whole CI lies above 0.5,
- **worse** when it lies below 0.5,
- **indistinguishable** when it contains 0.5 (the study cannot tell them apart; not "equal"),
- **tied** when every run scored alike (P = 0.5 with an interval of no width, e.g. every win rate 0),
- **too few seeds to tell** when an algorithm has fewer than ``MIN_SEEDS`` runs on one of the
  compared tasks: whatever the interval says, the sentence gives point estimates only, and so do
  the table's P and efficiency ratio.

Why a minimum: the stratified bootstrap resamples seeds within each task, and n seeds have only
C(2n-1, n) distinct resamples per task (2 seeds: 3; 3: 10; 5: 126). With 2 seeds per algorithm the
interval of P is built from a handful of values and collapses (``make demo``'s 2-seed study once
read "worse: P = 0.000 [0.000, 0.000]"), so its width says nothing about the evidence. 5 seeds is
the smallest count the MARPO paper and on-policy's scripts run per task, and what rliable's authors
show intervals for; below it the report says so instead of choosing a word.

Every comparison is one test at the report's confidence level: with k of them, about k x 5% of
"better"/"worse" calls may be chance (the notes say how many there are; no correction is applied).
"""

from __future__ import annotations

from dataclasses import dataclass

from marpo_bench.analysis.compare import Comparison, pair_tasks
from marpo_bench.analysis.load import DEFAULT_BASELINE, SUBJECT
from marpo_bench.analysis.scores import FINAL_WINDOW
from marpo_bench.analysis.study import Analysis
from marpo_bench.config import format_steps
from marpo_bench.stats import Estimate, Reach

MIN_SEEDS = 5
"""Runs per (algorithm, task) below which no comparison gets a directional word (see above)."""


def word(c: Comparison) -> str:
    """What the comparison's CI of P supports: better, worse, indistinguishable, tied, or too few seeds."""
    if c.seeds[0] < MIN_SEEDS:
        return "too few seeds"
    if c.poi.lo == c.poi.hi == 0.5:
        return "tied"
    if c.poi.lo > 0.5:
        return "better"
    if c.poi.hi < 0.5:
        return "worse"
    return "indistinguishable"


def verdicts(res: Analysis) -> list[Comparison]:
    """Every comparison, the primary pair's first, then each other algorithm's in display order;
    within a pair, "all" first, then its score kinds and families."""
    order = ["all", "kind:return", "kind:win_rate"] + [f"family:{f}" for f in sorted({t.env for t in res.data.tasks})]
    algos = res.data.algos

    def key(c: Comparison) -> tuple[int, int, int]:
        return (c.algo != res.primary, algos.index(c.algo), order.index(c.group) if c.group in order else len(order))

    return sorted(res.comparisons, key=key)


def primary(res: Analysis) -> Comparison | None:
    """The headline's comparison: the primary algorithm against the baseline on every task both ran."""
    return next((c for c in res.comparisons if c.algo == res.primary and c.group == "all"), None)


# --------------------------------------------------------------------------------------------
# pieces of text


def _ci(e: Estimate) -> str:
    return f"{e.point:.3f} [{e.lo:.3f}, {e.hi:.3f}]"


def _uniform(c: Comparison) -> bool:
    return len(set(c.budgets.values())) == 1


def _seeds(c: Comparison) -> str:
    lo, hi = c.seeds
    return f"{lo} seed{'s' if lo != 1 else ''} each" if lo == hi else f"{lo}-{hi} seeds per algorithm and task"


def _few(c: Comparison) -> str:
    """ "2 per algorithm; 5 needed" or "3 on a task; 5 needed"."""
    lo, hi = c.seeds
    return f"{lo} {'per algorithm' if lo == hi else 'on a task'}; {MIN_SEEDS} needed"


def _over(c: Comparison) -> str:
    """ "aggregated over 2 tasks (a, b) at 300,000 env steps", or each task with its own budget."""
    n = f"{len(c.tasks)} task{'s' if len(c.tasks) != 1 else ''}"
    if _uniform(c):
        return f"aggregated over {n} ({', '.join(c.tasks)}) at {next(iter(c.budgets.values())):,} env steps"
    return f"aggregated over {n} ({', '.join(f'{k} at {c.budgets[k]:,}' for k in c.tasks)} env steps)"


def _ratio_range(r: Reach) -> str:
    """The ratio's range where the edges of the algorithm's IQM band reach the target (upper edge
    first), e.g. "[0.80x, 1.25x]"; "beyond the budget" where the lower edge never does."""
    if not r.baseline_steps > 0:
        return ""
    hi = f"{r.late / r.baseline_steps:.2f}x" if r.late == r.late else "beyond the budget"
    return f"[{r.early / r.baseline_steps:.2f}x, {hi}]"


def _efficiency(c: Comparison) -> str:
    """The clause on sample efficiency (empty where there is no ratio)."""
    r = c.reach
    if r is None or not r.baseline_steps > 0:
        return ""
    if r.steps != r.steps:
        edge = (f" (the upper edge of its band does, at {r.early / r.baseline_steps:.2f}x {c.baseline}'s env steps)"
                if r.early == r.early and word(c) != "too few seeds" else "")
        return (f"; {c.algo}'s IQM curve does not reach {c.baseline}'s final IQM ({r.target:.3f}) within the "
                f"budget{edge}")
    if word(c) == "too few seeds":
        return (f"; {c.algo} needs {r.steps_ratio:.2f}x {c.baseline}'s env steps to reach {c.baseline}'s final IQM "
                "(a point estimate)")
    time = f" and {r.seconds_ratio:.2f}x its wall-clock time" if r.seconds_ratio == r.seconds_ratio else ""
    return (f"; {c.algo} needs {r.steps_ratio:.2f}x {_ratio_range(r)} {c.baseline}'s env steps{time} to reach "
            f"{c.baseline}'s final IQM ({r.target:.3f})")


def _caveats(c: Comparison) -> list[str]:
    return [f"{k} left out: {why}" for k, why in c.left_out.items()] + [f"{k}: {why}" for k, why in c.cut.items()]


def sentence(c: Comparison, confidence: float) -> str:
    """The headline, e.g. "marpo vs mappo, aggregated over 5 tasks (...) at 300,000 env steps, 5 seeds
    each: marpo is indistinguishable from mappo: P(marpo > mappo) = 0.452 [0.280, 0.628], IQM 0.658
    [0.634, 0.683] vs 0.660 [0.634, 0.685] (95% CIs); marpo needs 1.04x [0.94x, 1.26x] ...". With
    too few seeds: "too few seeds to tell (2 per algorithm; 5 needed): point estimates ..."."""
    a, b, w = c.algo, c.baseline, word(c)
    lead = f"{a} vs {b}, {_over(c)}, {_seeds(c)}: "
    if w == "too few seeds":
        said = (f"too few seeds to tell ({_few(c)}): point estimates P({a} > {b}) = {c.poi.point:.3f}, IQM "
                f"{c.iqm.point:.3f} vs {c.iqm_baseline.point:.3f}")
    elif w == "tied":
        said = (f"{a} and {b} tie: every run of one scored like every run of the other (P({a} > {b}) = 0.500, an "
                f"interval of no width; IQM {_ci(c.iqm)} vs {_ci(c.iqm_baseline)})")
    else:
        relation = {"better": "better than", "worse": "worse than", "indistinguishable": "indistinguishable from"}[w]
        said = (f"{a} is {relation} {b}: P({a} > {b}) = {_ci(c.poi)}, IQM {_ci(c.iqm)} vs {_ci(c.iqm_baseline)} "
                f"({round(100 * confidence)}% CIs)")
    caveats = _caveats(c)
    return lead + said + _efficiency(c) + (f" ({'; '.join(caveats)})" if caveats else "") + "."


def headline(res: Analysis) -> str:
    """Page 1's first sentence: the primary comparison, or why there is none."""
    c = primary(res)
    if c is not None:
        return sentence(c, res.confidence)
    d = res.data
    if len(d.algos) == 1:
        return f"One algorithm ({d.algos[0]}) in this study: nothing to compare it with (see the per-task table)."
    if res.baseline is None:
        iqms = ", ".join(f"{a} {_ci(res.aggregates[a]['IQM'])}" for a in d.algos if a in res.aggregates)
        return ("No baseline in this study, so no comparison (name one with --baseline)"
                + (f"; IQM over {len(d.agg_tasks)} tasks: {iqms}." if iqms else "."))
    why = pair_tasks(d, res.primary, res.baseline).left_out if res.primary else {}
    left = f" at the budget both ran ({'; '.join(f'{k} left out: {w}' for k, w in why.items())})" if why else ""
    return (f"No comparison of {res.primary} with {res.baseline}: they share no task with a normalised score that "
            f"some algorithm learns{left} (see the per-task tables and the notes).")


@dataclass(frozen=True)
class Row:
    """One comparison as a row of page 1's table (every cell already text)."""

    comparison: str
    tasks: str
    budget: str
    poi: str
    iqm: str  # both IQMs' point estimates and their difference
    verdict: str
    efficiency: str


COLUMNS = ("comparison", "tasks", "budget", "P(X > Y)", "IQM X vs Y", "verdict", "env steps to Y's final IQM")


def row(c: Comparison) -> Row:
    w = word(c)
    few = w == "too few seeds"
    budgets = sorted(set(c.budgets.values()))
    budget = "-".join(format_steps(b) for b in sorted({budgets[0], budgets[-1]}))
    tasks = ", ".join(c.tasks) if _uniform(c) else ", ".join(f"{k} ({format_steps(c.budgets[k])})" for k in c.tasks)
    r = c.reach
    if r is None or not r.baseline_steps > 0:
        eff = "–"
    elif r.steps != r.steps:
        eff = "not reached" + (f" {_ratio_range(r)}" if r.early == r.early and not few else "")
    else:
        eff = f"{r.steps_ratio:.2f}x" + (" (point)" if few else f" {_ratio_range(r)}")
    return Row(f"{c.algo} vs {c.baseline}", tasks, budget,
               f"{c.poi.point:.3f} (point)" if few else _ci(c.poi),
               f"{c.iqm.point:.3f} vs {c.iqm_baseline.point:.3f} ({c.iqm.point - c.iqm_baseline.point:+.3f})",
               f"too few seeds ({c.seeds[0]}; {MIN_SEEDS} needed)" if few else w, eff)


def table(res: Analysis) -> list[Row]:
    """Every comparison but the headline's, in :func:`verdicts` order."""
    head = primary(res)
    return [row(c) for c in verdicts(res) if c is not head]


def notes(res: Analysis) -> list[str]:
    """What the headline and the table rest on: how the primary pair is chosen, the evidence rule,
    multiple comparisons, the efficiency ratio, tasks left out."""
    d, vs = res.data, res.comparisons
    ci = round(100 * res.confidence)
    out = []
    if primary(res) is not None:
        out.append(f"Headline: {res.primary} against the baseline {res.baseline}, the first algorithm in the report's "
                   f"order ({SUBJECT} when the study has it) against {DEFAULT_BASELINE} by default (report --primary, "
                   "--baseline); each comparison aggregates the tasks its two algorithms both ran, each at the "
                   "budget both ran.")
    if vs:
        out.append(f"Evidence rule: better or worse only where the whole {ci}% CI of P(X > Y) lies above or below 0.5 "
                   f"and each algorithm has at least {MIN_SEEDS} seeds on every task compared (with fewer, the "
                   "stratified bootstrap's interval comes from a handful of resamples and says nothing: run "
                   "--seeds 5); tied: every run scored alike. Final score: the mean of the last "
                   f"{d.last_k} evaluation points in the last {FINAL_WINDOW:.0%} of the budget compared.")
    if any(c.reach is not None for c in vs):
        out.append("Env steps to Y's final IQM: X's env steps over Y's own, read off the two IQM curves on the "
                   "comparison's tasks (each as a fraction of its budget); [range]: where the edges of X's "
                   f"{ci}% band reach it, a band-crossing range, not a bootstrap CI of the ratio.")
    if len(vs) > 1:
        out.append(f"{len(vs)} comparisons, each at {ci}% confidence: about {len(vs) * (1 - res.confidence):.1f} of "
                   "them could read better or worse by chance alone (no correction for multiple comparisons).")
    head = primary(res)
    said: dict[str, list[Comparison]] = {}  # a caveat shared by several comparisons is said once
    for c in vs:
        if c.group == "all" and c is not head:
            for x in _caveats(c):
                said.setdefault(x, []).append(c)
    out += [f"{', '.join(c.algo for c in cs)} vs {cs[0].baseline}: {x}" for x, cs in said.items()]
    if d.unlearned:
        out.append(f"Not learned by any algorithm (left out of the aggregates and comparisons): "
                   f"{', '.join(d.unlearned)}.")
    left = [t.key for t in d.tasks if t.key not in d.agg_tasks and t.key not in d.unlearned]
    if left and d.agg_tasks:
        out.append(f"Not in the aggregate table (no normalisation bounds, or not run by every algorithm): "
                   f"{', '.join(left)}; comparisons keep the tasks their two algorithms both ran.")
    elif not d.agg_tasks and len(d.algos) > 1:
        out.append("No task is run by every algorithm with a normalised score: no aggregate table (see the "
                   "per-task tables).")
    return out
