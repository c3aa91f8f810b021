"""Executors: run a grid of RunSpecs and show progress. ``local`` = this process (1 worker) or a
pool of spawned processes (several workers; spawn, not fork, because JAX and torch threads do not
survive fork)."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from marpo_bench.config import RunSpec
from marpo_bench.train import RunResult, train_run


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
    )


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker(spec: RunSpec, results: str, study: str, q: Any) -> RunResult:
    def report(done: int, total: int) -> None:
        q.put((spec.run_id, done, total))

    return train_run(spec, Path(results), study, progress=report)


def run_local(specs: list[RunSpec], results: Path, study: str, workers: int, console: Console) -> list[RunResult]:
    """Run every spec (skipping complete ones inside ``train_run``) with a grid progress bar and
    one bar per active run. Returns one RunResult per spec."""
    out: list[RunResult] = []
    with _progress_bar(console) as prog:
        grid = prog.add_task("[bold]grid", total=len(specs))
        bars: dict[str, int] = {}

        def on_progress(run_id: str, done: int, total: int) -> None:
            if run_id not in bars:
                bars[run_id] = prog.add_task(f"  {run_id}", total=total)
            prog.update(bars[run_id], completed=done)

        def finish(res: RunResult) -> None:
            out.append(res)
            if res.run_id in bars:
                prog.remove_task(bars.pop(res.run_id))
            prog.advance(grid)
            if res.status == "failed":
                console.print(f"[red]run {res.run_id} failed:[/red] {res.message}")

        if workers <= 1:
            for spec in specs:
                finish(train_run(spec, results, study,
                                 progress=lambda d, t, rid=spec.run_id: on_progress(rid, d, t)))
            return out

        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            q = manager.Queue()
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                       initargs=(threads,))
            try:
                owner: dict[Future, RunSpec] = {pool.submit(_worker, s, str(results), study, q): s for s in specs}
                futures: set[Future] = set(owner)
                while futures:
                    done, futures = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                    while True:
                        try:
                            on_progress(*q.get_nowait())
                        except queue_mod.Empty:
                            break
                    for f in done:
                        try:
                            finish(f.result())
                        except Exception as exc:  # a worker died before it could record the run
                            finish(RunResult(owner[f].run_id, "failed", f"{type(exc).__name__}: {exc}"))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    return out
