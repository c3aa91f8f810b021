"""Executors: run a grid of RunSpecs with retries and a grid progress bar; the study's plan and status.

``local``: this process (1 worker) or a pool of spawned processes (several workers; spawn, not
fork, because JAX and torch threads do not survive fork); each run uses ``threads`` torch threads
(default 1, ``DEFAULT_THREADS``), whatever the number of workers, so a run's numbers do not depend
on ``--workers``. Every process writes its own runs into
the store (a local filesystem).

``ray``: every run is a Ray task (``cpus_per_run`` CPUs each). Workers never touch the results
directory: they send run.json records, metrics rows, checkpoints and progress through a Ray queue
to the driver, which alone writes the store, so the cluster needs no shared filesystem. The
driver also ships each run's last checkpoint with its task, so a retry or a re-run continues
where the previous attempt stopped.

When a local pool worker dies, Python's pool stops the other workers too: their runs (marked
``interrupted`` by their SIGTERM handler) are resubmitted without using up an attempt; the run
whose process died (still ``running`` on disk) is the one that failed.

Retries (both executors): a run that failed for a reason another attempt may not repeat (an
exception other than a NaN, a bad config or a store problem; a crashed worker process) is retried
up to ``retries`` times from its last checkpoint, then recorded ``failed`` with its message; the
grid goes on. Ctrl-C stops the grid: the runs in flight are marked ``interrupted`` (all writes
are atomic, so nothing is half-written) and re-running the command continues them.

Ray hygiene: without an address, a local Ray instance is started with its temp/session directory
in a fresh ``marpo-ray-*`` directory under ``$RAY_TMPDIR`` or the system temp directory
(``$TMPDIR``), token auth off (``RAY_AUTH_MODE=disabled``, else Ray 2.60 writes ``~/.ray``) and
usage stats off; it is shut down at the end. A small reaper process (its own session, so a
Ctrl-C or a process-group kill does not reach it) kills the Ray processes this command started
and removes that directory even if the command is killed with SIGKILL (Ray leaves its dashboard
and runtime-env agents running otherwise).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from marpo_bench import store
from marpo_bench.config import DEFAULT_THREADS, RunSpec
from marpo_bench.train import (
    Fault,
    RunResult,
    _one_line,
    code_provenance,
    faults_from_env,
    remove_stale_temp_files,
    train_run,
    writer_info,
)

PLAN_JSON = "plan.json"
EXECUTORS = ("local", "ray")


# ----------------------------------------------------------------------------------------------
# progress


class _Bars:
    """The grid bar (every planned run, skipped ones included) and one bar per active run."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.prog = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
        )
        self.grid = self.prog.add_task("[bold]grid", total=total)
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
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


def _retry(res: RunResult, attempt: int, retries: int, console: Console) -> bool:
    """Whether to run a failed attempt again (and say so)."""
    if res.status != "failed" or not res.retryable or attempt > retries:
        return False
    console.print(f"[yellow]run {res.run_id} failed ({res.message}); retry {attempt}/{retries} "
                  f"from its last checkpoint[/yellow]", highlight=False)
    return True


def _mark(results: Path, study: str, spec: RunSpec, status: str, message: str,
          record: dict | None = None) -> None:
    """Set the status of a run whose own process could not (it died, or was stopped). Leaves
    complete runs alone; builds a minimal record when the run never wrote one."""
    path = store.run_dir(results, study, spec.run_id)
    with contextlib.suppress(store.StoreError):
        if record is None and store.run_status(path) is not None:
            record = store.read_run_json(path)
    if record is not None and record.get("status") == "complete":
        return
    base = {"run_id": spec.run_id, "algo": spec.algo, "env": spec.env, "task": spec.task, "seed": spec.seed,
            "budget": spec.steps, "overrides": [list(p) for p in spec.overrides]}
    path.mkdir(parents=True, exist_ok=True)
    store.write_run_json(path, {**base, **(record or {}), "status": status, "message": message,
                                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                                "writer": writer_info()})


