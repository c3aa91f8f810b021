"""MARPO at the level of its math (docs/algorithms.md §1-§3), then its equivalence to MAPPO."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from baselines.mappo import MAPPO, MAPPOConfig
from marpo_bench.algos import marpo as marpo_mod
from marpo_bench.algos.marpo import (
    MARPO,
    MARPOConfig,
    kl_clip_bounds,
    reflection_term,
    reflection_valid,
    update_delta,
)
from tests.helpers import fake_info, grads, random_rollout, replay


def f(r: float) -> float:
    return r - 1.0 - math.log(r)


@pytest.mark.parametrize("delta", np.geomspace(1e-4, 2.0, 40).tolist())
def test_kl_bounds_are_roots_of_the_k3_estimator(delta):
    x1, x2 = kl_clip_bounds(delta)
    assert abs(f(x1) - delta) < 1e-9 and abs(f(x2) - delta) < 1e-9
    assert 0 < x1 < 1 < x2


@pytest.mark.parametrize("delta", np.geomspace(1e-4, 2.0, 40).tolist())
def test_asymmetric_clip_widens_upper_bound_more_than_lower(delta):
    x1, x2 = kl_clip_bounds(delta)
    assert x2 - 1 > 1 - x1


@pytest.mark.parametrize(
    "delta,lo,hi",
    [(0.008, 0.879, 1.132), (0.01, 0.865, 1.148), (0.0177, 0.823, 1.200),
     (0.03, 0.775, 1.265), (0.05, 0.716, 1.350), (0.088, 0.637, 1.480)],
)
def test_kl_bounds_reproduce_the_spec_table(delta, lo, hi):
    x1, x2 = kl_clip_bounds(delta)
    # the table's 3 decimals: within half a unit of the last digit (not round(), which flips at .0005)
    assert abs(x1 - lo) <= 5e-4 + 1e-9 and abs(x2 - hi) <= 5e-4 + 1e-9


def test_delta_update_follows_hand_computed_sequence():
    cfg = MARPOConfig()
    d = cfg.delta0
    for kl, prog, expected in [(0.0, 0.0, 0.01624), (0.02, 0.5, 0.0197408), (0.005, 1.0, 0.018801536)]:
        d = update_delta(d, kl, prog, cfg)
        assert abs(d - expected) < 1e-12
    # progress beyond 1 is clamped: the bias is gone, only the KL floor pulls delta
    assert update_delta(0.01, 0.0, 3.0, cfg) == pytest.approx(0.92 * 0.01 + 0.08 * 0.008)


def _ratio_batch(ratios: list[float], advs: list[float], done: list[bool]):
    """A one-env, one-agent rollout whose ratios are exactly ``ratios`` (two actions, action 0 taken)."""
    T = len(ratios)
    mb = random_rollout(T=T, E=1, N=1, obs_dim=3, S=2, A=2, seed=0)
    p_new = torch.full((T, 1, 1), 0.5)
    logp_all = torch.stack([p_new.log(), (1 - p_new).log()], -1)
    mb.actions = torch.zeros(T, 1, 1, dtype=torch.long)
    mb.avail = torch.ones(T, 1, 1, 2, dtype=torch.bool)
    p_old = p_new / torch.tensor(ratios).view(T, 1, 1)
    mb.logp_old = p_old.log()
    mb.logits_old = torch.stack([p_old.log(), (1 - p_old).log()], -1)
    mb.done = torch.tensor(done).view(T, 1)
    adv = torch.tensor(advs).view(T, 1, 1)
    return mb, logp_all, adv


def test_reflection_term_matches_hand_computation_and_respects_episode_boundary():
    # ratios rho = [1.1, 0.9, 1.3, 1.0], A = [1, 2, -1, 0.5]; the episode ends at k=1; T-1 = 3 is the end.
    mb, _, adv = _ratio_batch([1.1, 0.9, 1.3, 1.0], [1.0, 2.0, -1.0, 0.5], [False, True, False, False])
    ratio = torch.exp(torch.tensor([1.1, 0.9, 1.3, 1.0]).log()).view(4, 1, 1)
    valid = reflection_valid(mb)
    assert valid.flatten().tolist() == [True, False, True]  # (1,2) crosses the boundary; no (3,4)
    got = reflection_term(ratio[:-1], ratio[1:], adv[1:], valid, 0.8, 1.2)
    # k=0: min(1.1*0.9*2, 1.1*0.9*2) = 1.98;  k=2: min(1.3*1.0*0.5, 1.2*1.0*0.5) = 0.6
    assert float(got) == pytest.approx((1.98 + 0.6) / 2, abs=1e-6)


def test_marpo_objective_is_l0_plus_alpha_l1_by_hand():
    info = fake_info(N=1, obs_dim=3, S=2, A=2)
    algo = MARPO(MARPOConfig(clip="symmetric", alpha=0.3), info, "cpu", seed=0)
    mb, logp_all, adv = _ratio_batch([1.1, 0.9, 1.3, 1.0], [1.0, 2.0, -1.0, 0.5], [False, True, False, False])
    surrogate, logs = algo.policy_objective(mb, logp_all, logp_all[1:], adv, env_steps=0)
    # L0 with [0.8, 1.2]: min(1.1, 1.1)=1.1; min(1.8, 1.8)=1.8; min(-1.3, -1.2)=-1.3; min(.5,.5)=.5
    l0 = (1.1 + 1.8 - 1.3 + 0.5) / 4
    l1 = (1.98 + 0.6) / 2
    assert float(surrogate) == pytest.approx(l0 + 0.3 * l1, abs=1e-6)
    assert logs["reflection_term"] == pytest.approx(0.3 * l1, abs=1e-6)


def test_reflection_term_on_a_random_batch_is_its_definition_and_nonzero():
    # The released MARPO code reads zero next-step advantages, so its L1 is always 0: this would fail.
    info = fake_info()
    algo = MARPO(MARPOConfig(), info, "cpu", seed=0)
    mb = random_rollout(policy=algo, seed=3)
    logp_all = algo.log_probs(mb.obs, mb.avail)
    adv = torch.randn(mb.logp_old.shape, generator=torch.Generator().manual_seed(0))
    _, logs = algo.policy_objective(mb, logp_all, logp_all[1:], adv, env_steps=1_000_000)
    # §1, written out: alpha * mean over valid pairs (same episode, alive at k and k+1) of
    # min(r_k r_k1 A_k1, clip(r_k) clip(r_k1) A_k1), clipped by the adaptive bounds the logs report
    with torch.no_grad():
        r = (logp_all.gather(-1, mb.actions.unsqueeze(-1)).squeeze(-1) - mb.logp_old).exp()
        lo, hi = logs["clip_low"], logs["clip_high"]
        pairs = torch.min(r[:-1] * r[1:] * adv[1:], r[:-1].clamp(lo, hi) * r[1:].clamp(lo, hi) * adv[1:])
        valid = (~mb.done[:-1]).unsqueeze(-1) & mb.alive[:-1] & mb.alive[1:]
    assert 0 < lo < 1 < hi
    assert logs["reflection_term"] == pytest.approx(0.3 * float(pairs[valid].mean()), abs=1e-6)
    assert abs(logs["reflection_term"]) > 1e-4


def test_reflection_gradient_vanishes_where_both_ratios_are_clipped():
    ratio = torch.tensor([1.5, 1.5, 1.0, 1.0], requires_grad=True).view(4, 1, 1)
    ratio.retain_grad()
    adv = torch.ones(4, 1, 1)
    valid = torch.tensor([True, False, False]).view(3, 1, 1)
    reflection_term(ratio[:-1], ratio[1:], adv[1:], valid, 0.8, 1.2).backward()
    # only pair (0, 1) is valid and both ratios exceed the upper bound with A > 0: clipped, no gradient
    torch.testing.assert_close(ratio.grad.flatten(), torch.zeros(4))


def _loss_and_grads(algo, mb, adv):
    learner, logp_all, logp_next, _ = replay(algo, mb)
    surrogate, _ = algo.policy_objective(mb, logp_all, logp_next, adv, env_steps=3_000_000)
    surrogate.backward()
    return surrogate.detach(), grads(learner.actor)


def _assert_same_loss_and_grads(a, b, mb, adv):
    """Two learners give the same policy surrogate and the same actor gradients on ``mb``."""
    loss_a, grads_a = _loss_and_grads(a, mb, adv)
    loss_b, grads_b = _loss_and_grads(b, mb, adv)
    torch.testing.assert_close(loss_a, loss_b)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb)
    return loss_a


def test_marpo_without_reflection_and_with_symmetric_clip_is_mappo():
    info = fake_info()
    mappo = MAPPO(MAPPOConfig(epochs=2, minibatches=2), info, "cpu", seed=7)
    marpo = MARPO(MARPOConfig(epochs=2, minibatches=2, reflection=False, clip="symmetric"), info, "cpu", seed=7)
    mb = random_rollout(policy=mappo, seed=5)
    adv = torch.randn(mb.logp_old.shape, generator=torch.Generator().manual_seed(1))
    _assert_same_loss_and_grads(mappo, marpo, mb, adv)
    # and a whole update (epochs x minibatches, value loss, optimisers) ends in identical networks
    mappo.update(mb, 0.3)
    marpo.update(mb, 0.3)
    for pa, pb in zip(mappo.actor.parameters(), marpo.actor.parameters(), strict=False):
        torch.testing.assert_close(pa, pb)


def test_alpha_zero_reproduces_the_base_surrogate_with_adaptive_clip():
    info = fake_info()
    a = MARPO(MARPOConfig(alpha=0.0), info, "cpu", seed=2)
    b = MARPO(MARPOConfig(reflection=False), info, "cpu", seed=2)
    mb = random_rollout(policy=a, seed=9)
    adv = torch.randn(mb.logp_old.shape, generator=torch.Generator().manual_seed(2))
    _assert_same_loss_and_grads(a, b, mb, adv)


def test_delta_adapts_once_per_minibatch_and_is_checkpointed(monkeypatch):
    calls = []
    real = marpo_mod.update_delta

    def counting(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(marpo_mod, "update_delta", counting)
    info = fake_info()
    algo = MARPO(MARPOConfig(epochs=3, minibatches=2), info, "cpu", seed=0)
    logs = algo.update(random_rollout(policy=algo, perturb=0.0), env_steps=2_000_000)
    assert len(calls) == 6
    assert calls[0] == pytest.approx(0.0, abs=1e-7)  # first minibatch: theta == snapshot, KL = 0
    assert all(k >= 0 for k in calls)
    assert logs["kl_delta"] == algo.delta != MARPOConfig().delta0
    assert logs["clip_low_p5"] <= logs["clip_low_mean"] <= logs["clip_low_p95"] < 1 < logs["clip_high_p5"]
    other = MARPO(MARPOConfig(), info, "cpu", seed=1)
    other.load_state_dict(algo.state_dict())
    assert other.delta == algo.delta


def test_main_clip_ppo_keeps_fixed_bounds_in_l0():
    info = fake_info(N=1, obs_dim=3, S=2, A=2)
    algo_paper = MARPO(MARPOConfig(alpha=0.0), info, "cpu", seed=0)
    algo_code = MARPO(MARPOConfig(alpha=0.0, main_clip="ppo"), info, "cpu", seed=0)
    # a ratio above the adaptive upper bound but inside PPO's [0.8, 1.2] tells the placements apart
    r = 1.198
    mb, logp_all, adv = _ratio_batch([r, 1.0], [1.0, 0.0], [False, False])
    kl = float(marpo_mod.categorical_kl(mb.logits_old, logp_all).mean())
    x1, x2 = kl_clip_bounds(update_delta(0.01, kl, 0.0, MARPOConfig()))
    assert 1.0 < x2 < r < 1.2
    s_paper, _ = algo_paper.policy_objective(mb, logp_all, logp_all[1:], adv, env_steps=0)
    s_code, _ = algo_code.policy_objective(mb, logp_all, logp_all[1:], adv, env_steps=0)
    assert float(s_paper) == pytest.approx(x2 / 2, abs=1e-5)  # clipped at the adaptive bound
    assert float(s_code) == pytest.approx(r / 2, abs=1e-5)  # inside PPO's [0.8, 1.2]


@pytest.mark.parametrize(("name", "field", "value"), [("marpo_noreflect", "reflection", False),
                                                      ("marpo_symclip", "clip", "symmetric"),
                                                      ("marpo_ppoclip", "main_clip", "ppo")])
def test_registered_ablation_differs_from_marpo_in_one_setting_and_trains_like_it(name, field, value):
    import dataclasses

    from marpo_bench.algos import get_algorithm

    cls = get_algorithm(name)
    base, abl = dataclasses.asdict(MARPOConfig()), dataclasses.asdict(cls.Config())
    assert {k for k in base if base[k] != abl[k]} == {field} and abl[field] == value
    info = fake_info()
    a = cls(cls.Config(), info, "cpu", seed=4)
    b = MARPO(MARPOConfig(**{field: value}), info, "cpu", seed=4)
    mb = random_rollout(policy=a, seed=3)
    adv = torch.randn(mb.logp_old.shape, generator=torch.Generator().manual_seed(3))
    loss_a = _assert_same_loss_and_grads(a, b, mb, adv)
    # ... and not like MARPO itself (the ablation changes the objective on a random batch).
    full = MARPO(MARPOConfig(), info, "cpu", seed=4)
    assert not torch.allclose(_loss_and_grads(full, mb, adv)[0], loss_a)
