"""MAPPO and MARPO have one learner (marpo_bench.algos.ppo_learner.OnPolicyLearner): a single run is
that learner at S = 1, and it reproduces the single-seed learner it replaced on a recorded slice."""

from __future__ import annotations

import json
import math

import pytest

from tests.ppo_slice import CONFIGS, SLICE, run

# The slice was recorded in float64 (tests/ppo_slice.py). Float64 rounds at 1.1e-16 and three PPO
# iterations amplify a rounding difference by at most about 2e4 (tests/test_seed_batch.py's
# F64_ATOL), so another CPU's summation order moves a checksum by under 1e-11 relative; a change of
# the math (a sampled action, a minibatch, an advantage statistic) moves it by 1e-6 or more.
REL = 1e-9


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == pytest.approx(b, rel=REL, abs=REL)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_single_run_on_the_one_learner_reproduces_the_recorded_single_seed_learner(name):
    recorded = json.loads(SLICE.read_text())[name]
    got = json.loads(json.dumps(run(name), allow_nan=True))
    assert [s for s, _ in got["log"]] == [s for s, _ in recorded["log"]]
    for (_, a), (_, b) in zip(got["log"], recorded["log"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert _close(a[key], b[key]), (key, a[key], b[key])
    for key in recorded:
        assert _close(got[key], recorded[key]), key