# ----------------------------------------------------------------------------------------------
# local


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


def _worker_init(threads: int, progress_queue: Any) -> None:
    """Pool worker: torch threads; Ctrl-C is the parent's to handle (it sends SIGTERM, which
    becomes KeyboardInterrupt here so the run is marked interrupted)."""
    import torch

    global _progress_queue
    torch.set_num_threads(threads)
    _progress_queue = progress_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    _die_with_parent()
    code_provenance()  # the commit of the code this worker imports now, not of a later HEAD


def _worker(spec: RunSpec, results: str, study: str, checkpoint_every: int | None,
            faults: tuple[Fault, ...], attempt: int) -> RunResult:
    global _in_run

    def report(done: int, total: int) -> None:
        _progress_queue.put((spec.run_id, done, total))

    _in_run = True
    try:
        return train_run(spec, Path(results), study, progress=report, checkpoint_every=checkpoint_every,
                         faults=faults, attempt=attempt)
    except KeyboardInterrupt:  # the parent is stopping the pool; the run is marked interrupted
        os._exit(130)
    finally:
        _in_run = False


def _status(results: Path, study: str, spec: RunSpec) -> str | None:
    with contextlib.suppress(store.StoreError):
        return store.run_status(store.run_dir(results, study, spec.run_id))
    return None


def _stop_pool(pool: ProcessPoolExecutor | None, grace: float = 10.0) -> None:
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


def run_local(specs: list[RunSpec], results: Path, study: str, workers: int, console: Console, *,
              retries: int = 1, checkpoint_every: int | None = None,
              faults: tuple[Fault, ...] | None = None, threads: int = DEFAULT_THREADS) -> list[RunResult]:
    """Run every spec (complete ones are skipped, incomplete ones resume) with a grid progress bar
    and one bar per active run, each run with ``threads`` torch threads; failed attempts are retried
    (see the module doc). Returns one RunResult per spec."""
    faults = faults_from_env() if faults is None else faults
    out: list[RunResult] = []
    with _Bars(console, len(specs)) as bars:
        if workers <= 1:
            for spec in specs:
                attempt = 1
                while True:
                    with torch_threads(threads):
                        res = train_run(spec, results, study, progress=bars.callback(spec.run_id),
                                        checkpoint_every=checkpoint_every, faults=faults, attempt=attempt)
                    if not _retry(res, attempt, retries, console):
                        break
                    attempt += 1
                out.append(bars.finish(res))
            return out

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        todo = deque((s, 1) for s in specs)
        running: dict[Future, tuple[RunSpec, int]] = {}
        pool: ProcessPoolExecutor | None = None

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
                                               initargs=(threads, q))
                while todo and len(running) < workers:  # submit what can start now: a crash loses little
                    spec, attempt = todo.popleft()
                    fut = pool.submit(_worker, spec, str(results), study, checkpoint_every, faults, attempt)
                    running[fut] = (spec, attempt)
                done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                drain()
                if any(isinstance(f.exception(), BrokenProcessPool) for f in done if not f.cancelled()):
                    # A worker died: the pool fails every future, then stops the other workers.
                    # Wait for them (their runs get marked interrupted), then sort out the futures.
                    pool.shutdown(wait=True)
                    pool = None
                    done = {f for f in running if f.done()}
                for fut in done:
                    spec, attempt = running.pop(fut)
                    crashed = False
                    try:
                        res = fut.result()
                    except BrokenProcessPool:
                        crashed = True
                        if _status(results, study, spec) == "interrupted":
                            todo.appendleft((spec, attempt))  # stopped because another worker died
                            continue
                        res = RunResult(spec.run_id, "failed", "a worker process died (crash or killed)",
                                        retryable=True)
                    except Exception as exc:  # could not even report: e.g. an unpicklable result
                        crashed = True
                        res = RunResult(spec.run_id, "failed", _one_line(exc), retryable=True)
                    if _retry(res, attempt, retries, console):
                        todo.appendleft((spec, attempt + 1))
                        continue
                    if crashed:
                        _mark(results, study, spec, "failed", res.message)
                    out.append(bars.finish(res))
        except KeyboardInterrupt:
            _stop_pool(pool)
            pool = None
            for spec, _ in running.values():
                if _status(results, study, spec) == "running":
                    _mark(results, study, spec, "interrupted", "interrupted by the user")
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            drain()
    return out


