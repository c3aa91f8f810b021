"""A recorded slice of the single-seed QMix learner (tests/test_qmix_one_learner.py).

``python -m tests.qmix_slice`` re-records the two files below with whatever ``QMix`` is in the
tree. They were recorded with the unbatched single-seed learner (``QMix.learn`` of
``baselines/qmix.py`` before the one-learner change, commit 9496aff), so they are what the one
learner must reproduce at S = 1:

- ``tests/data/qmix_single_seed_slice.json``: each configuration of ``CONFIGS`` trained in float64
  (a float64 learner rounds far below the tolerance of the comparison, so the slice holds on any
  CPU), summarised as weighted checksums of every parameter, the logged metrics and the counters;
- ``tests/data/qmix_checkpoint.pt``: the ``state_dict`` of one float32 run (``CHECKPOINT``), the
  checkpoint format stored runs hold: it must load into today's QMix and resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).parent / "data"
SLICE = DATA / "qmix_single_seed_slice.json"
CHECKPOINT_PT = DATA / "qmix_checkpoint.pt"
SMALL = {"num_envs": 4, "batch_size": 4, "buffer_size": 32, "epsilon_anneal_steps": 300, "rnn_hidden_dim": 16,
         "mixing_embed_dim": 8, "hypernet_embed": 16}
# name -> (env, env steps, settings): pymarl's GRU agent with the last action, RMSprop and hard
# target copies; MPE's recipe with TD(lambda), running standardisation and soft targets; the
# feed-forward agent with one-layer hypernetworks and per-batch standardisation on episodes of
# every length (terminated, truncated, a dead agent: the padding and death masks).
CONFIGS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "pymarl_gru": ("spread", 400, {"lineage": "pymarl", "target_update_interval": 8}),
    "mpe_recipe_lambda_soft": ("spread", 400, {"lineage": "epymarl", "use_rnn": True, "td_lambda": 0.6,
                                               "standardise_rewards": True, "bootstrap_truncation": False,
                                               "episodes_per_update": 1.0, "target_update": "soft"}),
    "ff_batch_stats_counting": ("counting", 200, {"lineage": "epymarl", "standardise_rewards": True,
                                                  "reward_stats": "batch", "hypernet_layers": 1,
                                                  "num_envs": 5, "target_update_interval": 4}),
}
CHECKPOINT = ("pymarl_gru", 300, {"rnn_hidden_dim": 8, "mixing_embed_dim": 4, "hypernet_embed": 8})  # float32


class Float64Env:
    """``env``'s float outputs as float64."""

    def __init__(self, env: Any) -> None:
        self.env, self.info = env, env.info

    @staticmethod
    def _cast(ts: Any) -> Any:
        return dataclasses.replace(ts, **{f.name: getattr(ts, f.name).double() for f in dataclasses.fields(ts)
                                          if getattr(ts, f.name).is_floating_point()})

    def reset(self, seed: int) -> Any:
        return self._cast(self.env.reset(seed))

    def step(self, actions: torch.Tensor) -> Any:
        return self._cast(self.env.step(actions))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


@contextlib.contextmanager
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def make_env(kind: str, num_envs: int) -> Any:
    if kind == "spread":
        from marpo_bench.envs import make_env as make

        return make("jax_mpe", "simple_spread", num_envs, device="cpu", agent_id=True)
    from tests.test_qmix import CountingEnv

    return CountingEnv(num_envs=num_envs, T=5)


def checksum(t: torch.Tensor) -> list[float]:
    """Sum and a fixed pseudo-random weighting of ``t``'s entries: any change of an entry moves it."""
    flat = t.detach().double().reshape(-1)
    w = torch.rand(flat.numel(), generator=torch.Generator().manual_seed(flat.numel()), dtype=torch.float64)
    return [float(flat.sum()), float((flat * w).sum())]


def config(name: str, **changes: Any) -> Any:
    from baselines.qmix_recipes import QMixConfig

    return QMixConfig(**{**SMALL, **CONFIGS[name][2], **changes})


def run(name: str, seed: int = 3) -> dict:
    """The summary of configuration ``name`` trained by ``QMix.learn`` (float64, seed ``seed``)."""
    from baselines.qmix import QMix

    kind, steps, _ = CONFIGS[name]
    with float64():
        cfg = config(name)
        env = Float64Env(make_env(kind, cfg.num_envs))
        algo = QMix(cfg, env.info, "cpu", seed)
        log: list = []
        algo.learn(env, steps, seed, lambda st, m: log.append([st, dict(sorted(m.items()))]))
        nets = {k: getattr(algo, k) for k in ("agent", "mixer", "target_agent", "target_mixer")}
        return {"log": log,
                **{k: {n: checksum(p) for n, p in net.named_parameters()} for k, net in nets.items()},
                "counters": [algo.t_env, algo.episodes, algo.updates, algo.last_target_update_episode,
                             algo.update_credit],
                "reward_ms": [float(algo.reward_ms.mean), float(algo.reward_ms.var), float(algo.reward_ms.count)],
                "opt_steps": sorted({float(s["step"]) for s in algo.opt.state_dict()["state"].values()})}


def checkpoint() -> dict:
    """A float32 run's ``state_dict`` (``CHECKPOINT``: configuration, env steps, smaller networks;
    seed 0)."""
    from baselines.qmix import QMix

    name, steps, smaller = CHECKPOINT
    cfg = config(name, **smaller)
    env = make_env(CONFIGS[name][0], cfg.num_envs)
    algo = QMix(cfg, env.info, "cpu", 0)
    algo.learn(env, steps, 0, lambda st, m: None)
    return algo.state_dict()


if __name__ == "__main__":
    torch.set_num_threads(1)
    data = {name: run(name) for name in CONFIGS}
    SLICE.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")
    torch.save(checkpoint(), CHECKPOINT_PT)
    print(f"wrote {SLICE} and {CHECKPOINT_PT}")
