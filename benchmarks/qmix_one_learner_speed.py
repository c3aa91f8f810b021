"""Is the one QMix learner at S = 1 as fast as the single-seed QMix it replaced?

Loads the single-seed learner as it was before the one-learner change (``baselines/qmix.py`` at
commit ``--old-ref``, default 9496aff, read with ``git show`` into a temporary module) next to
today's ``QMix`` (the one learner over one seed), and times both in one process, alternating
them ``--rounds`` times so that load from other processes falls on both alike:

- ``learn``: ``QMix.learn`` of the jax_mpe:simple_spread recipe (8 envs, 32-episode batches, one
  update per episode) for ``--iterations`` iterations after the 4 warm-up iterations that fill
  the first batch: collection, acting, updates, the iteration's bookkeeping;
- ``update``: ``--updates`` gradient updates on the same sampled batches (the learning rule alone).

CPU time of the process (``time.process_time``), one torch thread; medians over the rounds, and
the ratio new / old of the medians. Both learners also end with the same parameters (checked).

    .venv/bin/python benchmarks/qmix_one_learner_speed.py [--rounds 7] [--iterations 8] [--updates 40]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

import marpo_bench  # noqa: F401  (sets passive OpenMP waiting before torch loads)
from baselines.qmix import QMix
from baselines.qmix_replay import EpisodeReplay
from marpo_bench.config import RunSpec
from marpo_bench.envs import make_env
from marpo_bench.recipes import build_config

REPO = Path(__file__).resolve().parent.parent


def old_module(ref: str) -> ModuleType:
    """``baselines/qmix.py`` at ``ref`` as a module of its own."""
    src = subprocess.run(["git", "show", f"{ref}:baselines/qmix.py"], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    path = Path(tempfile.mkdtemp()) / "qmix_before_one_learner.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("qmix_before_one_learner", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def time_learn(cls: type, cfg, steps: int) -> tuple[float, dict]:
    env = make_env("jax_mpe", "simple_spread", cfg.num_envs, device="cpu", agent_id=True)
    algo = cls(copy.deepcopy(cfg), env.info, "cpu", 0)
    t0 = time.process_time()
    algo.learn(env, steps, 0, lambda s, m: None)
    took = time.process_time() - t0
    env.close()
    return took, algo.state_dict()


def time_updates(cls: type, cfg, info, batches: list) -> float:
    """The old learner's ``update(batch)``; the one learner's ``update([batch])`` at S = 1."""
    if cls is QMix:
        step = QMix.batched(copy.deepcopy(cfg), info, "cpu", [0]).update
        batches = [[b] for b in batches]
    else:
        step = cls(copy.deepcopy(cfg), info, "cpu", 0).update
    t0 = time.process_time()
    for b in batches:
        step(b)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-ref", default="9496aff")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--updates", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    old = old_module(args.old_ref)
    cfg = build_config(RunSpec("qmix", "jax_mpe", "simple_spread", 0, 10**6))
    env = make_env("jax_mpe", "simple_spread", cfg.num_envs, device="cpu", agent_id=True)
    E, T = cfg.num_envs, env.info.episode_limit
    steps = E * T * (4 + args.iterations)
    # batches of random-policy episodes for the update timing (the update's cost does not depend on them)
    replay = EpisodeReplay(256, E, env.info, torch.device("cpu"))
    ts = env.reset(0)
    g = torch.Generator().manual_seed(0)
    while replay.size < 64:
        replay.add_obs(ts)
        a = torch.rand(ts.avail_actions.shape, generator=g).masked_fill(~ts.avail_actions, -1.0).argmax(-1)
        ts = env.step(a)
        replay.add_step(a, ts)
    rng = np.random.default_rng(0)
    batches = [replay.sample(cfg.batch_size, rng) for _ in range(args.updates)]
    env.close()
    for cls in (old.QMix, QMix):  # warm-up: JAX compilation, allocator
        time_learn(cls, cfg, E * T * 5)
        time_updates(cls, cfg, env.info, batches[:4])
    learn: dict[str, list[float]] = {"old": [], "new": []}
    update: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(args.rounds):
        order = [("old", old.QMix), ("new", QMix)] if r % 2 == 0 else [("new", QMix), ("old", old.QMix)]
        states = {}
        for name, cls in order:
            took, states[name] = time_learn(cls, cfg, steps)
            learn[name].append(took)
            update[name].append(time_updates(cls, cfg, env.info, batches))
        same = all(torch.equal(states["old"][k][n], states["new"][k][n])
                   for k in ("agent", "mixer", "target_agent", "target_mixer") for n in states["old"][k])
        print(f"round {r}: learn old {learn['old'][-1]:.2f} s, new {learn['new'][-1]:.2f} s; "
              f"{args.updates} updates old {update['old'][-1]:.2f} s, new {update['new'][-1]:.2f} s; "
              f"parameters bitwise equal: {same}")
    for what, d in (("learn", learn), ("update", update)):
        mo, mn = statistics.median(d["old"]), statistics.median(d["new"])
        print(f"{what:>6}: median old {mo:.3f} s, new {mn:.3f} s, new / old = {mn / mo:.3f}")


if __name__ == "__main__":
    main()
