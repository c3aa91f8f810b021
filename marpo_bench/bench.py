"""Throughput and memory benchmarks (``marpo-bench bench``): env-only steps/s under random actions
and full training steps/s per algorithm, with the time split into collection and update, and the
peak resident memory of each measurement (each runs in its own spawned process).

Env steps count every step of every parallel env. Training is measured at the algorithm's
default learning config for the env (epochs, minibatches, network): a faster figure bought by
learning less per sample would not be a speed-up.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any

WARMUP_STEPS = 30  # more than one 25-step MPE episode: auto-reset and JIT are warm


@dataclass
class BenchRow:
    kind: str  # "env" or "train"
    algo: str  # "-" for env-only rows
    env: str  # family:task
    num_envs: int
    env_steps_per_s: float
    collect_frac: float  # share of wall time spent collecting (train rows)
    update_ms: float  # per update phase (train rows)
    collect_ms: float  # per rollout (train rows)
    peak_rss_mb: float
    torch_threads: int
    seconds: float


def random_available(avail: Any) -> Any:
    """Uniform over available actions (argmax of i.i.d. uniforms restricted to the mask)."""
    import torch

    return torch.where(avail, torch.rand(avail.shape), -1.0).argmax(-1)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _env_bench(family: str, task: str, num_envs: int, seconds: float, threads: int) -> BenchRow:
    import torch

    from marpo_bench.envs import make_env

    torch.set_num_threads(threads)
    env = make_env(family, task, num_envs)
    ts = env.reset(seed=0)
    checksum = 0.0
    for _ in range(WARMUP_STEPS):
        ts = env.step(random_available(ts.avail_actions))
        checksum += float(ts.obs.sum() + ts.reward.sum())
    steps, start, elapsed = 0, time.perf_counter(), 0.0
    while elapsed < seconds:
        for _ in range(10):
            ts = env.step(random_available(ts.avail_actions))
            checksum += float(ts.obs.sum() + ts.reward.sum())  # consume outputs (JAX would drop unused work)
        steps += 10
        elapsed = time.perf_counter() - start
    env.close()
    return BenchRow("env", "-", f"{family}:{task}", num_envs, steps * num_envs / elapsed, float("nan"),
                    float("nan"), float("nan"), _peak_rss_mb(), threads, elapsed)


def _train_bench(algo: str, family: str, task: str, num_envs: int | None, seconds: float,
                 threads: int) -> BenchRow:
    import torch

    from marpo_bench.config import RunSpec
    from marpo_bench.envs import make_env
    from marpo_bench.train import build_config, get_algorithm

    torch.set_num_threads(threads)
    overrides = (("num_envs", str(num_envs)),) if num_envs else ()
    spec = RunSpec(algo, family, task, 0, 10**9, overrides)
    cfg = build_config(spec)
    env = make_env(family, task, cfg.num_envs, agent_id=cfg.agent_id)
    learner = get_algorithm(algo)(cfg, env.info, "cpu", 0)
    if not hasattr(learner, "collect"):  # off-policy learners: time whole learn() iterations
        return _train_bench_learn(algo, learner, env, family, task, cfg, seconds, threads)
    ts = env.reset(0)
    ro, ts, _ = learner.collect(env, ts)  # warm-up: JIT, allocator
    learner.update(ro, 0.5)
    t_col = t_upd = 0.0
    iters = 0
    while t_col + t_upd < seconds:
        t0 = time.perf_counter()
        ro, ts, _ = learner.collect(env, ts)
        t1 = time.perf_counter()
        learner.update(ro, 0.5)
        t_col += t1 - t0
        t_upd += time.perf_counter() - t1
        iters += 1
    per_iter = cfg.num_envs * cfg.rollout_len
    total = t_col + t_upd
    env.close()
    return BenchRow("train", algo, f"{family}:{task}", cfg.num_envs, iters * per_iter / total, t_col / total,
                    1000 * t_upd / iters, 1000 * t_col / iters, _peak_rss_mb(), threads, total)


def _train_bench_learn(algo, learner, env, family, task, cfg, seconds, threads) -> BenchRow:
    marks: list[tuple[float, int]] = []

    class _Stop(Exception):
        pass

    def on_iteration(steps: int, metrics: dict[str, float]) -> None:
        marks.append((time.perf_counter(), steps))
        if len(marks) > 2 and marks[-1][0] - marks[1][0] > seconds:
            raise _Stop

    try:
        learner.learn(env, 10**12, 0, on_iteration)
    except _Stop:
        pass
    (t_a, s_a), (t_b, s_b) = marks[1], marks[-1]  # skip the first iteration (warm-up)
    env.close()
    return BenchRow("train", algo, f"{family}:{task}", cfg.num_envs, (s_b - s_a) / (t_b - t_a), float("nan"),
                    float("nan"), float("nan"), _peak_rss_mb(), threads, t_b - t_a)


def _child(kind: str, args: tuple, threads: int, q: Any) -> None:
    try:
        row = _env_bench(*args, threads) if kind == "env" else _train_bench(*args, threads)
        q.put(("ok", asdict(row)))
    except Exception as exc:  # reported as a row error in the parent
        q.put(("error", f"{type(exc).__name__}: {exc}"))


def run_isolated(kind: str, args: tuple, threads: int) -> dict:
    """Run one measurement in a fresh spawned process (clean peak RSS, no shared JIT caches)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(kind, args, threads, q))
    p.start()
    status, payload = q.get()
    p.join()
    if status != "ok":
        raise RuntimeError(payload)
    return payload
