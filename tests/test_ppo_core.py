"""The shared PPO core at the level of its math: GAE, value normalisation, masking, value loss."""

from __future__ import annotations

import pytest
import torch

from baselines.mappo import MAPPO, MAPPOConfig
from marpo_bench.algos.ppo_core import ValueNorm, ppo_clip_surrogate
from marpo_bench.algos.rollout import compute_gae
from marpo_bench.envs.base import TimeStep
from tests.helpers import fake_info, random_rollout, replay


def test_gae_bootstraps_through_truncation_but_not_termination():
    # T=4, one env; the episode ends at t=1 (truncated, V(final)=2.0), rollout ends at t=3 (V(next)=1.0).
    r = torch.ones(4, 1)
    v = torch.full((4, 1), 0.5)
    nxt = torch.tensor([[0.5], [2.0], [0.5], [1.0]])
    done = torch.tensor([[False], [True], [False], [False]])
    term = torch.zeros(4, 1, dtype=torch.bool)
    adv, ret = compute_gae(r, v, nxt, term, done, gamma=0.9, lam=0.8)
    # hand computation: A3 = 1 + .9*1 - .5 = 1.4; A2 = .95 + .72*1.4; A1 = 1 + .9*2 - .5; A0 = .95 + .72*A1
    expected = torch.tensor([[0.95 + 0.72 * 2.3], [2.3], [0.95 + 0.72 * 1.4], [1.4]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + 0.5)
    # the same episode end as a true terminal state: no bootstrap from V(final)
    term[1] = True
    adv_t, _ = compute_gae(r, v, nxt, term, done, gamma=0.9, lam=0.8)
    assert abs(float(adv_t[1, 0]) - 0.5) < 1e-6
    assert abs(float(adv_t[0, 0]) - (0.95 + 0.72 * 0.5)) < 1e-6


def test_value_norm_first_update_standardises_and_round_trips():
    vn = ValueNorm()
    x = torch.randn(5000) * 3.0 + 7.0
    vn.update(x)
    z = vn.normalize(x)
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1.0) < 1e-2
    y = torch.randn(100)
    torch.testing.assert_close(vn.normalize(vn.denormalize(y)), y, atol=1e-5, rtol=1e-5)