# ----------------------------------------------------------------------------------------------
# ray


class QueueSink:
    """A Ray worker's RunSink: everything goes to the driver through a Ray queue."""

    def __init__(self, queue: Any, run_id: str, status: str | None, checkpoint: dict | None) -> None:
        self.queue, self.run_id = queue, run_id
        self._previous = (status, checkpoint)
        self._last_progress = 0.0

    def previous(self) -> tuple[str | None, dict | None]:
        return self._previous

    def acquire(self) -> bool:
        return True  # the driver holds the run's writer lock while the task runs

    def close(self) -> None:
        pass

    def write_record(self, record: dict) -> None:
        self.queue.put(("record", self.run_id, record))

    def write_metrics(self, rows: list[dict], extra_columns: tuple[str, ...] = ()) -> None:
        self.queue.put(("metrics", self.run_id, (rows, tuple(extra_columns))))

    def write_checkpoint(self, state: dict) -> None:
        self.queue.put(("checkpoint", self.run_id, state))

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_progress >= 0.5 or done >= total:  # at most 2 messages a second
            self._last_progress = now
            self.queue.put(("progress", self.run_id, (done, total)))


def _ray_task(spec: RunSpec, study: str, status: str | None, checkpoint: dict | None, queue: Any,
              checkpoint_every: int | None, faults: tuple[Fault, ...], attempt: int, threads: int) -> RunResult:
    """One run on a Ray worker (results go to the driver through ``queue``)."""
    import torch

    torch.set_num_threads(threads)
    sink = QueueSink(queue, spec.run_id, status, checkpoint)
    return train_run(spec, None, study, progress=sink.progress, sink=sink, checkpoint_every=checkpoint_every,
                     faults=faults, attempt=attempt)


def _ray_error(exc: BaseException) -> str:
    """One line for a failed Ray task: the task's own exception when there is one."""
    if type(exc).__name__ == "WorkerCrashedError":  # Ray's text points at logs that go with its temp dir
        return "WorkerCrashedError: the Ray worker process died while training (a crash, an OOM kill or a signal)"
    cause = getattr(exc, "cause", None)
    return _one_line(cause if isinstance(cause, BaseException) else exc)


# The reaper runs as ``python -c _REAPER``: self-contained, so it starts in milliseconds without
# importing torch. argv: driver pid, Ray temp dir. It remembers the driver's Ray descendants
# (Linux /proc; pid + start time, so a reused pid is never hit); when the driver's pipe closes
# (the driver ended, however) it kills those still alive and removes the temp dir.
_REAPER = r"""
import os, select, shutil, signal, sys, time

def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None

def ray_descendants(root):
    children = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    children.setdefault(int(f.read().rsplit(b")", 1)[1].split()[1]), []).append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    out, stack = {}, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                is_ray = b"ray" in f.read()
        except OSError:
            continue
        start = start_time(pid)
        if is_ray and start is not None and pid != os.getpid():
            out[pid] = start
    return out

driver, temp_dir = int(sys.argv[1]), sys.argv[2]
seen = {}
while True:
    ready = select.select([sys.stdin], [], [], 0.5)[0]
    if ready and not os.read(sys.stdin.fileno(), 4096):
        break
    seen.update(ray_descendants(driver))
time.sleep(1.0)  # after a clean ray.shutdown() nothing is left to do
for sig, pause in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
    alive = [pid for pid, start in seen.items() if start_time(pid) == start]
    for pid in alive:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    if alive and pause:
        time.sleep(pause)
shutil.rmtree(temp_dir, ignore_errors=True)
"""


