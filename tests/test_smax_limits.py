"""SMAX episode ends at the step limit: a battle that is decided on the last allowed step ended by
termination (no bootstrap), not by the time limit; only a battle still undecided is truncated."""

from __future__ import annotations

import pytest
import torch

E = 8  # the E of test_smax.py: 3m compiles once per (task, E) per process


@pytest.fixture(scope="module")
def env():
    from marpo_bench.envs.smax import SMAXVecEnv

    env = SMAXVecEnv("3m", E)
    yield env
    env.close()


def test_battle_decided_on_the_last_allowed_step_is_terminated_not_truncated(env):
    from marpo_bench.envs.smax import NOOP_ACTION

    env.reset(1)
    c = env._carry
    s = c.states.state
    h = s.unit_health
    step = s.step.at[:4].set(99)  # envs 0-3 take their 100th (last allowed) step now
    h = h.at[0, 3:].set(0.0)  # env 0: every enemy dead on the last step -> won, terminated
    h = h.at[1, :3].set(0.0)  # env 1: every ally dead on the last step -> lost, terminated
    h = h.at[2, :3].set(0.0).at[2, 3:].set(0.0)  # env 2: both teams dead: a draw, terminated
    # env 3: both teams alive at the limit -> truncated; envs 4-7: mid-episode, nothing ends
    env._carry = c._replace(states=c.states.replace(state=s.replace(unit_health=h, step=step)))
    ts = env.step(torch.full((E, 3), NOOP_ACTION))
    assert ts.terminated[:4].tolist() == [True, True, True, False]
    assert ts.truncated[:4].tolist() == [False, False, False, True]
    assert ts.won[:4].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert not ts.done[4:].any()
    assert not (ts.terminated & ts.truncated).any()
