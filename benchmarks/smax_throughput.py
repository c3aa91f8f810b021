"""SMAX throughput: the torch-facing wrapper (``SMAXVecEnv``) vs raw JaxMARL, measured in one run.

- wrapper: uniform-random available actions drawn in torch from ``avail_actions``, passed through
  ``SMAXVecEnv.step`` (one jitted call + DLPack exchange per step), observations and rewards
  consumed (summed in torch), as a learner would.
- raw: the same JaxMARL env (``HeuristicEnemySMAX`` with the wrapper's settings) stepped by one
  jitted ``vmap(env.step)`` per step (JaxMARL's own auto-reset), random available actions drawn in
  JAX inside that call, observations (per-agent and world state) and rewards summed into an
  accumulator returned by the call, so XLA cannot remove the work. Calls are dispatched
  asynchronously and the accumulator is synchronised every 10 steps: raw JAX at its best.

Env steps = step calls x E. Compilation and warm-up are excluded. Wrapper and raw are timed
alternately, ``--rounds`` times, and the best round of each is kept (the machine is shared).
Torch uses one intra-op thread (``--torch-threads``; see ``env_throughput.py`` for why).

    python benchmarks/smax_throughput.py [--seconds 2] [--rounds 3] [--tasks 3m,smacv2_5_units] [--envs 64,1024]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from marpo_bench.envs.smax import SMAX_ENV_KWARGS, SMAXVecEnv, _jaxmarl

WARMUP_STEPS = 20


def random_available(avail: torch.Tensor) -> torch.Tensor:
    """Uniform over available actions: argmax of i.i.d. uniforms restricted to the mask."""
    return torch.where(avail, torch.rand(avail.shape), -1.0).argmax(-1)


def timed(step: Callable[[], Any], sync: Callable[[], Any], seconds: float) -> tuple[int, float]:
    """Call ``step`` in blocks of 10 (then ``sync``) until ``seconds`` have passed."""
    steps, start, elapsed = 0, time.perf_counter(), 0.0
    while elapsed < seconds:
        for _ in range(10):
            step()
        sync()
        steps += 10
        elapsed = time.perf_counter() - start
    return steps, elapsed


class Wrapper:
    def __init__(self, task: str, num_envs: int) -> None:
        self.env = SMAXVecEnv(task, num_envs)
        self.ts = self.env.reset(seed=0)
        self.checksum = 0.0
        for _ in range(WARMUP_STEPS):
            self.step()

    def step(self) -> None:
        self.ts = self.env.step(random_available(self.ts.avail_actions))
        self.checksum += float(self.ts.obs.sum() + self.ts.state.sum() + self.ts.reward.sum())

    def sync(self) -> None:
        pass  # step() already consumed every output


class Raw:
    def __init__(self, task: str, num_envs: int) -> None:
        jaxmarl = _jaxmarl()
        import jax
        import jax.numpy as jnp
        from jaxmarl.environments.smax import map_name_to_scenario

        env = jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario(task), **SMAX_ENV_KWARGS)
        agents = list(env.agents)
        E = num_envs

        def step(key: Any, states: Any, acc: Any) -> tuple[Any, Any, Any]:
            key, k_act, k_step = jax.random.split(key, 3)
            avail = jax.vmap(env.get_avail_actions)(states)
            keys = jax.random.split(k_act, len(agents))
            actions = {  # uniform over available actions (Gumbel-max on the mask)
                a: jnp.argmax(jnp.where(avail[a] > 0, jax.random.uniform(k, avail[a].shape), -1.0), axis=-1)
                for k, a in zip(keys, agents, strict=True)
            }
            obs, states, rew, _, _ = jax.vmap(env.step)(jax.random.split(k_step, E), states, actions)
            acc = acc + sum(obs[a].sum() for a in agents) + obs["world_state"].sum() + rew[agents[0]].sum()
            return key, states, acc

        _, states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), E))
        self._jax = jax
        self._step = jax.jit(step)
        self.carry = (jax.random.PRNGKey(1), states, jnp.zeros((), jnp.float32))
        for _ in range(WARMUP_STEPS):
            self.step()
        self.sync()

    def step(self) -> None:
        self.carry = self._step(*self.carry)

    def sync(self) -> None:
        self.checksum = float(self.carry[2])  # blocks until the queued steps are done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="3m,smacv2_5_units")
    parser.add_argument("--envs", default="64,1024", help="comma-separated numbers of parallel envs")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrapper/raw rounds (best kept)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    print(f"torch threads {torch.get_num_threads()}, {args.seconds:g} s x {args.rounds} rounds per cell, best kept")
    print(f"{'task':<16} {'E':>5} {'wrapper steps/s':>16} {'raw steps/s':>12} {'wrapper/raw':>12}")
    for task in args.tasks.split(","):
        for num_envs in (int(e) for e in args.envs.split(",")):
            wrapper, raw = Wrapper(task, num_envs), Raw(task, num_envs)
            best = {"wrapper": 0.0, "raw": 0.0}
            for _ in range(args.rounds):
                for name, impl in (("wrapper", wrapper), ("raw", raw)):
                    steps, elapsed = timed(impl.step, impl.sync, args.seconds)
                    best[name] = max(best[name], steps * num_envs / elapsed)
            ratio = best["wrapper"] / best["raw"]
            print(f"{task:<16} {num_envs:>5} {best['wrapper']:>16,.0f} {best['raw']:>12,.0f} {ratio:>11.0%}",
                  flush=True)
            wrapper.env.close()


if __name__ == "__main__":
    main()
