"""What both executors share: the grid's progress bars, the retry rule, and marking a run whose
own process could not (it died, or was stopped)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from marpo_bench import provenance, store
from marpo_bench.config import RunSpec, format_steps
from marpo_bench.train import RunResult


class RunCount(ProgressColumn):
    """Runs done of the grid (``3/10``); on a run's bar, its env steps and, once it has been
    evaluated, its last evaluation return: ``1.2M/2M  eval -21.3``."""

    def render(self, task: Task) -> Text:
        if not task.fields.get("run"):
            return Text(f"{task.completed:.0f}/{task.total:.0f}" if task.total is not None else "")
        text = f"{format_steps(task.completed)}/{format_steps(task.total or 0)}"
        value = task.fields.get("eval")
        if value is not None:
            text += f"  eval {value:.3g}" if abs(value) < 1000 else f"  eval {value:.0f}"
        return Text(text)


class GridBars:
    """The grid bar (every planned run, skipped ones included) and one bar per active run, which
    shows the run's env steps and its last evaluation return."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.prog = Progress(
            TextColumn("{task.description}"), BarColumn(), RunCount(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
        )
        self.grid = self.prog.add_task("[bold]grid", total=total)
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> GridBars:
        self.prog.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prog.__exit__(*exc)

    def update(self, run_id: str, done: int, total: int, last_eval: float | None = None) -> None:
        """A run's progress: env steps done of its budget, and its last evaluation return when the
        message carries one (None: unchanged)."""
        if run_id not in self.bars:
            self.bars[run_id] = self.prog.add_task(f"  {run_id}", total=total, run=True, eval=None)
        self.prog.update(self.bars[run_id], completed=done)
        if last_eval is not None:
            self.set_eval(run_id, last_eval)

    def set_eval(self, run_id: str, value: float) -> None:
        """Show ``value`` as the run's last evaluation return (a run without a bar yet is skipped)."""
        if run_id in self.bars and value == value:
            self.prog.update(self.bars[run_id], eval=float(value))

    def callback(self, run_id: str) -> Callable[..., None]:
        """The run's progress callback: ``(done, total)``, or ``(done, total, last_eval)`` after an
        evaluation."""
        return lambda done, total, last_eval=None: self.update(run_id, done, total, last_eval)

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
