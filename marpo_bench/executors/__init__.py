"""Executors: run a grid of RunSpecs with retries and a grid progress bar.

- ``local`` (:mod:`.pool`): this process (1 worker) or one pool of spawned processes; also trains
  the regression check's runs.
- ``ray`` (:mod:`.ray`): one Ray task per run (per seed group with ``vectorize_seeds``); the
  driver alone writes the store; a local instance
  is closed to strangers (token authentication) and cleaned up by :mod:`.reaper`, even after a
  ``kill -9``.

Retries (both executors): a run that failed for a reason another attempt may not repeat (an
exception other than a NaN, a bad config or a store problem; a crashed worker process) is retried
up to ``retries`` times from its last checkpoint, then recorded ``failed`` with its message; the
grid goes on. Ctrl-C stops the grid: the runs in flight are marked ``interrupted`` (all writes
are atomic, so nothing is half-written) and re-running the command continues them.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from marpo_bench.config import DEFAULT_THREADS, RunSpec
from marpo_bench.executors.pool import run_jobs, run_local, torch_threads
from marpo_bench.executors.ray import RayUnavailable, ray_session, run_ray
from marpo_bench.faults import Fault
from marpo_bench.train import RunResult

EXECUTORS = ("local", "ray")

__all__ = ["EXECUTORS", "RayUnavailable", "ray_session", "run_grid", "run_jobs", "run_local", "run_ray",
           "torch_threads"]


def run_grid(specs: list[RunSpec], results: Path, study: str, console: Console, *, executor: str = "local",
             workers: int = 1, ray_address: str | None = None, cpus_per_run: float = 1.0, retries: int = 1,
             checkpoint_every: int | None = None, faults: tuple[Fault, ...] | None = None,
             threads: int = DEFAULT_THREADS, loggers: tuple[str, ...] = (), gpus_per_run: float = 0.0,
             vectorize_seeds: bool = False) -> list[RunResult]:
    """Run the grid on the chosen executor (``local`` or ``ray``); ``threads``: torch threads per
    local run (a Ray task uses ``cpus_per_run``); ``loggers``: also send metrics rows there;
    ``vectorize_seeds``: each seed group as one batched learner (a Ray task each on ``ray``)."""
    if executor == "ray":
        return run_ray(specs, results, study, console, address=ray_address, cpus_per_run=cpus_per_run,
                       retries=retries, checkpoint_every=checkpoint_every, faults=faults, loggers=loggers,
                       gpus_per_run=gpus_per_run, vectorize_seeds=vectorize_seeds)
    return run_local(specs, results, study, workers, console, retries=retries, checkpoint_every=checkpoint_every,
                     faults=faults, threads=threads, loggers=loggers, vectorize_seeds=vectorize_seeds)