def _start_reaper(temp_dir: str) -> subprocess.Popen:
    """Start the reaper for this process's local Ray instance (own session: Ctrl-C and a
    process-group kill do not reach it)."""
    return subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid()), temp_dir], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


# Ray puts sockets at <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (about 62
# characters) and a unix socket path has at most 107.
_MAX_RAY_TEMP_DIR = 45


class RayUnavailable(RuntimeError):
    """Ray is not installed or the cluster cannot be reached (one-line message)."""


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the Ray cluster at ``address`` or start a local instance (see the module doc);
    yields the ``ray`` module. An already initialised Ray (tests, notebooks) is used and left up."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--executor ray needs Ray: pip install ray==2.60.0") from None
    if ray.is_initialized():
        yield ray
        return
    import logging

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    temp_dir = reaper = None
    if address:
        kwargs["address"] = address
    else:
        temp_dir = tempfile.mkdtemp(prefix="marpo-ray-", dir=os.environ.get("RAY_TMPDIR") or None)
        if len(temp_dir) > _MAX_RAY_TEMP_DIR:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise RayUnavailable(f"Ray's temp directory {temp_dir} is too long for its unix socket paths "
                                 f"(at most {_MAX_RAY_TEMP_DIR} characters); set RAY_TMPDIR or TMPDIR to a "
                                 f"shorter directory")
        reaper = _start_reaper(temp_dir)
        kwargs.update(num_cpus=num_cpus, _temp_dir=temp_dir)
    try:
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError, OSError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise RayUnavailable(f"cannot start or reach {where}: {_one_line(exc)}") from None
        yield ray
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if reaper is not None:
            with contextlib.suppress(OSError):
                reaper.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                reaper.wait(timeout=30)
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


class _DriverStore:
    """The Ray driver's side of the queue: applies the workers' messages to the store."""

    def __init__(self, results: Path, study: str, bars: _Bars, console: Console) -> None:
        self.results, self.study, self.bars, self.console = results, study, bars, console
        self.records: dict[str, dict] = {}
        self.errors: dict[str, str] = {}

    def apply(self, msg: tuple[str, str, Any]) -> None:
        kind, run_id, payload = msg
        if kind == "progress":
            self.bars.update(run_id, *payload)
            return
        path = store.run_dir(self.results, self.study, run_id)
        try:
            if kind == "record":
                self.records[run_id] = payload
                path.mkdir(parents=True, exist_ok=True)
                store.write_run_json(path, {**payload, "writer": writer_info()})
            elif kind == "metrics":
                rows, extra_columns = payload
                store.write_metrics(path, rows, extra_columns=extra_columns)
            elif kind == "checkpoint":
                store.save_checkpoint(path, payload)
        except (OSError, ValueError, TypeError, store.StoreError) as exc:
            self.errors.setdefault(run_id, f"the driver could not store the run's {kind}: {_one_line(exc)}")

    def drain(self, queue: Any) -> None:
        while True:
            try:
                n = queue.qsize()
                if n == 0:
                    return
                batch = queue.get_nowait_batch(n)
            except queue_mod.Empty:
                return
            for msg in batch:
                self.apply(msg)


