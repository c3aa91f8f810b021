"""The regression check: validate a request once, re-train what it needs, judge, print."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from marpo_bench import provenance, store
from marpo_bench.executors.pool import Job
from marpo_bench.regress.compare import (
    CONFIDENCE,
    DEFAULT_TOLERANCE,
    SCORE_KINDS,
    Comparison,
    Difference,
    ScoreData,
    Study,
    check_budgets,
    compare_exact,
    compare_scores,
    identical,
    study_scores,
)
from marpo_bench.regress.reference import Reference, exact_is_binding, load_reference, machine_differences
from marpo_bench.regress.suites import EXACT_STUDY, SUITE_STUDY, RegressError, Suite, get_suite, train_jobs

MODES = ("exact", "stat", "both")
EXIT_OK, EXIT_WORSE, EXIT_BAD_INPUT, EXIT_CHANGED = 0, 1, 2, 3


@dataclass
class RegressResult:
    """Everything a regression check found; ``exit_code`` follows the module doc."""

    exit_code: int = EXIT_OK
    differences: list[Difference] = field(default_factory=list)
    exact_checked: bool = False
    exact_binding: bool = True  # False: the reference is from another CPU kind / versions (see exact_is_binding)
    comparisons: list[Comparison] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)  # algo -> better / same / worse / failed
    identical: dict[str, str] = field(default_factory=dict)  # algo -> yes / no / n/a (stat re-run vs reference)
    failed: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _empty_dir_or_absent(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RegressError(f"{what} {store.show_path(path)} exists and is not empty; give a new directory "
                           f"(runs already there would be reused instead of re-trained)")


@dataclass
class Request:
    """A validated check: the arguments, and the reference (and candidate) read once."""

    reference: Path
    suite: Suite
    mode: str
    tolerance: float
    workers: int
    out: Path | None
    stored: Reference
    candidate: Study | None = None
    candidate_scores: ScoreData | None = None


def validate_request(reference: Path, suite_name: str, mode: str, candidate: Path | None, tolerance: float,
                     workers: int, out: Path | None) -> Request:
    """Every check on the arguments and the stored reference, before anything trains (RegressError /
    StoreError with one line). The studies read here are the ones the check uses."""
    if mode not in MODES:
        raise RegressError(f"unknown --mode {mode!r}; valid: {', '.join(MODES)}")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise RegressError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    if workers <= 0:
        raise RegressError(f"--workers must be positive, got {workers}")
    if candidate is not None and mode == "exact":
        raise RegressError("--candidate is a study for --mode stat (or both); exact mode re-trains its slice")
    suite = get_suite(suite_name)
    req = Request(Path(reference), suite, mode, tolerance, workers, out, load_reference(reference, suite))
    if candidate is not None:
        req.candidate = Study.read(candidate)  # StoreError: missing, empty, other schema version
        req.candidate_scores = study_scores(req.candidate, suite, require_all=True)
    if out is not None:
        _empty_dir_or_absent(out, "--out")
    return req


def run_regress(reference: Path, suite_name: str = "smoke", mode: str = "both", *, candidate: Path | None = None,
                tolerance: float = DEFAULT_TOLERANCE, workers: int = 1, out: Path | None = None,
                console: Console | None = None) -> RegressResult:
    """Validate, then check (package doc). Raises RegressError / StoreError on bad input before any training."""
    return check(validate_request(reference, suite_name, mode, candidate, tolerance, workers, out), console)


def check(req: Request, console: Console | None = None) -> RegressResult:
    """Run a validated check: re-train what it needs, compare, print the verdict (package doc)."""
    console = console or Console()
    suite, mode, workers = req.suite, req.mode, req.workers
    res = RegressResult()
    here = provenance.machine_kind()
    there = req.stored.manifest.get("machine") or {}
    env_notes = machine_differences(there, here)
    with contextlib.ExitStack() as stack:
        work = Path(req.out) if req.out is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="marpo-bench-regress-")))
        work.mkdir(parents=True, exist_ok=True)
        jobs: list[Job] = []
        if mode in ("exact", "both"):
            jobs += [(s, EXACT_STUDY) for s in suite.exact_specs()]
            console.print(f"[bold]exact[/bold]: re-training the slice of suite {suite.name} "
                          f"({len(suite.exact_specs())} runs: {suite.exact_task}, seed {suite.exact_seed}, "
                          f"{suite.exact_steps:,} env steps)", highlight=False)
        if mode in ("stat", "both") and req.candidate is None:
            jobs += [(s, SUITE_STUDY) for s in suite.specs()]
            console.print(f"[bold]stat[/bold]: re-training suite {suite.name} ({len(suite.specs())} runs)",
                          highlight=False)
        if jobs:
            console.print(f"training {len(jobs)} runs with {workers} worker{'s' if workers > 1 else ''}",
                          highlight=False)
            t0 = time.perf_counter()
            outcomes = train_jobs(jobs, work, workers, console)
            res.timings["train"] = time.perf_counter() - t0
            exact_ids = {s.run_id for s, study in jobs if study == EXACT_STUDY}
            for o in outcomes:
                if o.status != "complete" and o.run_id in exact_ids:
                    res.failed.setdefault(o.run_id.split("__", 1)[0], []).append(o.run_id)
        if mode in ("exact", "both"):
            res.exact_checked = True
            res.differences = compare_exact(req.stored.exact_runs, Study.read(work / EXACT_STUDY, missing_ok=True),
                                            [s.run_id for s in suite.exact_specs()])
        if mode in ("stat", "both"):
            t0 = time.perf_counter()
            if req.candidate is None:
                cand = Study.read(work / SUITE_STUDY)
                cand_scores = study_scores(cand, suite, require_all=False)
            else:
                cand, cand_scores = req.candidate, req.candidate_scores
            assert cand_scores is not None
            ref_scores = study_scores(req.stored.suite_runs, suite, require_all=True)
            check_budgets(ref_scores, cand_scores, suite)
            res.comparisons = compare_scores(ref_scores, cand_scores, suite.algos, req.tolerance)
            for algo, runs in cand_scores.failed.items():
                res.failed.setdefault(algo, []).extend(runs)
            res.notes += cand_scores.notes
            res.identical = identical(req.stored.suite_runs, cand, suite)
            for algo in suite.algos:
                kinds = [c.verdict for c in res.comparisons if c.algo == algo]
                if cand_scores.failed.get(algo) or not kinds:
                    res.verdicts[algo] = "failed"
                elif "worse" in kinds:
                    res.verdicts[algo] = "worse"
                elif "better" in kinds:
                    res.verdicts[algo] = "better"
                else:
                    res.verdicts[algo] = "same"
            res.timings["statistics"] = time.perf_counter() - t0
    res.exact_binding = exact_is_binding(there, here)
    worse = any(v in ("worse", "failed") for v in res.verdicts.values()) or any(res.failed.values())
    if worse:
        res.exit_code = EXIT_WORSE
    elif res.differences and res.exact_binding:
        res.exit_code = EXIT_CHANGED
    if res.differences and not res.exact_binding:
        why = "; ".join(env_notes) if env_notes else "the reference does not record its CPU kind"
        res.notes.append(f"this machine differs from the reference's ({why}): float kernels may round differently "
                         f"there, so the exact differences above are shown but do not fail the check (the stat "
                         f"check decides); for a binding exact check on this machine kind, re-record the "
                         f"reference here with --update")
    print_result(res, req.suite, req.tolerance, console)
    return res


# --------------------------------------------------------------------------------------------
# output


_STYLE = {"better": "green", "same": "default", "worse": "bold red", "failed": "bold red"}


def print_result(res: RegressResult, suite: Suite, tolerance: float, console: Console) -> None:
    """Exact differences, then the stat table of verdicts, then a one-line summary."""
    if res.exact_checked:
        if res.differences:
            first = res.differences[0]
            head = ("[bold yellow]behaviour changed[/bold yellow] (exact)" if res.exact_binding else
                    "[yellow]differs from the reference[/yellow] (exact, another machine kind: not binding)")
            console.print(f"{head}: {len(res.differences)} of "
                          f"{len(suite.exact_specs())} runs differ from the reference; first: {first.describe()}",
                          highlight=False, soft_wrap=True)
            for d in res.differences[1:]:
                console.print(f"  also: {d.describe()}", highlight=False, soft_wrap=True)
        else:
            console.print(f"exact: all {len(suite.exact_specs())} runs of the slice equal the reference bit for bit",
                          highlight=False)
    if res.verdicts:
        table = Table(title=f"regression vs reference (suite {suite.name}; tolerance {tolerance:g}, "
                            f"IQM and P with {CONFIDENCE:.0%} CIs)", header_style="bold")
        for col in ("algo", "score", "reference IQM", "candidate IQM", "Δ IQM", "P(cand > ref)", "identical",
                    "verdict"):
            table.add_column(col, justify="left" if col in ("algo", "score", "verdict") else "right")
        for algo in suite.algos:
            rows = [c for c in res.comparisons if c.algo == algo]
            verdict = res.verdicts.get(algo, "failed")
            if not rows:
                table.add_row(algo, "-", "-", "-", "-", "-", res.identical.get(algo, "-"),
                              f"[{_STYLE['failed']}]failed[/]")
            for i, c in enumerate(rows):
                table.add_row(
                    algo if i == 0 else "", c.kind, str(c.ref_iqm), str(c.cand_iqm), f"{c.delta:+.3f}", str(c.poi),
                    res.identical.get(algo, "-") if i == 0 else "",
                    f"[{_STYLE[c.verdict]}]{c.verdict}[/]" + (f" -> [{_STYLE[verdict]}]{verdict}[/]"
                                                              if i == len(rows) - 1 and verdict != c.verdict else ""))
        console.print(table)
        tasks = suite.task_keys()
        detail = Table(title="per task: mean normalised score over seeds (reference -> candidate)", header_style="bold")
        detail.add_column("algo")
        for t in tasks:
            detail.add_column(f"{t} final", justify="right")
            detail.add_column(f"{t} AUC", justify="right")
        for algo in suite.algos:
            by_kind = {c.kind: c for c in res.comparisons if c.algo == algo}
            if not by_kind:
                continue
            cells = []
            for i in range(len(tasks)):
                for kind in SCORE_KINDS:
                    c = by_kind[kind]
                    cells.append(f"{c.ref_task_means[i]:.3f} -> {c.cand_task_means[i]:.3f}")
            detail.add_row(algo, *cells)
        console.print(detail)
    for algo, runs in res.failed.items():
        console.print(f"[bold red]failed[/bold red]: {algo}: {', '.join(runs)}", highlight=False, soft_wrap=True)
    for note in dict.fromkeys(res.notes):
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if res.exit_code == EXIT_WORSE:
        worse = [a for a, v in res.verdicts.items() if v in ("worse", "failed")] or sorted(res.failed)
        console.print(f"[bold red]FAIL[/bold red]: worse than the reference: {', '.join(worse)}", highlight=False)
    elif res.exit_code == EXIT_CHANGED:
        console.print("[bold yellow]CHANGED[/bold yellow]: behaviour changed, nothing judged worse; if the change "
                      "is intended, record it: marpo-bench regress --update --reason \"...\"", highlight=False)
    else:
        console.print("[bold green]PASS[/bold green]", highlight=False)
    if res.timings:
        console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.timings.items()), highlight=False)
