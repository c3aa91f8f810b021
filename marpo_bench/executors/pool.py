"""The local executor: runs in this process (one worker) or in one pool of spawned processes.

Spawn, not fork, because JAX and torch threads do not survive fork. Each run uses ``threads`` torch
threads (default 1, ``DEFAULT_THREADS``) whatever the number of workers, so a run's numbers do not
depend on ``--workers``; every process writes its own runs into the store (a local filesystem).
The same pool trains the regression check's runs (``deterministic=True``: one thread and
deterministic torch algorithms, in every worker).

When a pool worker dies, Python's pool stops the other workers too: their runs (marked
``interrupted`` by their SIGTERM handler) are resubmitted without using up an attempt; the run
whose process died (still ``running`` on disk) is the one that failed, and its message says how
the process ended (the signal, e.g. the OOM killer's SIGKILL, or the exit code: the pool's process
with the writer pid its run.json records). A failed attempt that another may not repeat is retried
from its last checkpoint (``common.should_retry``), then the parent records it ``failed``. Ctrl-C
stops the pool: the runs in flight are marked ``interrupted`` and re-running continues them. With
one worker the runs train in this process: killing it kills the command (``status`` then shows
the run ``interrupted``; re-running continues it from its last checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from rich.console import Console

from marpo_bench import provenance, store
from marpo_bench.algos import get_algorithm
from marpo_bench.config import DEFAULT_THREADS, RunSpec, one_line
from marpo_bench.executors.common import GridBars, mark_run, should_retry
from marpo_bench.faults import Fault, faults_from_env
from marpo_bench.train import RunResult, train_run, train_seed_group

Job = tuple[RunSpec, str]  # a run and the study it goes to


def set_deterministic() -> None:
    """The settings every regression run trains under: one torch thread (reductions then do not
    depend on the core count) and deterministic torch algorithms (CPU kernels here have them)."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """:func:`set_deterministic` for the duration, then the previous settings (in-process runs)."""
    import torch

    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    set_deterministic()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` torch intra-op threads for the duration, then the previous count (in-process runs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_progress_queue: Any = None
_in_run = False  # whether this pool worker is training a run now


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies (a ``kill -9`` of the command leaves no worker)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM in a pool worker: interrupt the run (it is marked ``interrupted``), or leave at once
    when idle (the pool's queue locks must not be held by an interrupted process)."""
    if not _in_run:
        os._exit(0)
    raise KeyboardInterrupt


def _worker_init(threads: int, progress_queue: Any, deterministic: bool) -> None:
    """Pool worker: torch threads (or the deterministic settings); Ctrl-C is the parent's to handle
    (it sends SIGTERM, which becomes KeyboardInterrupt here so the run is marked interrupted)."""
    import torch

    global _progress_queue
    if deterministic:
        set_deterministic()
    else:
        torch.set_num_threads(threads)
    _progress_queue = progress_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    _die_with_parent()
    provenance.code_provenance()  # the commit of the code this worker imports now, not of a later HEAD


def _train_unit(specs: Sequence[RunSpec], results: Path, study: str, progress: Any, checkpoint_every: int | None,
                faults: tuple[Fault, ...] | None, attempt: int, loggers: tuple[str, ...]) -> list[RunResult]:
    """Train one unit: a run on its own, or the seeds of a group as one batched learner."""
    if len(specs) == 1:
        return [train_run(specs[0], results, study, progress=progress(specs[0].run_id),
                          checkpoint_every=checkpoint_every, faults=faults, attempt=attempt, loggers=loggers)]
    return train_seed_group(list(specs), results, study, progress, checkpoint_every=checkpoint_every, faults=faults,
                            attempt=attempt, loggers=loggers)


def _queue_progress(run_id: str) -> Any:
    """A pool worker's progress callback for one run: ``(done, total[, last_eval])`` to the parent's
    bars through the progress queue."""
    return lambda done, total, last_eval=None: _progress_queue.put((run_id, done, total, last_eval))


def _worker(specs: tuple[RunSpec, ...], results: str, study: str, checkpoint_every: int | None,
            faults: tuple[Fault, ...], attempt: int, loggers: tuple[str, ...] = ()) -> list[RunResult]:
    global _in_run

    _in_run = True
    t0 = time.perf_counter()
    try:
        out = _train_unit(specs, Path(results), study, _queue_progress, checkpoint_every, faults, attempt, loggers)
        return [dataclasses.replace(res, seconds=time.perf_counter() - t0) for res in out]
    except KeyboardInterrupt:  # the parent is stopping the pool; the run is marked interrupted
        os._exit(130)
    finally:
        _in_run = False


