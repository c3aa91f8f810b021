"""Env throughput under uniform-random available actions: mpe (mpe2) vs jax_mpe (JaxMARL).

Env steps = step calls x E (every parallel env counts; one env step moves all N agents once).
Actions are drawn in torch from ``avail_actions`` each step and passed through the wrapper, and
observations and rewards are consumed (summed), as a learner would; warm-up (including JIT
compilation) is excluded from the timing.

Torch runs with one intra-op thread by default (``--torch-threads``): on a busy 2-core machine,
OpenMP's barriers made each small torch op (sampling actions, summing obs) cost ~8 ms once the
tensors are big enough to be split across threads (E >= 1024 here), which measures the machine's
load rather than the envs.

    python benchmarks/env_throughput.py [--task simple_spread] [--seconds 2]   # package installed
"""

from __future__ import annotations

import argparse
import time

import torch

from marpo_bench.envs import make_env

CONFIGS: tuple[tuple[str, int], ...] = (
    ("mpe", 1),
    ("mpe", 8),
    ("jax_mpe", 64),
    ("jax_mpe", 256),
    ("jax_mpe", 1024),
    ("jax_mpe", 4096),
)
WARMUP_STEPS = 30  # more than one 25-step episode, so the auto-reset path is warm too


def random_available(avail: torch.Tensor) -> torch.Tensor:
    """Uniform over available actions: argmax of i.i.d. uniforms restricted to the mask."""
    return torch.where(avail, torch.rand(avail.shape), -1.0).argmax(-1)


def measure(family: str, task: str, num_envs: int, seconds: float) -> tuple[float, int, float]:
    """Return (env steps/s, agents, checksum) for one configuration."""
    env = make_env(family, task, num_envs)
    ts = env.reset(seed=0)
    checksum = 0.0
    for _ in range(WARMUP_STEPS):
        ts = env.step(random_available(ts.avail_actions))
        checksum += float(ts.obs.sum() + ts.reward.sum())
    steps = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        for _ in range(10):
            ts = env.step(random_available(ts.avail_actions))
            checksum += float(ts.obs.sum() + ts.reward.sum())  # consume the outputs
        steps += 10
        elapsed = time.perf_counter() - start
    env.close()
    return steps * num_envs / elapsed, env.info.num_agents, checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="simple_spread")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    print(f"task {args.task}, torch threads {torch.get_num_threads()}, {args.seconds:g} s per row")
    print(f"{'family':<8} {'E':>5} {'env steps/s':>12} {'agent steps/s':>14} {'ms/step call':>13}")
    for family, num_envs in CONFIGS:
        rate, agents, _ = measure(family, args.task, num_envs, args.seconds)
        ms = 1000.0 * num_envs / rate
        print(f"{family:<8} {num_envs:>5} {rate:>12,.0f} {rate * agents:>14,.0f} {ms:>13.3f}", flush=True)


if __name__ == "__main__":
    main()
