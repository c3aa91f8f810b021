"""What the runs cost: wall-clock hours, CPU-hours and seconds per env step per algorithm, with the
warnings that qualify them (runs timed on different machines, or on a busy one)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from marpo_bench.analysis.scores import StudyScores, finite_mean


@dataclass(frozen=True)
class Cost:
    """What an algorithm's used runs cost: wall-clock hours, CPU-hours (wall-clock x torch threads)
    and seconds per env step (training and evaluation), summed or averaged over its runs."""

    algo: str
    runs: int
    run_hours: float
    cpu_hours: float
    seconds_per_step: float  # mean over its runs of the aggregate tasks (all its runs if none)
    threads: float  # mean torch threads per run


def costs(data: StudyScores) -> tuple[dict[str, Cost], list[str]]:
    """Cost per algorithm and the warnings that qualify it: runs timed on different machines, or
    on a machine busier than its CPU count when the run started (``run.json``'s host)."""
    rec = {r["run_id"]: r for r in data.records}
    out: dict[str, Cost] = {}
    used: list[dict] = []
    for a in data.algos:
        runs = [r for t in data.tasks for r in t.runs.get(a, [])]
        agg = [r for k in data.agg_tasks for r in data.task(k).runs.get(a, [])] or runs
        threads = [int(rec[r.run_id].get("torch_threads") or 1) for r in runs]
        out[a] = Cost(a, len(runs), sum(r.wall_seconds for r in runs) / 3600,
                      sum(r.wall_seconds * n for r, n in zip(runs, threads, strict=True)) / 3600,
                      finite_mean([r.seconds_per_step for r in agg]),
                      float(np.mean(threads)) if threads else math.nan)
        used += [rec[r.run_id] for r in runs]
    warnings = []
    def machine(r: dict) -> str:
        h = r.get("host") or {}
        gpu = f", {h['gpu']}" if h.get("gpu") else ""
        return f"{h.get('cpu_model') or h.get('processor') or '?'} ({h.get('cpus') or '?'} CPUs{gpu})"

    machines = Counter(machine(r) for r in used)
    if len(machines) > 1:
        warnings.append(f"the runs' timings come from {len(machines)} different machines "
                        f"({'; '.join(f'{n} runs on {m}' for m, n in machines.most_common())}): wall-clock and "
                        "CPU-hours compare algorithms fairly only where their runs shared a machine")
    busy = [r for r in used if (r.get("host") or {}).get("load_1min") is not None
            and r["host"]["load_1min"] > (r["host"].get("cpus") or math.inf)]
    if busy:
        warnings.append(f"{len(busy)} of {len(used)} runs started on a machine busier than its CPU count (1-minute "
                        "load average in run.json): their timings include waiting for a CPU")
    if not any((r.get("host") or {}).get("cpu_model") for r in used):
        warnings.append("the runs do not record their CPU model (run.json's host.cpu_model, recorded by runs trained "
                        "since it was added): runs timed on different CPUs cannot be told apart")
    if not any((r.get("host") or {}).get("load_1min") is not None for r in used):
        warnings.append("the runs do not record the machine's load (run.json's host.load_1min, recorded by runs "
                        "trained since it was added): timings from a shared machine may include waiting")
    return out, warnings

