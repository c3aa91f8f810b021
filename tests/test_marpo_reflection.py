"""Where MARPO's adaptive bounds apply (docs/algorithms.md §2): the reflection term L1 is clipped by
the KL-derived bounds of this minibatch, the same ones the logs report, in both placements."""

from __future__ import annotations

import pytest
import torch

from marpo_bench.algos.marpo import MARPO, MARPOConfig, categorical_kl, kl_clip_bounds, update_delta
from tests.helpers import fake_info, rollout_with

R = 1.198  # inside PPO's [0.8, 1.2], above the adaptive upper bound at this KL


def _two_step_batch():
    """One env, one agent, two actions, action 0 taken at both steps with ratio R: pi_new(0) = 0.5,
    pi_old(0) = 0.5 / R. Advantages A = [0, 1]; no episode end."""
    mb = rollout_with(T=2, E=1, N=1, A=2)
    mb.actions = torch.zeros(2, 1, 1, dtype=torch.long)
    p_new = torch.full((2, 1, 1), 0.5)
    logp_all = torch.stack([p_new.log(), (1 - p_new).log()], -1)
    p_old = p_new / R
    mb.logp_old = p_old.log()
    mb.logits_old = torch.stack([p_old.log(), (1 - p_old).log()], -1)
    return mb, logp_all, torch.tensor([0.0, 1.0]).view(2, 1, 1)


@pytest.mark.parametrize("main_clip", ["adaptive", "ppo"])
def test_reflection_term_is_clipped_by_the_adaptive_bounds_it_logs(main_clip):
    cfg = MARPOConfig(alpha=0.3, main_clip=main_clip)
    algo = MARPO(cfg, fake_info(N=1, obs_dim=3, S=2, A=2), "cpu", seed=0)
    mb, logp_all, adv = _two_step_batch()
    surrogate, logs = algo.policy_objective(mb, logp_all, logp_all[1:], adv, 0)
    # delta after this minibatch's adaptation (no progress yet): 0.92 * 0.01 + 0.08 * (max(KL, 0.008) + 0.08)
    kl = float(categorical_kl(mb.logits_old, logp_all).mean())  # KL(Bern(0.5/R) || Bern(0.5)) ~ 0.0137
    x1, x2 = kl_clip_bounds(update_delta(cfg.delta0, kl, 0.0, cfg))
    assert 1.0 < x2 < R < 1.2  # the case that tells the adaptive bounds from PPO's
    assert (logs["clip_low"], logs["clip_high"]) == pytest.approx((x1, x2), abs=1e-9)
    # L1, pair (0, 1): min(R * R * 1, x2 * x2 * 1) = x2^2 (PPO's bounds would give R^2)
    assert logs["reflection_term"] == pytest.approx(0.3 * x2 * x2, abs=1e-6)
    # L0 = mean(min(R * 0, .), min(R * 1, clip(R) * 1)): clip at x2 (paper) or none inside [0.8, 1.2] (code)
    l0 = (x2 if main_clip == "adaptive" else R) / 2
    assert float(surrogate) == pytest.approx(l0 + 0.3 * x2 * x2, abs=1e-6)
