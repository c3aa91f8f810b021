"""A recorded slice of the single-seed MAPPO/MARPO learner (tests/test_one_learner.py).

``python -m tests.ppo_slice`` re-records ``tests/data/ppo_single_seed_slice.json``: three PPO
iterations of each configuration below on a scripted float64 env, with the learner in float64,
summarised as weighted checksums of every parameter and the logged metrics. It was recorded with
the unbatched single-seed learner (``OnPolicyAlgorithm.learn`` before the one-learner change,
commit 0069706), so the file is what the one learner must reproduce at S = 1."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

from tests.helpers import ScriptedEnv

SLICE = Path(__file__).parent / "data" / "ppo_single_seed_slice.json"
CONFIGS = {
    "mappo_gru": ("mappo", {"recurrent": True, "recurrent_critic": True, "activation": "tanh"}),
    "marpo_gru_2mb": ("marpo", {"recurrent": True, "recurrent_critic": True, "minibatches": 2}),
    "mappo_per_agent": ("mappo", {"recurrent": True, "recurrent_critic": True, "share_policy": False}),
    "marpo_mlp": ("marpo", {"recurrent": False, "recurrent_critic": False, "bootstrap_truncation": True}),
}
BASE = {"num_envs": 4, "rollout_len": 10, "chunk_len": 5, "epochs": 3, "hidden": 16}
ITERATIONS = 3


class Float64Env:
    """``env``'s float outputs as float64."""

    def __init__(self, env) -> None:
        self.env, self.info = env, env.info

    @staticmethod
    def _cast(ts):
        return dataclasses.replace(ts, **{f.name: getattr(ts, f.name).double() for f in dataclasses.fields(ts)
                                          if getattr(ts, f.name).is_floating_point()})

    def reset(self, seed: int):
        return self._cast(self.env.reset(seed))

    def step(self, actions):
        return self._cast(self.env.step(actions))

    def __getattr__(self, name: str):
        return getattr(self.env, name)


def scripted_env() -> Float64Env:
    """A 4-env script of 30 steps: random values and rewards, some episodes terminated, some
    truncated (so both bootstraps and the recurrent resets are exercised)."""
    g = torch.Generator().manual_seed(7)
    T, E = BASE["rollout_len"] * ITERATIONS, BASE["num_envs"]
    term = torch.rand(T, E, generator=g) < 0.08
    trunc = (torch.rand(T, E, generator=g) < 0.08) & ~term
    return Float64Env(ScriptedEnv(torch.randn(T + 1, E, generator=g), torch.randn(T, E, generator=g), term, trunc,
                                  torch.randn(T, E, generator=g), N=2, A=3, obs_dim=3))


@contextlib.contextmanager
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def checksum(t: torch.Tensor) -> list[float]:
    """Sum and a fixed pseudo-random weighting of ``t``'s entries: any change of an entry moves it."""
    flat = t.detach().double().reshape(-1)
    w = torch.rand(flat.numel(), generator=torch.Generator().manual_seed(flat.numel()), dtype=torch.float64)
    return [float(flat.sum()), float((flat * w).sum())]


def run(name: str, seed: int = 3) -> dict:
    """The summary of ``ITERATIONS`` iterations of configuration ``name`` (seed ``seed``)."""
    from marpo_bench.algos import get_algorithm

    algo, sets = CONFIGS[name]
    cls = get_algorithm(algo)
    with float64():
        env = scripted_env()
        learner = cls(cls.Config(**BASE, **sets), env.info, "cpu", seed)
        log: list = []
        learner.learn(env, BASE["num_envs"] * BASE["rollout_len"] * ITERATIONS, seed,
                      lambda st, m: log.append([st, dict(sorted(m.items()))]))
        sd = learner.state_dict()
        out = {"log": log,
               "actor": {n: checksum(p) for n, p in learner.actor.named_parameters()},
               "critic": {n: checksum(p) for n, p in learner.critic.named_parameters()},
               "value_norm": None if sd["value_norm"] is None else float(sd["value_norm"]["mean"]),
               "rollout_h": None if sd["rollout_h"] is None else checksum(sd["rollout_h"]),
               "rollout_hc": None if sd["rollout_hc"] is None else checksum(sd["rollout_hc"])}
        if algo == "marpo":
            out["delta"] = float(learner.delta)
    return out


if __name__ == "__main__":
    data = {name: run(name) for name in CONFIGS}
    SLICE.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")
    print(f"wrote {SLICE}")
