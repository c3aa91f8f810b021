"""Is the one on-policy learner at S = 1 as fast as the single-seed MAPPO/MARPO learner it replaced?

Loads the single-seed learner as it was before the one-learner change (``ppo_core.py``,
``baselines/mappo.py`` and ``algos/marpo.py`` at commit ``--old-ref``, default 0069706, read with
``git show`` into temporary modules) next to today's learner (``OnPolicyAlgorithm.learner()``: the
one learner over one seed), both built with seed 0 from the task's recipe, and times them in one
process, alternating every iteration for ``--iterations`` iterations after 2 warm-up ones, so that
load from other processes falls on both alike: ``collect`` (one rollout) and ``update`` (one PPO
update; today's also writes the stacks back into the member, as ``learn`` does every iteration).

CPU time of the process (``time.process_time``), one torch thread; medians, and the speed ratio
new / old (above 1: faster).

    .venv/bin/python benchmarks/ppo_one_learner_speed.py mappo jax_mpe:simple_spread [--iterations 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parent.parent


def _load(name: str, source: str, folder: Path) -> ModuleType:
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def old_algorithm(algo: str, ref: str, folder: Path) -> type:
    """The single-seed class of ``algo`` at commit ``ref``."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout

    _load("old_ppo_core", show("marpo_bench/algos/ppo_core.py"), folder)
    mappo = _load("old_mappo", show("baselines/mappo.py").replace("from marpo_bench.algos.ppo_core import",
                                                                  "from old_ppo_core import"), folder)
    if algo == "mappo":
        return mappo.MAPPO
    marpo = _load("old_marpo", show("marpo_bench/algos/marpo.py")
                  .replace("from marpo_bench.algos.ppo_core import", "from old_ppo_core import")
                  .replace("from baselines.mappo import", "from old_mappo import"), folder)
    return {"marpo": marpo.MARPO, "marpo_noreflect": marpo.MARPONoReflection}[algo]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("algo", choices=["mappo", "marpo", "marpo_noreflect"])
    ap.add_argument("task", help="family:task, e.g. jax_mpe:simple_spread")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--old-ref", default="0069706")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from marpo_bench.algos import get_algorithm
    from marpo_bench.config import RunSpec
    from marpo_bench.envs import make_env
    from marpo_bench.envs.base import SeedEnvs
    from marpo_bench.recipes import build_config

    family, task = args.task.split(":", 1)
    cfg = build_config(RunSpec(args.algo, family, task, 0, 10**9, ()))
    with tempfile.TemporaryDirectory() as tmp:
        old_cls = old_algorithm(args.algo, args.old_ref, Path(tmp))
        old_env = make_env(family, task, cfg.num_envs, agent_id=cfg.agent_id, trust_imports=True)
        new_env = make_env(family, task, cfg.num_envs, agent_id=cfg.agent_id, trust_imports=True)
        old = old_cls(old_cls.Config(**dataclasses.asdict(cfg)), old_env.info, "cpu", 0)
        learner = get_algorithm(args.algo)(cfg, new_env.info, "cpu", 0).learner()
        seed_envs = SeedEnvs([new_env])
        ts, tss = old_env.reset(0), seed_envs.reset([0])
        times: dict[str, list[float]] = {"old collect": [], "old update": [], "new collect": [], "new update": []}
        steps = 0
        for i in range(args.iterations + 2):
            t0 = time.process_time()
            ro, ts, _ = old.collect(old_env, ts)
            t1 = time.process_time()
            old.update(ro, steps)
            t2 = time.process_time()
            ros, tss, _ = learner.collect(seed_envs, tss)
            t3 = time.process_time()
            learner.update(ros, steps)
            learner.sync_out()
            t4 = time.process_time()
            steps += cfg.num_envs * cfg.rollout_len
            if i >= 2:
                for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    times[key].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.algo} on {args.task} (recipe), {args.iterations} iterations, CPU ms (median):",
          ", ".join(f"{k} {1000 * v:.0f}" for k, v in med.items()))
    total = (med["old collect"] + med["old update"]) / (med["new collect"] + med["new update"])
    print(f"speed new / old: collect {med['old collect'] / med['new collect']:.3f}, "
          f"update {med['old update'] / med['new update']:.3f}, iteration {total:.3f}")


if __name__ == "__main__":
    main()