def run_ray(specs: list[RunSpec], results: Path, study: str, console: Console, *, address: str | None = None,
            cpus_per_run: float = 1.0, retries: int = 1, checkpoint_every: int | None = None,
            faults: tuple[Fault, ...] | None = None, num_cpus: int | None = None) -> list[RunResult]:
    """Run every spec as a Ray task (see the module doc). ``num_cpus``: CPUs of a local instance
    (default: all). Returns one RunResult per spec."""
    faults = faults_from_env() if faults is None else faults
    threads = max(1, int(cpus_per_run))
    out: list[RunResult] = []
    with ray_session(address, num_cpus) as ray, _Bars(console, len(specs)) as bars:
        from ray.util.queue import Queue

        q = Queue(actor_options={"num_cpus": 0})
        task = ray.remote(_ray_task).options(num_cpus=cpus_per_run, max_retries=0)
        capacity = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_run))
        driver = _DriverStore(results, study, bars, console)
        todo = deque((s, 1) for s in specs)
        inflight: dict[Any, tuple[RunSpec, int]] = {}
        locks: dict[str, store.WriterLock] = {}  # the driver writes the store: it holds the runs' locks
        try:
            while todo or inflight:
                while todo and len(inflight) < capacity:  # ship checkpoints only for runs about to start
                    spec, attempt = todo.popleft()
                    path = store.run_dir(results, study, spec.run_id)
                    try:
                        status = store.run_status(path)
                        ckpt = store.load_checkpoint(path) if status not in (None, "complete") else None
                    except store.StoreError as exc:
                        out.append(bars.finish(RunResult(spec.run_id, "failed", str(exc))))
                        continue
                    if status == "complete":
                        out.append(bars.finish(RunResult(spec.run_id, "skipped")))
                        continue
                    lock = locks.get(spec.run_id) or store.WriterLock.acquire(path)
                    if lock is None:
                        out.append(bars.finish(RunResult(spec.run_id, "skipped", "being trained by another process")))
                        continue
                    locks[spec.run_id] = lock
                    remove_stale_temp_files(path)
                    ref = task.remote(spec, study, status, ckpt, q, checkpoint_every, faults, attempt, threads)
                    inflight[ref] = (spec, attempt)
                if not inflight:
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0.2)
                driver.drain(q)  # a finished task's messages are all queued before it returns
                for ref in ready:
                    spec, attempt = inflight.pop(ref)
                    crashed = False
                    try:
                        res = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        crashed = True
                        res = RunResult(spec.run_id, "failed", _ray_error(exc), retryable=True)
                    if spec.run_id in driver.errors:
                        res = RunResult(spec.run_id, "failed", driver.errors.pop(spec.run_id))
                        crashed = True
                    if _retry(res, attempt, retries, console):
                        todo.appendleft((spec, attempt + 1))
                        continue
                    if crashed:
                        _mark(results, study, spec, "failed", res.message, driver.records.get(spec.run_id))
                    locks.pop(spec.run_id).release()
                    out.append(bars.finish(res))
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                driver.drain(q)
            for ref, (spec, _) in inflight.items():
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
                with contextlib.suppress(store.StoreError, OSError):
                    _mark(results, study, spec, "interrupted", "interrupted by the user",
                          driver.records.get(spec.run_id))
            raise
        finally:
            for lock in locks.values():
                lock.release()
    return out


# ----------------------------------------------------------------------------------------------
# the study's plan and status


def _plan_entry(spec: RunSpec) -> dict[str, Any]:
    return {"run_id": spec.run_id, "algo": spec.algo, "env": spec.env, "task": spec.task, "seed": spec.seed,
            "budget": spec.steps, "overrides": [list(p) for p in spec.overrides], "device": spec.device}


def read_plan(study_path: Path) -> dict[str, Any]:
    """``<study>/plan.json`` (``{"runs": []}`` when absent); StoreError when unreadable."""
    import json

    path = Path(study_path) / PLAN_JSON
    if not path.is_file():
        return {"runs": []}
    try:
        plan = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise store.StoreError(f"plan file {path} is unreadable ({_one_line(exc)}); delete it, "
                               f"the next `marpo-bench run` writes it again") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("runs"), list):
        raise store.StoreError(f"plan file {path} is not a marpo-bench plan; delete it")
    return plan


def write_plan(results: Path, study: str, specs: list[RunSpec], command: dict[str, Any]) -> Path:
    """Record the grid in ``<results>/<study>/plan.json`` (atomically) before any run starts, so
    ``status`` can list runs not started yet. Runs planned by earlier commands are kept (the plan
    is the union); ``command`` (preset, executor, ...) is appended to the plan's history."""
    path = Path(results) / study / PLAN_JSON
    plan = read_plan(path.parent)
    runs = {r["run_id"]: r for r in plan["runs"] if isinstance(r, dict) and "run_id" in r}
    for spec in specs:
        runs[spec.run_id] = _plan_entry(spec)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    history = [h for h in plan.get("history", []) if isinstance(h, dict)]
    history.append({"time": now, "runs": len(specs), **command})
    store.atomic_write_json(path, {"schema_version": store.SCHEMA_VERSION, "study": study, "updated": now,
                                   "runs": list(runs.values()), "history": history[-50:]})
    return path


