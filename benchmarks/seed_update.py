"""Does batching seeds make QMix's update cheaper per seed on this machine?

In one process, on episodes collected from jax_mpe simple_spread with random actions, at QMix's
default MPE config: one single-seed update (the one learner, ``QMixSeeds``, at S = 1) on B = 32,
64, 128 and 256 episodes, and one update of S = 4 and 8 seeds batched (32 episodes each). If the
update were mostly per-op overhead, 256 episodes would cost little more than 32 and the S = 8
batched update little more than one; if it is arithmetic and memory traffic, both grow about
linearly, and batching cannot gain much (README, "Seeds as one batched learner").

    python benchmarks/seed_update.py [--threads 1] [--reps 8]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

import marpo_bench  # noqa: F401  (sets passive OpenMP waiting before torch loads)
from baselines.qmix import QMix
from baselines.qmix_replay import EpisodeReplay
from marpo_bench.config import RunSpec
from marpo_bench.envs import make_env
from marpo_bench.recipes import build_config


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = build_config(RunSpec("qmix", "jax_mpe", "simple_spread", 0, 10**6))
    env = make_env("jax_mpe", "simple_spread", cfg.num_envs, agent_id=cfg.agent_id)
    one = QMix.batched(copy.deepcopy(cfg), env.info, "cpu", [0])
    single = one.members[0]
    replay = EpisodeReplay(cfg.buffer_size, cfg.num_envs, env.info, "cpu")
    ts, state = env.reset(0), single.initial_act_state(cfg.num_envs)
    for _ in range(env.info.episode_limit * 40):  # 320 episodes
        replay.add_obs(ts)
        actions, state = single.act(ts, state, deterministic=False)
        nxt = env.step(actions)
        replay.add_step(actions, nxt)
        ts = nxt
    rng = np.random.default_rng(0)
    print(f"QMix update on jax_mpe simple_spread, {args.threads} torch thread(s), mean of {args.reps}:")
    for B in (32, 64, 128, 256):
        batch = replay.sample(B, rng)
        print(f"  one seed, {B:>3} episodes: {timed(lambda b=batch: one.update([b]), args.reps):7.1f} ms")
    for S in (4, 8):
        stack = QMix.batched(copy.deepcopy(cfg), env.info, "cpu", list(range(S)))
        batches = [replay.sample(32, rng) for _ in range(S)]
        ms = timed(lambda s=stack, b=batches: s.update(b), args.reps)
        print(f"  {S} seeds batched, 32 episodes each: {ms:7.1f} ms")


if __name__ == "__main__":
    main()
