"""Throughput and memory benchmarks (``marpo-bench bench``): env-only steps/s under random actions
and full training steps/s per algorithm, and the peak resident memory of each measurement (each
runs in its own spawned process). A training measurement times whole ``learn()`` iterations, as a
real run does, and splits each into phases: the env's own compute, the torch <-> env exchange, the
learner's update, and the rest (policy forward, action sampling, buffers, GAE).

Env steps count every step of every parallel env. Training is measured at the algorithm's
default learning config for the env (epochs, minibatches, network): a faster figure bought by
learning less per sample would not be a speed-up.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import resource
import time
from collections.abc import Callable
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
    # Per training iteration (train rows; NaN elsewhere / where not separable):
    env_ms: float  # the env's own compute (JAX: the jitted step, waited for; Python envs: their step)
    transfer_ms: float  # torch <-> JAX exchange and TimeStep assembly in the wrapper (JAX envs)
    policy_ms: float  # everything else: policy forward, sampling, buffers, GAE, replay sampling
    update_ms: float  # the learner's gradient updates
    peak_rss_mb: float  # per process (the largest, with --parallel)
    torch_threads: int
    seconds: float
    parallel: int = 1  # identical measurements run at once; env_steps_per_s is their sum
    device: str = "cpu"  # where the learner's networks and updates ran (envs: on their backend)


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
    env = make_env(family, task, num_envs, trust_imports=True)
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
    return BenchRow("env", "-", f"{family}:{task}", num_envs, steps * num_envs / elapsed, *[float("nan")] * 4,
                    _peak_rss_mb(), threads, elapsed)


def one_seed(algo_cls: Any, cfg: Any, info: Any, device: str, seed: int) -> tuple[Any, Callable[..., None]]:
    """What one seed's ``learn`` trains through, and a call that trains it: the algorithm's
    learner over this seed alone (``batched`` at S = 1: the object whose ``update`` runs, so that
    timing it times the updates), or the algorithm itself when it has no batched learner."""
    batched = getattr(algo_cls, "batched", None)
    if batched is None:
        algo = algo_cls(cfg, info, device, seed)
        return algo, lambda env, total, on_iteration: algo.learn(env, total, seed, on_iteration)
    learner = batched(cfg, info, device, [seed])
    return learner, lambda env, total, on_iteration: learner.learn([env], total, [seed], [on_iteration])


class _PhaseClock:
    """Accumulates wall seconds per training phase by wrapping the env's step, the jitted env
    compute inside it and the learner's update (instance attributes only: nothing global)."""

    def __init__(self, env: Any, learner: Any, device: str = "cpu") -> None:
        self.wrapper_s = self.compute_s = self.update_s = 0.0
        wrapper_step, update = env.step, learner.update

        def timed_step(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            out = wrapper_step(*a, **k)
            self.wrapper_s += time.perf_counter() - t0
            return out

        def timed_update(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            out = update(*a, **k)
            _wait(device)
            self.update_s += time.perf_counter() - t0
            return out

        env.step, learner.update = timed_step, timed_update
        # JAX-backed wrappers call their jitted step through ``compiled_step`` (envs/base.py,
        # CompiledStepEnv); timing it separates the env's compute from the exchange.
        jitted = getattr(env, "compiled_step", None)
        self.has_compute = jitted is not None
        if jitted is not None:
            import jax

            def timed_jit(*a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                out = jax.block_until_ready(jitted(*a, **k))  # JAX is async: wait to time the compute
                self.compute_s += time.perf_counter() - t0
                return out

            env.compiled_step = timed_jit

    def snapshot(self) -> tuple[float, float, float]:
        return self.wrapper_s, self.compute_s, self.update_s


def _train_bench(algo: str, family: str, task: str, num_envs: int | None, seconds: float,
                 overrides: tuple[tuple[str, str], ...], device: str, threads: int) -> BenchRow:
    """Time whole ``learn()`` iterations (what a real run does), split into phases: env compute,
    torch<->env exchange, update, and the rest (policy forward, sampling, buffers, GAE)."""
    import torch

    from marpo_bench.config import RunSpec
    from marpo_bench.envs import make_env
    from marpo_bench.recipes import build_config
    from marpo_bench.train import get_algorithm

    torch.set_num_threads(threads)
    overrides = (*overrides, *((("num_envs", str(num_envs)),) if num_envs else ()))
    cfg = build_config(RunSpec(algo, family, task, 0, 10**9, overrides))
    env = make_env(family, task, cfg.num_envs, agent_id=cfg.agent_id, trust_imports=True)
    learner, learn = one_seed(get_algorithm(algo), cfg, env.info, device, 0)
    clock = _PhaseClock(env, learner, device)
    marks: list[tuple[float, int, tuple[float, float, float]]] = []

    class _Stop(Exception):
        pass

    def on_iteration(steps: int, metrics: dict[str, float]) -> None:
        marks.append((time.perf_counter(), steps, clock.snapshot()))
        if len(marks) > 2 and marks[-1][0] - marks[1][0] > seconds:
            raise _Stop

    try:
        learn(env, 10**12, on_iteration)
    except _Stop:
        pass
    env.close()
    (t_a, s_a, ph_a), (t_b, s_b, ph_b) = marks[1], marks[-1]  # the first iteration is warm-up (JIT)
    iters = len(marks) - 2
    wall = t_b - t_a
    wrapper_ms, compute_ms, update_ms = (1000 * (b - a) / iters for a, b in zip(ph_a, ph_b, strict=True))
    env_ms, transfer_ms = (compute_ms, wrapper_ms - compute_ms) if clock.has_compute else (wrapper_ms, math.nan)
    policy_ms = 1000 * wall / iters - wrapper_ms - update_ms
    label = algo + "".join(f" {k}={v}" for k, v in overrides if k != "num_envs")
    return BenchRow("train", label, f"{family}:{task}", env.info.num_envs, (s_b - s_a) / wall,
                    env_ms, transfer_ms, policy_ms, update_ms, _peak_rss_mb(), threads, wall, device=device)


SEED_MODES = ("sequential", "vectorised", "bound")


def _seeds_bench(algo: str, family: str, task: str, seeds: int, mode: str, seconds: float,
                 overrides: tuple[tuple[str, str], ...], device: str, threads: int) -> BenchRow:
    """S seeds of one (algorithm, task) at its default learning config, three ways:

    - ``sequential``: S single-seed learners one after another in this process (each timed for
      ``seconds / S``), what S runs cost without batching;
    - ``vectorised``: one batched learner (the algorithm's ``batched``);
    - ``bound``: one single-seed learner doing S seeds' arithmetic (the algorithm's
      ``seed_scaled_settings`` multiplied by S: S times the envs and the batch, the same updates
      per iteration). Per-op overhead is paid once and the FLOPs and memory traffic are S seeds',
      so no batching of S seeds can be faster than this: the arithmetic bound.

    Env steps/s is the aggregate over the S seeds (bound: of the one learner); ``update_ms`` is
    per iteration of all S seeds. The first trained iteration is warm-up (JIT, replay fill)."""
    import torch

    from marpo_bench.algos import get_algorithm
    from marpo_bench.config import RunSpec
    from marpo_bench.envs import make_env
    from marpo_bench.recipes import build_config

    torch.set_num_threads(threads)
    cfg = build_config(RunSpec(algo, family, task, 0, 10**9, overrides))
    algo_cls = get_algorithm(algo)
    vectorised = mode == "vectorised"
    if mode == "bound":
        scaled = tuple((k, str(getattr(cfg, k) * seeds)) for k in algo_cls.seed_scaled_settings)
        cfg = build_config(RunSpec(algo, family, task, 0, 10**9, (*overrides, *scaled)))

    class _Stop(Exception):
        pass

    def timed(learner: Any, run: Callable[[Callable[[int, dict[str, float]], None]], None],
              budget: float) -> tuple[float, int, float, int]:
        """(wall, env steps, update seconds, iterations) of ``run(on_iteration)``, which trains
        through ``learner`` (whose ``update`` is timed), after its first iteration."""
        spent = [0.0]
        update = learner.update

        def timed_update(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            out = update(*a, **k)
            _wait(device)
            spent[0] += time.perf_counter() - t0
            return out

        learner.update = timed_update
        marks: list[tuple[float, int, float]] = []

        def on_iteration(steps: int, metrics: dict[str, float]) -> None:
            marks.append((time.perf_counter(), steps, spent[0]))
            if len(marks) > 2 and marks[-1][0] - marks[1][0] > budget:
                raise _Stop

        try:
            run(on_iteration)
        except _Stop:
            pass
        (t_a, s_a, u_a), (t_b, s_b, u_b) = marks[1], marks[-1]
        return t_b - t_a, s_b - s_a, u_b - u_a, len(marks) - 2

    def env() -> Any:
        return make_env(family, task, cfg.num_envs, agent_id=cfg.agent_id, trust_imports=True)

    def alone(seed: int, budget: float) -> tuple[float, int, float, int]:
        learner, learn = one_seed(algo_cls, cfg, _info(family, task, cfg), device, seed)
        return timed(learner, lambda cb: learn(env(), 10**12, cb), budget)

    if vectorised:
        learner = algo_cls.batched(cfg, _info(family, task, cfg), device, list(range(seeds)))
        others = [lambda *a: None] * (seeds - 1)
        wall, steps, upd, iters = timed(learner, lambda cb: learner.learn([env() for _ in range(seeds)], 10**12,
                                                                          list(range(seeds)), [cb, *others]), seconds)
        steps *= seeds
    elif mode == "bound":
        wall, steps, upd, iters = alone(0, seconds)
    else:
        parts = [alone(k, seconds / seeds) for k in range(seeds)]
        wall, steps = sum(p[0] for p in parts), sum(p[1] for p in parts)
        upd, iters = sum(p[2] for p in parts), sum(p[3] for p in parts) / seeds
    label = f"{algo} S={seeds} {mode}"
    return BenchRow("seeds", label, f"{family}:{task}", cfg.num_envs, steps / wall, math.nan, math.nan, math.nan,
                    1000 * upd / iters, _peak_rss_mb(), threads, wall, device=device)


def _wait(device: str) -> None:
    """Wait for the device's queued work (CUDA is asynchronous: time what ran, not what was queued)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _info(family: str, task: str, cfg: Any) -> Any:
    from marpo_bench.envs import make_env

    env = make_env(family, task, cfg.num_envs, agent_id=cfg.agent_id, trust_imports=True)
    info = env.info
    env.close()
    return info


def _child(kind: str, args: tuple, threads: int, q: Any) -> None:
    try:
        runner = {"env": _env_bench, "train": _train_bench, "seeds": _seeds_bench}[kind]
        row = runner(*args, threads)
        q.put(("ok", asdict(row)))
    except Exception as exc:  # reported as a row error in the parent
        q.put(("error", f"{type(exc).__name__}: {exc}"))


def run_isolated(kind: str, args: tuple, threads: int, parallel: int = 1) -> dict:
    """Run one measurement in a fresh spawned process (clean peak RSS, no shared JIT caches); with
    ``parallel`` > 1, that many identical ones at once, each in its own process, as ``run --workers``
    trains them: the row then gives their summed env steps/s (what the machine delivers), the mean
    of their phases and the largest peak RSS."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(kind, args, threads, q)) for _ in range(parallel)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    errors = [payload for status, payload in results if status != "ok"]
    if errors:
        raise RuntimeError(errors[0])
    rows = [payload for _, payload in results]
    if parallel == 1:
        return rows[0]
    out = dict(rows[0])
    out["env_steps_per_s"] = sum(r["env_steps_per_s"] for r in rows)
    for k in ("env_ms", "transfer_ms", "policy_ms", "update_ms", "seconds"):
        out[k] = sum(r[k] for r in rows) / parallel
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
    out["parallel"] = parallel
    return out
