"""The Ray executor: every run is a Ray task (``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs each;
fractions allowed, so several runs share one GPU); with ``vectorize_seeds`` every seed group is
one task, its seeds trained as one batched learner (``executors.pool.seed_units``), so several
batched learners can share one GPU.

Workers never touch the results directory: they send run.json records, metrics rows, checkpoints
and progress through a Ray queue to the driver, which alone writes the store (and holds the runs'
writer locks), so the cluster needs no shared filesystem. The driver also ships each run's last
checkpoint with its task, so a retry or a re-run continues where the previous attempt stopped.

A local instance (no ``--ray-address``) is closed to strangers: token authentication stays on,
with a fresh random token held in this process's environment (``RAY_AUTH_MODE=token``,
``RAY_AUTH_TOKEN``; Ray's workers inherit it, nothing is written to ``~/.ray``), so a client
without the token is refused even though Ray's servers listen on every interface. Its temp and
session directory is a fresh ``marpo-ray-*`` directory under ``$RAY_TMPDIR`` or the system temp
directory, usage stats are off, and it is shut down at the end; the reaper
(:mod:`marpo_bench.executors.reaper`) kills what this command started and removes that directory
even after a ``kill -9``. With ``--ray-address`` the cluster's own settings are left alone.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_mod
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from marpo_bench import store
from marpo_bench.config import RunSpec, one_line
from marpo_bench.executors.common import GridBars, mark_run, should_retry
from marpo_bench.executors.pool import seed_units
from marpo_bench.faults import Fault, faults_from_env
from marpo_bench.train import RunResult, train_run, train_seed_group

_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


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

    def write_policy(self, policy: dict) -> None:
        self.queue.put(("policy", self.run_id, policy))

    def progress(self, done: int, total: int, last_eval: float | None = None) -> None:
        now = time.monotonic()
        # at most 2 messages a second; the last one, and one carrying an evaluation, always
        if now - self._last_progress >= 0.5 or done >= total or last_eval is not None:
            self._last_progress = now
            self.queue.put(("progress", self.run_id, (done, total, last_eval)))


def _ray_task(spec: RunSpec, study: str, status: str | None, checkpoint: dict | None, queue: Any,
              checkpoint_every: int | None, faults: tuple[Fault, ...], attempt: int, threads: int) -> RunResult:
    """One run on a Ray worker (results go to the driver through ``queue``)."""
    import torch

    torch.set_num_threads(threads)
    sink = QueueSink(queue, spec.run_id, status, checkpoint)
    return train_run(spec, None, study, progress=sink.progress, sink=sink, checkpoint_every=checkpoint_every,
                     faults=faults, attempt=attempt)


def _ray_group_task(specs: tuple[RunSpec, ...], study: str, previous: list[tuple[str | None, dict | None]],
                    queue: Any, checkpoint_every: int | None, faults: tuple[Fault, ...], attempt: int,
                    threads: int) -> list[RunResult]:
    """The seeds of one seed group as one batched learner on a Ray worker (``train_seed_group``)."""
    import torch

    torch.set_num_threads(threads)
    sinks = [QueueSink(queue, spec.run_id, status, ckpt) for spec, (status, ckpt) in zip(specs, previous, strict=True)]
    progress = {spec.run_id: sink.progress for spec, sink in zip(specs, sinks, strict=True)}
    return train_seed_group(list(specs), None, study, progress.__getitem__, sinks=sinks,
                            checkpoint_every=checkpoint_every, faults=faults, attempt=attempt)


def _ray_error(exc: BaseException) -> str:
    """One line for a failed Ray task: the task's own exception when there is one."""
    if type(exc).__name__ == "WorkerCrashedError":  # Ray's text points at logs that go with its temp dir
        return "WorkerCrashedError: the Ray worker process died while training (a crash, an OOM kill or a signal)"
    cause = getattr(exc, "cause", None)
    return one_line(cause if isinstance(cause, BaseException) else exc)


