"""How fast can an algorithm's default update on jax_mpe simple_spread possibly be on this machine?

Measures, in one process: (1) the real update, and (2) only the matrix multiplications that
update needs, with the same shapes, i.e. the arithmetic a perfect implementation could not avoid.
Their ratio says how much of the update is overhead (LayerNorm, activations, softmax, gates, the
optimiser, autograd) and (2) bounds training throughput from above.

- ``--algo mappo``: 10 epochs x 1 minibatch over 128 envs x 25 steps x 3 agents, 64-unit
  LayerNorm MLPs; the GEMMs are the forward and both backward products of every Linear layer.
- ``--algo qmix``: one gradient step on 32 whole episodes (pymarl's recipe); the GEMMs are the
  agent network's forward for the online and the target network (the GRU's recurrent product as
  26 per-step GEMMs, as the recurrence forces), its backward for the online one, and the mixer's
  hypernetworks likewise. At pymarl's training ratio (one update per 2 episodes = 50 env steps
  on simple_spread) the update time sets env steps/s.

    python benchmarks/update_bound.py [--algo mappo|qmix] [--threads 1] [--reps 5]
"""

from __future__ import annotations

import argparse
import time

import torch

import marpo_bench  # noqa: F401  (sets passive OpenMP waiting before torch loads)


def gemms_time(shapes: list[tuple[int, int, int, int]], reps: int) -> tuple[float, float]:
    """Seconds and FLOPs for ``count`` products [m, k] @ [k, n] for each (m, k, n, count)."""
    mats = [(torch.randn(m, k), torch.randn(k, n), c) for m, k, n, c in shapes]

    def once() -> None:
        for a, b, c in mats:
            for _ in range(c):
                a @ b

    once()
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - t0) / reps, float(sum(2 * m * k * n * c for m, k, n, c in shapes))


def qmix_bound(reps: int) -> None:
    """QMix's real update vs the GEMMs it needs (see the module docstring)."""
    import numpy as np

    from baselines.qmix import QMix
    from baselines.qmix_recipes import QMixConfig
    from baselines.qmix_replay import EpisodeReplay
    from marpo_bench.envs import make_env

    cfg = QMixConfig()
    env = make_env("jax_mpe", "simple_spread", cfg.num_envs)
    learner = QMix.batched(cfg, env.info, "cpu", [0])  # the one learner at S = 1
    algo = learner.members[0]
    c, info = algo.cfg, env.info
    replay = EpisodeReplay(c.buffer_size, cfg.num_envs, info, algo.device)
    ts = env.reset(0)
    state, done = algo.initial_act_state(cfg.num_envs), torch.zeros(cfg.num_envs, dtype=torch.bool)
    while replay.size < 4 * c.batch_size:  # random-policy episodes: the update's cost does not depend on them
        replay.add_obs(ts)
        a, state = algo._act(ts.obs, ts.avail_actions, done, state, 1.0)
        ts = env.step(a)
        replay.add_step(a, ts)
        done = ts.done
    rng = np.random.default_rng(0)
    batches = [replay.sample(c.batch_size, rng) for _ in range(reps + 1)]
    learner.update([batches[0]])
    t0 = time.perf_counter()
    for b in batches[1:]:
        learner.update([b])
    update_s = (time.perf_counter() - t0) / reps

    B, N, A, T = c.batch_size, info.num_agents, info.num_actions, info.episode_limit
    H, S = c.rnn_hidden_dim, info.state_dim
    L, rows, M = T + 1, (T + 1) * B * N, T * B  # agent rows: every slot; mixer rows: every transition
    X, Em, He = algo.in_dim, c.mixing_embed_dim, c.hypernet_embed
    # (m, k, n, count): forward twice (online + target), backward twice (input and weight grads)
    # except the first layer's input grad (data needs none).
    agent = [(rows, X, H, 2 + 1), (rows, H, 3 * H, 2 + 2), (B * N, H, 3 * H, L * (2 + 2)), (rows, H, A, 2 + 2)]
    mixer = [(M, S, He, 2 + 1), (M, He, N * Em, 2 + 2),  # hyper_w_1
             (M, S, He, 2 + 1), (M, He, Em, 2 + 2),  # hyper_w_final
             (M, S, Em, 2 + 1), (M, S, Em, 2 + 1), (M, Em, 1, 2 + 2)]  # hyper_b_1, V
    gemm_s, flops = gemms_time(agent + mixer, reps)
    per_update = c.episodes_per_update * T  # env steps per gradient step at the default ratio
    print(f"QMix ({c.lineage}): batch {B} episodes x {T} steps; one update per {per_update:.0f} env steps")
    print(f"update (real):        {update_s * 1e3:8.1f} ms -> {per_update / update_s:10,.0f} env steps/s (update only)")
    print(f"GEMMs only (bound):   {gemm_s * 1e3:8.1f} ms -> {per_update / gemm_s:10,.0f} env steps/s "
          f"({flops / gemm_s / 1e9:.1f} GFLOP/s achieved, {flops / 1e9:.3f} GFLOP per update)")
    print(f"overhead beyond GEMMs: {100 * (1 - gemm_s / update_s):.0f}% of the update")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", choices=("mappo", "qmix"), default="mappo")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.algo == "qmix":
        qmix_bound(max(args.reps, 20))
        return

    from baselines.mappo import MAPPO, MAPPOConfig
    from marpo_bench.envs import make_env

    cfg = MAPPOConfig()
    env = make_env("jax_mpe", "simple_spread", cfg.num_envs)
    algo = MAPPO(cfg, env.info, "cpu", 0)
    ts = env.reset(0)
    ro, ts, _ = algo.collect(env, ts)
    algo.update(ro, env_steps=5_000_000)
    t0 = time.perf_counter()
    for _ in range(args.reps):
        algo.update(ro, env_steps=5_000_000)
    update_s = (time.perf_counter() - t0) / args.reps
    t0 = time.perf_counter()
    for _ in range(args.reps):
        ro, ts, _ = algo.collect(env, ts)
    collect_s = (time.perf_counter() - t0) / args.reps

    info, h = env.info, cfg.hidden
    T, E, N = cfg.rollout_len, cfg.num_envs, info.num_agents
    actor = [info.obs_dim, h, h, info.num_actions]
    critic = [info.state_dim, h, h, 1]
    # per Linear layer (in i, out o) on ``rows`` rows: forward x W^T, input grad g W, weight grad g^T x
    shapes = [shape for rows, dims in ((T * E * N, actor), (T * E, critic))
              for i, o in zip(dims[:-1], dims[1:], strict=True)
              for shape in ((rows, i, o, 1), (rows, o, i, 1), (o, rows, i, 1))]
    gemm_s, flops = gemms_time(shapes, args.reps)
    gemm_s, flops = cfg.epochs * gemm_s, cfg.epochs * flops
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