def seed_units(jobs: Sequence[Job], vectorize_seeds: bool) -> list[tuple[tuple[RunSpec, ...], str]]:
    """The units of work: each job alone, or (``vectorize_seeds``) the seeds of one (study,
    algorithm, task, config, budget, device) together where the algorithm has a batched learner
    (``batched`` not None; the others stay one run per unit). Units keep the jobs' order."""
    groups: dict[tuple, list[RunSpec]] = {}
    for spec, study in jobs:
        batched = vectorize_seeds and getattr(get_algorithm(spec.algo), "batched", None) is not None
        key = ((study, spec.algo, spec.env, spec.task, spec.steps, spec.overrides, spec.device) if batched
               else (study, spec.run_id))
        groups.setdefault(key, []).append(spec)
    return [(tuple(specs), key[0]) for key, specs in groups.items()]


def _status(results: Path, study: str, spec: RunSpec) -> str | None:
    with contextlib.suppress(store.StoreError):
        return store.run_status(store.run_dir(results, study, spec.run_id))
    return None


def death_message(exitcode: int | None) -> str | None:
    """How a training process ended, for its run's record (``Process.exitcode``: minus the signal
    number when a signal killed it). SIGKILL is the kernel's OOM killer's signal, so the message
    asks about memory first. None when it is unknown or not a death (still running, or exit 0)."""
    if not exitcode:
        return None
    if exitcode > 0:
        return f"the training process exited with code {exitcode} (a crash)"
    num = -exitcode
    try:
        name = signal.Signals(num).name
    except ValueError:
        name = "a signal"
    msg = f"the training process was killed by {name} (signal {num})"
    if num == signal.SIGKILL:
        msg += ": out of memory? (the kernel's OOM killer sends SIGKILL; see `dmesg`) or killed by hand"
    return msg


def _dead_worker_message(results: Path, study: str, spec: RunSpec, exitcodes: dict[int, int | None]) -> str:
    """Why a run whose pool worker died failed: how that worker ended (:func:`death_message`), found
    through the writer pid in its run.json (the worker writes it when the run starts) among the
    broken pool's processes (``exitcodes``: pid -> exit code); the generic message otherwise."""
    with contextlib.suppress(store.StoreError):
        writer = store.read_run_json(store.run_dir(results, study, spec.run_id)).get("writer") or {}
        if writer.get("host") == store.writer_info()["host"] and writer.get("pid") in exitcodes:
            msg = death_message(exitcodes[writer["pid"]])
            if msg:
                return msg
    return "a worker process died (crash or killed)"


def _exitcodes_after_shutdown(pool: ProcessPoolExecutor) -> dict[int, int | None]:
    """Shut a broken pool down (its workers joined) and return each worker's exit code by pid.
    The handles are taken first: shutdown drops them (private, as in :func:`stop_pool`)."""
    procs = dict(getattr(pool, "_processes", None) or {})
    pool.shutdown(wait=True)
    return {pid: p.exitcode for pid, p in procs.items()}


def stop_pool(pool: ProcessPoolExecutor | None, grace: float = 10.0) -> None:
    """Stop a pool's workers: SIGTERM (their runs are marked interrupted), then SIGKILL."""
    if pool is None:
        return
    procs = list(getattr(pool, "_processes", {}).values())  # private, but the only handle on them
    for p in procs:
        with contextlib.suppress(OSError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)
    pool.shutdown(wait=False, cancel_futures=True)


def run_local(specs: Sequence[RunSpec], results: Path, study: str, workers: int, console: Console, *,
              retries: int = 1, checkpoint_every: int | None = None,
              faults: tuple[Fault, ...] | None = None, threads: int = DEFAULT_THREADS,
              loggers: tuple[str, ...] = (), vectorize_seeds: bool = False) -> list[RunResult]:
    """Run every spec of one study (complete ones are skipped, incomplete ones resume): :func:`run_jobs`."""
    return run_jobs([(s, study) for s in specs], results, workers, console, retries=retries,
                    checkpoint_every=checkpoint_every, faults=faults, threads=threads, loggers=loggers,
                    vectorize_seeds=vectorize_seeds)