def test_ppo_surrogate_gradient_vanishes_where_clipped_branch_is_active():
    ratio = torch.tensor([1.5, 0.5, 1.1, 1.5, 0.5], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    ppo_clip_surrogate(ratio, adv, 0.8, 1.2).sum().backward()
    # r>1+eps with A>0 and r<1-eps with A<0: clipped, zero gradient; otherwise dL/dr = A
    torch.testing.assert_close(ratio.grad, torch.tensor([0.0, 0.0, 1.0, -1.0, 1.0]))


def _ts(obs, avail):
    E, N = obs.shape[:2]
    z = torch.zeros(E)
    return TimeStep(obs=obs, state=torch.zeros(E, 4), avail_actions=avail, alive=torch.ones(E, N, dtype=torch.bool),
                    reward=z, terminated=z.bool(), truncated=z.bool(), final_obs=obs, final_state=torch.zeros(E, 4),
                    episode_return=z, episode_length=z.long(), won=z)


def test_action_masking_never_samples_or_picks_unavailable_actions():
    info = fake_info(N=3, obs_dim=6, S=4, A=7)
    algo = MAPPO(MAPPOConfig(), info, "cpu", seed=0)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(512, 3, 6, generator=g) * 5
    avail = torch.rand(512, 3, 7, generator=g) > 0.7
    avail[..., 3] |= ~avail.any(-1)  # at least one available action per agent
    for deterministic in (False, True):
        for _ in range(20):
            a, _ = algo.act(_ts(obs, avail), None, deterministic=deterministic)
            assert bool(avail.gather(-1, a.unsqueeze(-1)).all())


def test_mappo_update_changes_policy_and_reports_finite_metrics():
    info = fake_info()
    algo = MAPPO(MAPPOConfig(epochs=2, minibatches=2), info, "cpu", seed=0)
    ro = random_rollout(policy=algo)
    before = [p.detach().clone() for p in algo.actor.parameters()]
    logs = algo.update(ro, env_steps=1_000)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"} <= set(logs)
    assert any(not torch.equal(b, p) for b, p in zip(before, algo.actor.parameters(), strict=False))


def test_mappo_update_logs_the_losses_of_its_minibatch_by_definition():
    # one epoch, one minibatch: the logs are the losses at the networks the update started from
    info = fake_info()
    algo = MAPPO(MAPPOConfig(epochs=1, minibatches=1), info, "cpu", seed=0)
    ro = random_rollout(policy=algo)
    with torch.no_grad():
        a = ro.advantages.unsqueeze(-1).expand_as(ro.logp_old)
        a = (a - a.mean()) / (a.std() + 1e-5)  # everyone alive: normalised over all agents
        logp_all = algo.log_probs(ro.obs, ro.avail)
        r = (logp_all.gather(-1, ro.actions.unsqueeze(-1)).squeeze(-1) - ro.logp_old).exp()
        policy_loss = -torch.min(r * a, r.clamp(0.8, 1.2) * a).mean()
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        # ValueNorm after its first update: the returns' own mean and (population) variance
        ret = ro.returns.double()
        target = ((ret - ret.mean()) / ret.var(unbiased=False).clamp(min=1e-2).sqrt()).float()
        v, v_old = algo.critic(ro.state).squeeze(-1), ro.values
        v_clip = v_old + (v - v_old).clamp(-0.2, 0.2)
        value_loss = torch.max(0.5 * (target - v) ** 2, 0.5 * (target - v_clip) ** 2).mean()  # |err| < 10
    logs = algo.update(ro, 1_000)
    assert logs["policy_loss"] == pytest.approx(float(policy_loss), abs=1e-5)
    assert logs["entropy"] == pytest.approx(float(entropy), abs=1e-5)
    assert logs["approx_kl"] == pytest.approx(float(((r - 1) - r.log()).mean()), abs=1e-6)
    assert logs["clip_fraction"] == pytest.approx(float(((r < 0.8) | (r > 1.2)).float().mean()), abs=1e-6)
    assert logs["value_loss"] == pytest.approx(float(value_loss), rel=1e-4)


def test_recurrent_replay_reproduces_rollout_log_probs_across_chunks_and_episode_ends():
    from marpo_bench.envs import make_env

    env = make_env("jax_mpe", "simple_spread", 4)
    cfg = MAPPOConfig(num_envs=4, rollout_len=30, chunk_len=10, recurrent=True)  # episodes end at t=24
    algo = MAPPO(cfg, env.info, "cpu", seed=0)
    ts = env.reset(0)
    ro, ts, _ = algo.collect(env, ts)
    ro, ts, _ = algo.collect(env, ts)  # second rollout: hidden state carried in, episode end at t=19
    assert bool(ro.done.any())
    with torch.no_grad():
        _, logp_all, logp_next, _ = replay(algo, ro)
    avail = ro.avail
    torch.testing.assert_close(logp_all[avail], ro.logits_old[avail], atol=1e-5, rtol=1e-5)
    # an unchanged policy continues each chunk's hidden state exactly as the rollout did
    torch.testing.assert_close(logp_next[avail[1:]], ro.logits_old[1:][avail[1:]], atol=1e-5, rtol=1e-5)


def test_recurrent_marpo_update_is_finite_and_eval_act_resets_memory_at_episode_start():
    from marpo_bench.algos.marpo import MARPO, MARPOConfig
    from marpo_bench.envs import make_env

    env = make_env("jax_mpe", "simple_spread", 4)
    cfg = MARPOConfig(num_envs=4, rollout_len=20, chunk_len=10, recurrent=True, epochs=2, minibatches=2)
    algo = MARPO(cfg, env.info, "cpu", seed=0)
    ro, ts, _ = algo.collect(env, env.reset(0))
    logs = algo.update(ro, 0.1)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert logs["reflection_term"] != 0.0
    h = torch.ones(4, env.info.num_agents, cfg.hidden)
    ts.done[:] = torch.tensor([True, False, True, False])
    _, h_next = algo._step_policy(ts, h)
    _, h_fresh = algo._step_policy(ts, torch.zeros_like(h))
    torch.testing.assert_close(h_next[ts.done], h_fresh[ts.done])
    assert not torch.allclose(h_next[~ts.done], h_fresh[~ts.done])


def _recurrent_rollout(num_envs: int = 4):
    from marpo_bench.envs import make_env

    env = make_env("jax_mpe", "simple_spread", num_envs)
    cfg = MAPPOConfig(num_envs=num_envs, rollout_len=30, chunk_len=10, recurrent=True)  # episodes end at t=24
    algo = MAPPO(cfg, env.info, "cpu", seed=0)
    ro, _, _ = algo.collect(env, env.reset(0))
    return algo, ro


def test_chunked_replay_inputs_built_once_give_the_same_log_probs_for_any_env_subset():
    from marpo_bench.algos.rollout import ChunkedInputs

    algo, ro = _recurrent_rollout()
    chunks = ChunkedInputs.from_rollout(ro, algo.cfg.chunk_len)
    assert chunks.obs.shape[:4] == (11, 3, 4, algo.info.num_agents)  # L+1 steps, 3 chunks, E, N
    idx = torch.tensor([3, 0])
    mb = ro.select_envs(idx)
    learner = algo.learner()
    with torch.no_grad():
        fresh = learner.log_probs([mb], learner.inputs([mb], [ChunkedInputs.from_rollout(mb, algo.cfg.chunk_len)]))
        cached = learner.log_probs([mb], learner.inputs([mb], [chunks.select_envs(idx)]))  # built once
    for a, b in zip(fresh, cached, strict=True):
        assert torch.equal(a, b)


def test_unroll_gradients_equal_a_step_by_step_indexing_reference():
    algo, ro = _recurrent_rollout()
    actor = algo.actor
    x = torch.randn(11, 12, ro.obs.shape[-1], generator=torch.Generator().manual_seed(1))
    h0 = torch.randn(12, algo.cfg.hidden, generator=torch.Generator().manual_seed(2))
    resets = torch.zeros(11, 12, dtype=torch.bool)
    resets[4, :5] = True

    def reference() -> torch.Tensor:  # the plain recurrence, indexing one step at a time
        feats, h, outs = actor.base(x), h0, []
        for j in range(11):
            if j > 0:
                h = h * (~resets[j]).unsqueeze(-1).to(h.dtype)
            h = actor.gru(feats[j], h)
            outs.append(h)
        return actor.head(actor.norm(torch.stack(outs)))

    grads = []
    for fn in (lambda: actor.unroll(x, h0, resets), reference):
        actor.zero_grad()
        out = fn()
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in actor.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for ga, gb in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.equal(ga, gb)  # bit for bit: only where the step gradients are gathered differs