STATUS_ORDER = ("running", "interrupted", "failed", "pending", "complete", "unreadable")


def study_status(study_path: Path) -> list[dict[str, Any]]:
    """One row per run of the study, planned or stored: run_id, algo, env, task, seed, status
    (complete / interrupted / failed / running / pending / unreadable), env_steps, budget,
    attempt, message. A ``running`` run whose process is gone (killed) shows as ``interrupted``."""
    study_path = Path(study_path)
    if not study_path.is_dir():
        raise store.StoreError(f"study directory {study_path} does not exist; check the path or run the study")
    rows: dict[str, dict[str, Any]] = {}
    for entry in read_plan(study_path)["runs"]:
        if isinstance(entry, dict) and "run_id" in entry:
            rows[entry["run_id"]] = {**{k: entry.get(k) for k in ("run_id", "algo", "env", "task", "seed", "budget")},
                                     "status": "pending", "env_steps": 0, "attempt": None, "message": ""}
    runs = study_path / "runs"
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not path.is_dir() or path.name.startswith(".") or not (path / store.RUN_JSON).exists():
            continue
        try:
            rec = store.read_run_json(path)
        except store.StoreError as exc:
            rows[path.name] = {**rows.get(path.name, {"run_id": path.name}), "status": "unreadable",
                               "message": str(exc)}
            continue
        status, message = rec["status"], rec.get("message") or ""
        if status == "running" and not store.writer_active(path):  # its writer lock died with its process
            pid = (rec.get("writer") or {}).get("pid", "?")
            status, message = "interrupted", f"process {pid} is gone (killed?); re-run to resume"
        rows[path.name] = {**{k: rec.get(k) for k in ("run_id", "algo", "env", "task", "seed", "budget")},
                           "status": status, "env_steps": rec.get("env_steps", 0), "attempt": rec.get("attempt"),
                           "message": message}
    if not rows:
        raise store.StoreError(f"study directory {study_path} has no plan and no runs; run the study first")
    return sorted(rows.values(), key=lambda r: (STATUS_ORDER.index(r["status"]), r["run_id"]))


def busy_runs(results: Path, study: str, specs: list[RunSpec]) -> list[tuple[str, int]]:
    """Runs of ``specs`` that another live process is training (it holds the run's writer lock):
    (run_id, its pid as recorded in run.json)."""
    out = []
    for spec in specs:
        path = store.run_dir(results, study, spec.run_id)
        if store.writer_active(path):
            rec = store.read_run_json(path) if store.run_status(path) is not None else {}
            out.append((spec.run_id, (rec.get("writer") or {}).get("pid", "?")))
    return out


def run_grid(specs: list[RunSpec], results: Path, study: str, console: Console, *, executor: str = "local",
             workers: int = 1, ray_address: str | None = None, cpus_per_run: float = 1.0, retries: int = 1,
             checkpoint_every: int | None = None, faults: tuple[Fault, ...] | None = None,
             threads: int = DEFAULT_THREADS) -> list[RunResult]:
    """Run the grid on the chosen executor (``local`` or ``ray``); ``threads``: torch threads per
    local run (a Ray task uses ``cpus_per_run``)."""
    if executor == "ray":
        return run_ray(specs, results, study, console, address=ray_address, cpus_per_run=cpus_per_run,
                       retries=retries, checkpoint_every=checkpoint_every, faults=faults)
    return run_local(specs, results, study, workers, console, retries=retries, checkpoint_every=checkpoint_every,
                     faults=faults, threads=threads)