def run_jobs(jobs: Sequence[Job], results: Path, workers: int, console: Console, *, retries: int = 1,
             checkpoint_every: int | None = None, faults: tuple[Fault, ...] | None = None,
             threads: int = DEFAULT_THREADS, deterministic: bool = False,
             loggers: tuple[str, ...] = (), vectorize_seeds: bool = False) -> list[RunResult]:
    """Train every ``(spec, study)`` into ``results/study`` with a grid progress bar and one bar per
    active run: in this process, in order (``workers <= 1``), or in one pool of ``workers`` spawned
    processes, each run with ``threads`` torch threads, or under :func:`set_deterministic`
    (``deterministic``), sending metrics rows to ``loggers`` too. ``vectorize_seeds``: the seeds
    of one (algorithm, task, config) train as one batched learner where the algorithm has one
    (:func:`seed_units`; each seed is still its own run). Failed attempts are retried (module
    doc); the runs of a unit to retry are retried together. Returns one RunResult per job, in the
    order they finished, each with the seconds its last attempt took."""
    faults = faults_from_env() if faults is None else faults
    units = seed_units(jobs, vectorize_seeds)
    out: list[RunResult] = []

    def settle(specs: Sequence[RunSpec], study: str, attempt: int, results_: Sequence[RunResult],
               crashed: Sequence[bool]) -> tuple[RunSpec, ...]:
        """Finish each run of a unit or pick it for another attempt; returns those to retry."""
        again = []
        for spec, res, crash in zip(specs, results_, crashed, strict=True):
            if should_retry(res, attempt, retries, console):
                again.append(spec)
                continue
            if crash:
                mark_run(results, study, spec, "failed", res.message)
            out.append(bars.finish(res))
        return tuple(again)

    with GridBars(console, len(jobs)) as bars:
        if workers <= 1:
            for specs, study in units:
                attempt = 1
                while specs:
                    t0 = time.perf_counter()
                    with deterministic_torch() if deterministic else torch_threads(threads):
                        res = _train_unit(specs, results, study, bars.callback, checkpoint_every, faults, attempt,
                                          loggers)
                    res = [dataclasses.replace(r, seconds=time.perf_counter() - t0) for r in res]
                    specs = settle(specs, study, attempt, res, [False] * len(res))
                    attempt += 1
            return out

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        todo = deque((specs, study, 1) for specs, study in units)
        running: dict[Future, tuple[tuple[RunSpec, ...], str, int]] = {}
        pool: ProcessPoolExecutor | None = None
        exitcodes: dict[int, int | None] = {}  # the last broken pool's workers: pid -> exit code

        def drain() -> None:
            while True:
                try:
                    bars.update(*q.get_nowait())
                except queue_mod.Empty:
                    return

        try:
            while todo or running:
                if pool is None:
                    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                               initargs=(threads, q, deterministic))
                while todo and len(running) < workers:  # submit what can start now: a crash loses little
                    specs, study, attempt = todo.popleft()
                    fut = pool.submit(_worker, specs, str(results), study, checkpoint_every, faults, attempt, loggers)
                    running[fut] = (specs, study, attempt)
                done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                drain()
                if any(isinstance(f.exception(), BrokenProcessPool) for f in done if not f.cancelled()):
                    # A worker died: the pool fails every future, then stops the other workers.
                    # Wait for them (their runs get marked interrupted), then sort out the futures.
                    exitcodes = _exitcodes_after_shutdown(pool)
                    pool = None
                    done = {f for f in running if f.done()}
                for fut in done:
                    specs, study, attempt = running.pop(fut)
                    try:
                        res = fut.result()
                        crashed = [False] * len(specs)
                    except BrokenProcessPool:
                        status = {s.run_id: _status(results, study, s) for s in specs}
                        live = tuple(s for s in specs if status[s.run_id] != "complete")
                        if live and all(status[s.run_id] == "interrupted" for s in live):
                            todo.appendleft((live, study, attempt))  # stopped because another worker died
                            for s in specs:
                                if s not in live:
                                    out.append(bars.finish(RunResult(s.run_id, "complete")))
                            continue
                        res = [RunResult(s.run_id, "complete") if status[s.run_id] == "complete" else
                               RunResult(s.run_id, "failed", _dead_worker_message(results, study, s, exitcodes),
                                         retryable=True)
                               for s in specs]
                        crashed = [r.status == "failed" for r in res]
                    except Exception as exc:  # could not even report: e.g. an unpicklable result
                        res = [RunResult(s.run_id, "failed", one_line(exc), retryable=True) for s in specs]
                        crashed = [True] * len(specs)
                    again = settle(specs, study, attempt, res, crashed)
                    if again:
                        todo.appendleft((again, study, attempt + 1))
        except KeyboardInterrupt:
            stop_pool(pool)
            pool = None
            for specs, study, _ in running.values():
                for spec in specs:
                    if _status(results, study, spec) == "running":
                        mark_run(results, study, spec, "interrupted", "interrupted by the user")
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            drain()
    return out
