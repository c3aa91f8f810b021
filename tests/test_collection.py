"""PPO data collection (``collect``) on a scripted env whose critic is a known function of the state:
which steps bootstrap, from which state, and which do not (docs/algorithms.md, pitfalls: a time limit is truncation,
not termination)."""

from __future__ import annotations

import pytest
import torch

from baselines.mappo import MAPPO, MAPPOConfig
from tests.helpers import ScriptedEnv, install_known_nets, make_config

# Two envs, four steps, reward 1 at every step, V(s) = s[0] (``StateCritic``), gamma 0.5, lambda 0.9.
# env 0: s = 1, 2 | time limit after step 1, final state 10 | new episode s = 100, 3, then 4 (bootstrap)
# env 1: s = 5, 6, 7 | battle ends at step 2 (final state 8: never read) | new episode s = 50, then 60
VALUES = [[1.0, 5.0], [2.0, 6.0], [100.0, 7.0], [3.0, 50.0], [4.0, 60.0]]  # [T+1, E]: s_t[0]
TERMINATED = [[False, False], [False, False], [False, True], [False, False]]
TRUNCATED = [[False, False], [True, False], [False, False], [False, False]]
FINAL = [[0.0, 0.0], [10.0, 0.0], [0.0, 8.0], [0.0, 0.0]]


def _collect(**cfg_fields):
    env = ScriptedEnv(VALUES, torch.ones(4, 2), TERMINATED, TRUNCATED, FINAL)
    cfg = make_config(MAPPOConfig, num_envs=2, rollout_len=4, gamma=0.5, gae_lambda=0.9, value_norm=False,
                      recurrent=False, recurrent_critic=False, **cfg_fields)
    algo = MAPPO(cfg, env.info, "cpu", seed=0)
    install_known_nets(algo, critic=True)
    ro, ts, finished = algo.collect(env, env.reset(0))
    return ro, ts, finished


def test_collect_bootstraps_a_time_limit_from_the_final_state_and_a_battle_end_from_nothing():
    # bootstrap_truncation=True is today's class default (on-policy's recipes turn it off).
    ro, ts, finished = _collect(bootstrap_truncation=True)
    # delta_t = r + 0.5 * (1 - term_t) * V(s'_t) - V(s_t); A_t = delta_t + 0.45 * (1 - done_t) * A_{t+1}
    # env 0: d0 = 1 + 0.5*2 - 1 = 1;  d1 = 1 + 0.5*10 - 2 = 4 (V(final state), not V(100));
    #        d2 = 1 + 0.5*3 - 100 = -97.5;  d3 = 1 + 0.5*4 - 3 = 0 (V of the state after the rollout)
    #        A = [1 + 0.45*4, 4, -97.5 + 0.45*0, 0] = [2.8, 4, -97.5, 0]
    # env 1: d0 = 1 + 3 - 5 = -1;  d1 = 1 + 3.5 - 6 = -1.5;  d2 = 1 + 0 - 7 = -6 (terminal);  d3 = 1 + 30 - 50 = -19
    #        A = [-1 + 0.45*(-4.2), -1.5 + 0.45*(-6), -6, -19] = [-2.89, -4.2, -6, -19]
    adv = torch.tensor([[2.8, -2.89], [4.0, -4.2], [-97.5, -6.0], [0.0, -19.0]])
    torch.testing.assert_close(ro.advantages, adv)
    values = torch.tensor([[1.0, 5.0], [2.0, 6.0], [100.0, 7.0], [3.0, 50.0]])
    torch.testing.assert_close(ro.values, values)
    torch.testing.assert_close(ro.returns, adv + values)
    assert ro.terminated.tolist() == TERMINATED
    assert ro.done.tolist() == [[False, False], [True, False], [False, True], [False, False]]
    assert finished == [2.0, 3.0]  # env 0's 2-step episode ends first, then env 1's 3-step one
    assert float(ts.state[0, 0]) == 4.0 and float(ts.state[1, 0]) == 60.0


def test_collect_without_time_limit_bootstrap_ends_the_return_at_the_time_limit():
    if "bootstrap_truncation" not in MAPPOConfig.__dataclass_fields__:
        pytest.skip("PPOConfig has no bootstrap_truncation yet")
    ro, _, _ = _collect(bootstrap_truncation=False)
    # on-policy (use_proper_time_limits False): env 0's step 1 is terminal: d1 = 1 - 2 = -1, A0 = 1 + 0.45*(-1)
    adv = torch.tensor([[0.55, -2.89], [-1.0, -4.2], [-97.5, -6.0], [0.0, -19.0]])
    torch.testing.assert_close(ro.advantages, adv)


LOGITS = [0.5, -1.0, 1.5, 0.0]  # four actions, none negligible


def _chi2_p(actions: torch.Tensor, probs: torch.Tensor) -> float:
    from scipy.stats import chisquare

    counts = torch.bincount(actions.reshape(-1), minlength=probs.numel()).double()
    p = probs.double() / probs.double().sum()
    return float(chisquare(counts.numpy(), (counts.sum() * p).numpy()).pvalue)


def test_the_samplers_action_frequencies_follow_softmax_of_the_logits():
    from marpo_bench.nets import gumbel_max_sample

    logits = torch.tensor(LOGITS)
    gen = torch.Generator().manual_seed(0)
    actions = gumbel_max_sample(logits.expand(40_000, 4), gen)
    assert _chi2_p(actions, torch.softmax(logits, 0)) > 1e-4
    # the check has power: the same draws are far from a sampler with another temperature
    assert _chi2_p(actions, torch.softmax(2 * logits, 0)) < 1e-9


def test_collect_records_actions_drawn_from_the_policy_and_their_log_probabilities():
    T, E = 40, 64
    env = ScriptedEnv(torch.zeros(T + 1, E), torch.zeros(T, E), torch.zeros(T, E, dtype=torch.bool),
                      torch.zeros(T, E, dtype=torch.bool), torch.zeros(T, E), N=2, A=4)
    cfg = make_config(MAPPOConfig, num_envs=E, rollout_len=T, value_norm=False, recurrent=False,
                      recurrent_critic=False, share_policy=True)
    algo = MAPPO(cfg, env.info, "cpu", seed=3)
    install_known_nets(algo, actor_logits=LOGITS, critic=True)
    ro, _, _ = algo.collect(env, env.reset(0))
    probs = torch.softmax(torch.tensor(LOGITS), 0)
    assert ro.actions.shape == (T, E, 2)
    assert torch.equal(torch.stack(env.actions), ro.actions)  # what the env got is what is recorded
    assert _chi2_p(ro.actions, probs) > 1e-4  # 5,120 draws
    torch.testing.assert_close(ro.logp_old, torch.log(probs)[ro.actions])