def _start_reaper(temp_dir: str) -> subprocess.Popen:
    """Start the reaper for this process's local Ray instance, as a script (standard library only:
    it starts at once) in its own session (Ctrl-C and a process-group kill do not reach it)."""
    script = Path(__file__).with_name("reaper.py")
    return subprocess.Popen([sys.executable, str(script), str(os.getpid()), temp_dir], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@contextlib.contextmanager
def _token_auth() -> Iterator[None]:
    """Token authentication with a fresh random token, in this process's environment for the
    duration (Ray reads ``RAY_AUTH_TOKEN`` before any token file, so none is written); the
    previous values are put back afterwards."""
    before = {k: os.environ.get(k) for k in _AUTH_VARS}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    _reload_ray_auth()
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Make an already imported Ray see the environment's auth settings: Ray reads them into its
    config and token cache once, at import (Ray's own ``_enable_token_auth`` refreshes the same way)."""
    if "ray._raylet" not in sys.modules:
        return  # imported later, Ray reads the environment as it is then
    with contextlib.suppress(Exception):
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


# Ray puts sockets at <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (about 62
# characters) and a unix socket path has at most 107.
_MAX_RAY_TEMP_DIR = 45


class RayUnavailable(RuntimeError):
    """Ray is not installed or the cluster cannot be reached (one-line message)."""


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
                ) -> Iterator[Any]:
    """Connect to the Ray cluster at ``address`` or start a local instance (see the module doc);
    yields the ``ray`` module. An already initialised Ray (tests, notebooks) is used and left up."""
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
    with contextlib.ExitStack() as stack:
        if address:
            kwargs["address"] = address
        else:
            temp_dir = tempfile.mkdtemp(prefix="marpo-ray-", dir=os.environ.get("RAY_TMPDIR") or None)
            stack.callback(shutil.rmtree, temp_dir, ignore_errors=True)
            if len(temp_dir) > _MAX_RAY_TEMP_DIR:
                raise RayUnavailable(f"Ray's temp directory {temp_dir} is too long for its unix socket paths "
                                     f"(at most {_MAX_RAY_TEMP_DIR} characters); set RAY_TMPDIR or TMPDIR to a "
                                     f"shorter directory")
            stack.callback(_stop_reaper, _start_reaper(temp_dir))
            stack.enter_context(_token_auth())
            kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, _temp_dir=temp_dir)
        stack.callback(ray.shutdown)  # first of the clean-ups: then the reaper, the token, the directory
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError, OSError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise RayUnavailable(f"cannot start or reach {where}: {one_line(exc)}") from None
        yield ray


def _stop_reaper(reaper: subprocess.Popen) -> None:
    """Close the reaper's pipe (it then reaps) and give it time to finish."""
    with contextlib.suppress(OSError):
        reaper.stdin.close()  # type: ignore[union-attr]
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.wait(timeout=30)


class _DriverStore:
    """The Ray driver's side of the queue: applies the workers' messages to the store."""

    def __init__(self, results: Path, study: str, bars: GridBars, console: Console,
                 loggers: tuple[str, ...] = ()) -> None:
        self.results, self.study, self.bars, self.console = results, study, bars, console
        self.records: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.loggers = loggers
        self.logs: dict[str, Any] = {}  # run_id -> loggers.RunLog (the driver logs what it stores)

    def log(self, run_id: str, path: Path) -> Any:
        from marpo_bench.loggers import RunLog

        if run_id not in self.logs:
            self.logs[run_id] = RunLog(self.loggers, path)
        return self.logs[run_id]

    def close_log(self, run_id: str) -> None:
        if run_id in self.logs:
            self.logs.pop(run_id).close()

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
                store.write_run_json(path, {**payload, "writer": store.writer_info()})
                if self.loggers:
                    self.log(run_id, path).write_record(payload)
            elif kind == "metrics":
                rows, extra_columns = payload
                store.write_metrics(path, rows, extra_columns=extra_columns)
                if rows and "eval_return_mean" in rows[-1]:  # the run's bar: its last evaluation return
                    self.bars.set_eval(run_id, rows[-1]["eval_return_mean"])
                if self.loggers:
                    self.log(run_id, path).write(rows)
            elif kind == "checkpoint":
                store.save_checkpoint(path, payload)
            elif kind == "policy":
                store.save_policy(path, payload)
        except (OSError, ValueError, TypeError, store.StoreError) as exc:
            self.errors.setdefault(run_id, f"the driver could not store the run's {kind}: {one_line(exc)}")

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


