"""What both executors share: the grid's progress bars, the retry rule, and marking a run whose
own process could not (it died, or was stopped)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from marpo_bench import provenance, store
from marpo_bench.config import RunSpec
from marpo_bench.train import RunResult


class GridBars:
    """The grid bar (every planned run, skipped ones included) and one bar per active run."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.prog = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
        )
        self.grid = self.prog.add_task("[bold]grid", total=total)
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> GridBars:
        self.prog.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prog.__exit__(*exc)

    def update(self, run_id: str, done: int, total: int) -> None:
        if run_id not in self.bars:
            self.bars[run_id] = self.prog.add_task(f"  {run_id}", total=total)
        self.prog.update(self.bars[run_id], completed=done)

    def callback(self, run_id: str) -> Callable[[int, int], None]:
        return lambda done, total: self.update(run_id, done, total)

    def finish(self, res: RunResult) -> RunResult:
        if res.run_id in self.bars:
            self.prog.remove_task(self.bars.pop(res.run_id))
        self.prog.advance(self.grid)
        if res.status == "failed":
            self.console.print(f"[red]run {res.run_id} failed:[/red] {res.message}", highlight=False)
        return res


def should_retry(res: RunResult, attempt: int, retries: int, console: Console) -> bool:
    """Whether to run a failed attempt again (and say so)."""
    if res.status != "failed" or not res.retryable or attempt > retries:
        return False
    console.print(f"[yellow]run {res.run_id} failed ({res.message}); retry {attempt}/{retries} "
                  f"from its last checkpoint[/yellow]", highlight=False)
    return True


def mark_run(results: Path, study: str, spec: RunSpec, status: str, message: str,
             record: dict | None = None) -> None:
    """Set the status of a run whose own process could not (it died, or was stopped); complete
    runs are left alone (``store.mark_run``)."""
    base = {"run_id": spec.run_id, "algo": spec.algo, "env": spec.env, "task": spec.task, "seed": spec.seed,
            "budget": spec.steps, "overrides": [list(p) for p in spec.overrides]}
    store.mark_run(store.run_dir(results, study, spec.run_id), base, status, message, provenance.now(), record)
