"""How fast can MAPPO's default MPE update possibly be on this machine?

Measures, in one process: (1) the real MAPPO update (10 epochs x 1 minibatch over 128 envs x 25
steps x 3 agents, 64-unit LayerNorm MLPs), and (2) only the matrix multiplications that update
needs (forward and both backward GEMMs of every Linear layer, same shapes), i.e. the arithmetic
a perfect implementation could not avoid. Their ratio says how much of the update is overhead
(LayerNorm, activations, softmax, Adam, autograd) and (2) bounds training throughput from above.

    python benchmarks/update_bound.py [--threads 1] [--reps 5]
"""

from __future__ import annotations

import argparse
import time

import torch

import marpo_bench  # noqa: F401  (sets passive OpenMP waiting before torch loads)


def gemm_time(rows: int, dims: list[int], reps: int) -> float:
    """Seconds for forward + backward GEMMs of an MLP with layer widths ``dims`` on ``rows`` rows."""
    xs = [torch.randn(rows, d) for d in dims[:-1]]
    ws = [torch.randn(o, i) for i, o in zip(dims[:-1], dims[1:], strict=True)]
    gs = [torch.randn(rows, o) for o in dims[1:]]

    def once() -> None:
        for x, w, g in zip(xs, ws, gs, strict=True):
            x @ w.t()  # forward
            g @ w  # grad wrt input
            g.t() @ x  # grad wrt weight

    once()
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from baselines.mappo import MAPPO, MAPPOConfig
    from marpo_bench.envs import make_env

    cfg = MAPPOConfig()
    env = make_env("jax_mpe", "simple_spread", cfg.num_envs)
    algo = MAPPO(cfg, env.info, "cpu", 0)
    ts = env.reset(0)
    ro, ts, _ = algo.collect(env, ts)
    algo.update(ro, 0.5)
    t0 = time.perf_counter()
    for _ in range(args.reps):
        algo.update(ro, 0.5)
    update_s = (time.perf_counter() - t0) / args.reps
    t0 = time.perf_counter()
    for _ in range(args.reps):
        ro, ts, _ = algo.collect(env, ts)
    collect_s = (time.perf_counter() - t0) / args.reps

    info, h = env.info, cfg.hidden
    T, E, N = cfg.rollout_len, cfg.num_envs, info.num_agents
    actor = [info.obs_dim, h, h, info.num_actions]
    critic = [info.state_dim, h, h, 1]
    gemm_s = cfg.epochs * (gemm_time(T * E * N, actor, args.reps) + gemm_time(T * E, critic, args.reps))
    flops = cfg.epochs * 6 * (T * E * N * sum(i * o for i, o in zip(actor[:-1], actor[1:], strict=True))
                              + T * E * sum(i * o for i, o in zip(critic[:-1], critic[1:], strict=True)))
    steps = T * E
    print(f"threads={args.threads}  env steps per update={steps}")
    print(f"update (real):        {update_s * 1e3:8.1f} ms -> {steps / update_s:10,.0f} env steps/s (update only)")
    print(f"collect (real):       {collect_s * 1e3:8.1f} ms")
    print(f"train iteration:      {(update_s + collect_s) * 1e3:8.1f} ms -> "
          f"{steps / (update_s + collect_s):10,.0f} env steps/s")
    print(f"GEMMs only (bound):   {gemm_s * 1e3:8.1f} ms -> {steps / gemm_s:10,.0f} env steps/s "
          f"({flops / gemm_s / 1e9:.1f} GFLOP/s achieved, {flops / 1e9:.2f} GFLOP per update)")
    print(f"overhead beyond GEMMs: {100 * (1 - gemm_s / update_s):.0f}% of the update")


if __name__ == "__main__":
    main()