def run_capacity(resources: dict[str, float], cpus_per_run: float, gpus_per_run: float = 0.0) -> int:
    """How many runs the cluster holds at once: its CPUs over ``cpus_per_run`` and, when runs
    reserve GPUs, its GPUs over ``gpus_per_run`` (RayUnavailable when one run does not fit)."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if gpus_per_run > 0 and gpus < gpus_per_run:
        raise RayUnavailable(f"the Ray cluster has {gpus:g} GPUs; a run reserving {gpus_per_run:g} (--gpus-per-run) "
                             f"could never start")
    if cpus < cpus_per_run:
        raise RayUnavailable(f"the Ray cluster has {cpus:g} CPUs; a run reserving {cpus_per_run:g} (--cpus-per-run) "
                             f"could never start")
    by_cpu = int(cpus // cpus_per_run)
    return max(1, min(by_cpu, int(gpus // gpus_per_run)) if gpus_per_run > 0 else by_cpu)


def run_ray(specs: list[RunSpec], results: Path, study: str, console: Console, *, address: str | None = None,
            cpus_per_run: float = 1.0, retries: int = 1, checkpoint_every: int | None = None,
            faults: tuple[Fault, ...] | None = None, num_cpus: int | None = None,
            loggers: tuple[str, ...] = (), gpus_per_run: float = 0.0, vectorize_seeds: bool = False
            ) -> list[RunResult]:
    """Run every spec as a Ray task (see the module doc), each reserving ``cpus_per_run`` CPUs and
    ``gpus_per_run`` GPUs; with ``vectorize_seeds``, every seed group as one task (one batched
    learner, the same reservation). ``num_cpus``: CPUs of a local instance (default: all).
    Returns one RunResult per spec."""
    faults = faults_from_env() if faults is None else faults
    threads = max(1, int(cpus_per_run))
    out: list[RunResult] = []
    with ray_session(address, num_cpus) as ray, GridBars(console, len(specs)) as bars:
        from ray.util.queue import Queue

        q = Queue(actor_options={"num_cpus": 0})
        opts = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run, "max_retries": 0}
        task = ray.remote(_ray_task).options(**opts)
        group_task = ray.remote(_ray_group_task).options(**opts)
        capacity = run_capacity(ray.cluster_resources(), cpus_per_run, gpus_per_run)
        driver = _DriverStore(results, study, bars, console, loggers)
        todo = deque((unit, 1) for unit, _ in seed_units([(s, study) for s in specs], vectorize_seeds))
        inflight: dict[Any, tuple[tuple[RunSpec, ...], int]] = {}
        locks: dict[str, store.WriterLock] = {}  # the driver writes the store: it holds the runs' locks
        try:
            while todo or inflight:
                while todo and len(inflight) < capacity:  # ship checkpoints only for runs about to start
                    unit, attempt = todo.popleft()
                    ready_specs: list[RunSpec] = []
                    previous: list[tuple[str | None, dict | None]] = []
                    for spec in unit:
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
                            out.append(bars.finish(RunResult(spec.run_id, "skipped",
                                                             "being trained by another process")))
                            continue
                        locks[spec.run_id] = lock
                        store.remove_stale_temp_files(path)
                        ready_specs.append(spec)
                        previous.append((status, ckpt))
                    if not ready_specs:
                        continue
                    common = (q, checkpoint_every, faults, attempt, threads)
                    if len(ready_specs) == 1:
                        ref = task.remote(ready_specs[0], study, *previous[0], *common)
                    else:
                        ref = group_task.remote(tuple(ready_specs), study, previous, *common)
                    inflight[ref] = (tuple(ready_specs), attempt)
                if not inflight:
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0.2)
                driver.drain(q)  # a finished task's messages are all queued before it returns
                for ref in ready:
                    unit, attempt = inflight.pop(ref)
                    crashed = False
                    try:
                        got = ray.get(ref)
                        results_ = got if isinstance(got, list) else [got]
                    except ray.exceptions.RayError as exc:
                        crashed = True
                        results_ = [RunResult(spec.run_id, "failed", _ray_error(exc), retryable=True) for spec in unit]
                    again: list[RunSpec] = []
                    for spec, res in zip(unit, results_, strict=True):
                        failed_here = crashed
                        if spec.run_id in driver.errors:
                            res = RunResult(spec.run_id, "failed", driver.errors.pop(spec.run_id))
                            failed_here = True
                        if should_retry(res, attempt, retries, console):
                            again.append(spec)
                            continue
                        if failed_here:
                            mark_run(results, study, spec, "failed", res.message, driver.records.get(spec.run_id))
                        driver.close_log(spec.run_id)
                        locks.pop(spec.run_id).release()
                        out.append(bars.finish(res))
                    if again:
                        todo.appendleft((tuple(again), attempt + 1))
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                driver.drain(q)
            for ref, (unit, _) in inflight.items():
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
                for spec in unit:
                    with contextlib.suppress(store.StoreError, OSError):
                        mark_run(results, study, spec, "interrupted", "interrupted by the user",
                                 driver.records.get(spec.run_id))
            raise
        finally:
            for run_id in list(driver.logs):
                driver.close_log(run_id)
            for lock in locks.values():
                lock.release()
    return out
