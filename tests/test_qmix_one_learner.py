"""The one QMix learner at S = 1 is the single-seed QMix it replaced: it reproduces a recorded
slice of the unbatched learner (tests/qmix_slice.py, recorded before the change) and resumes a
checkpoint that learner wrote."""

from __future__ import annotations

import json
import math

import pytest
import torch

from baselines.qmix import QMix
from baselines.qmix_recipes import QMixConfig
from tests import qmix_slice

RECORDED = json.loads(qmix_slice.SLICE.read_text())


def _close(got, want, rel: float = 1e-6, abs_: float = 1e-9) -> bool:
    if isinstance(want, list):
        return len(got) == len(want) and all(_close(g, w, rel, abs_) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(_close(got[k], want[k], rel, abs_) for k in want)
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    return got == pytest.approx(want, rel=rel, abs=abs_)


@pytest.mark.parametrize("name", sorted(qmix_slice.CONFIGS))
def test_one_seed_of_the_one_learner_reproduces_the_recorded_single_seed_run(name):
    """Float64 (machine-independent within the tolerance): every logged metric, every parameter's
    checksums (online and target networks), the counters, the standardiser and the optimiser's
    step count equal the unbatched learner's (on the machine that recorded them: bit for bit)."""
    got = json.loads(json.dumps(qmix_slice.run(name)))  # the recorded file's types (tuples -> lists)
    want = RECORDED[name]
    assert got.keys() == want.keys()
    assert [s for s, _ in got["log"]] == [s for s, _ in want["log"]]
    assert got["counters"] == want["counters"] and got["opt_steps"] == want["opt_steps"]
    for key in want:
        assert _close(got[key], want[key]), key


def test_a_checkpoint_the_single_seed_learner_wrote_loads_resumes_and_matches_a_fresh_run():
    """``tests/data/qmix_checkpoint.pt`` (float32, written by the unbatched learner): it loads into
    today's QMix (every entry of the state_dict round-trips), resumes learning from its env step,
    and a fresh run of its configuration trains to the same parameters (bit for bit on the
    recording machine; float32 summation order may differ elsewhere)."""
    sd = torch.load(qmix_slice.CHECKPOINT_PT, weights_only=True)
    name, steps, smaller = qmix_slice.CHECKPOINT
    cfg = QMixConfig(**sd["config"])
    assert cfg == qmix_slice.config(name, **smaller).resolved()
    env = qmix_slice.make_env(qmix_slice.CONFIGS[name][0], cfg.num_envs)
    algo = QMix(cfg, env.info, "cpu", 0)
    algo.load_state_dict(sd)
    again = algo.state_dict()
    assert again.keys() == sd.keys()
    for key in ("agent", "mixer", "target_agent", "target_mixer", "reward_ms"):
        assert all(torch.equal(again[key][n], sd[key][n]) for n in sd[key]), key
    assert again["opt"]["state"].keys() == sd["opt"]["state"].keys()
    for i, st in sd["opt"]["state"].items():
        assert all(torch.equal(again["opt"]["state"][i][k], v) for k, v in st.items())
    assert torch.equal(again["gen"], sd["gen"]) and again["np_rng"] == sd["np_rng"]
    assert (again["t_env"], again["episodes"], again["updates"]) == (sd["t_env"], sd["episodes"], sd["updates"]) == (
        steps, 12, 6)
    # a fresh run of the same configuration and seed reaches the recorded parameters
    fresh = QMix(cfg, env.info, "cpu", 0)
    fresh.learn(env, steps, 0, lambda s, m: None)
    for key in ("agent", "mixer", "target_agent", "target_mixer"):
        for n, want in sd[key].items():
            torch.testing.assert_close(fresh.state_dict()[key][n], want, atol=1e-5, rtol=1e-4)
    # resumed from its env step, it trains on
    calls: list[int] = []
    before = algo.agent.fc1.weight.detach().clone()
    algo.learn(env, steps + 200, 0, lambda s, m: calls.append(s), start_steps=steps)
    assert calls and calls[-1] == steps + 200 and algo.updates > sd["updates"]
    assert not torch.equal(algo.agent.fc1.weight, before)
    assert all(torch.isfinite(p).all() for p in algo.params)
    env.close()
