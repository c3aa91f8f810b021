"""What does MARPO's objective cost over MAPPO's? Their updates timed alternately in one process.

Both learners update on the same rollout (jax_mpe simple_spread, the default MPE config: 128 envs x
25 steps, 10 epochs, 1 minibatch), alternating MAPPO, MARPO, MAPPO, ... so that a noisy neighbour
slows both alike; separate `marpo-bench bench` rows, measured minutes apart, can differ by 30% on a
shared machine. Prints the median update time of each and their ratio.

    python benchmarks/marpo_overhead.py [--reps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import marpo_bench  # noqa: F401  (sets passive OpenMP waiting before torch loads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from baselines.mappo import MAPPO, MAPPOConfig
    from marpo_bench.algos.marpo import MARPO, MARPOConfig
    from marpo_bench.envs import make_env

    env = make_env("jax_mpe", "simple_spread", MAPPOConfig().num_envs)
    learners = {"mappo": MAPPO(MAPPOConfig(), env.info, "cpu", 0), "marpo": MARPO(MARPOConfig(), env.info, "cpu", 0)}
    ro, _, _ = learners["mappo"].collect(env, env.reset(0))
    for learner in learners.values():
        learner.update(ro, env_steps=5_000_000)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in learners}
    for _ in range(args.reps):
        for name, learner in learners.items():
            t0 = time.perf_counter()
            learner.update(ro, env_steps=5_000_000)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"threads={args.threads} reps={args.reps}: median update MAPPO {med['mappo']:.1f} ms, "
          f"MARPO {med['marpo']:.1f} ms, MARPO / MAPPO = {med['marpo'] / med['mappo']:.3f}")


if __name__ == "__main__":
    main()
