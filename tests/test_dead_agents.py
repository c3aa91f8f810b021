"""Dead agents and dead teams in the PPO update (MAPPO and MARPO), on small hand-checked rollouts:
advantage normalisation, value loss, ValueNorm, MARPO's L0 and reflection pairs, the entropy bonus.
SMAX's dead agents can only take the no-op: they carry no policy gradient, and a step whose whole
team is dead has no value target (``docs/algorithms.md`` §0)."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.mappo import MAPPO, MAPPOConfig
from marpo_bench.algos.marpo import MARPO, MARPOConfig, reflection_valid
from tests.helpers import fake_info, install_known_nets, rollout_with

T2 = torch.tensor


def _alive(pattern: list[list[list[int]]]) -> torch.Tensor:
    return T2(pattern, dtype=torch.bool)


def _spy_objective(algo) -> list[torch.Tensor]:
    """Record the advantages ``update`` hands to the policy objective (whatever its later arguments)."""
    seen: list[torch.Tensor] = []
    real = algo.policy_objective

    def spy(mb, logp_all, logp_next, adv, *args, **kwargs):
        seen.append(adv.detach().clone())
        return real(mb, logp_all, logp_next, adv, *args, **kwargs)

    algo.policy_objective = spy
    return seen


# ----------------------------------------------------------------------------------------------
# advantages, value loss, ValueNorm


def test_advantages_are_normalised_over_alive_agents_only():
    info = fake_info(N=2, obs_dim=3, S=2, A=3)
    algo = MAPPO(MAPPOConfig(epochs=1, minibatches=1), info, "cpu", seed=0)
    # A[t, e] = [[1, 2], [3, 4]]; t0: env 1's agent 1 dead; t1: env 0's whole team dead
    alive = _alive([[[1, 1], [1, 0]], [[0, 0], [1, 1]]])
    ro = rollout_with(T=2, E=2, N=2, A=3, alive=alive, advantages=T2([[1.0, 2.0], [3.0, 4.0]]), policy=algo)
    seen = _spy_objective(algo)
    algo.update(ro, 0)
    (adv,) = seen
    # alive agents' advantages: 1, 1 (t0 env0), 2 (t0 env1 agent 0), 4, 4 (t1 env1): mean 12/5 = 2.4,
    # sample std sqrt((1.96 + 1.96 + 0.16 + 2.56 + 2.56) / 4) = sqrt(2.3) (torch.std, ddof 1, as the update
    # does; on-policy's np.nanstd has ddof 0: sqrt(9.2 / 5) - change this number if the update follows it)
    std = math.sqrt(2.3) + 1e-5
    expected = {(0, 0, 0): (1 - 2.4) / std, (0, 0, 1): (1 - 2.4) / std, (0, 1, 0): (2 - 2.4) / std,
                (1, 1, 0): (4 - 2.4) / std, (1, 1, 1): (4 - 2.4) / std}
    for idx, value in expected.items():
        assert float(adv[idx]) == pytest.approx(value, abs=1e-5), idx
    assert float(adv[alive].mean()) == pytest.approx(0.0, abs=1e-6)


def _value_loss_algo(**fields):
    info = fake_info(N=2, obs_dim=3, S=2, A=3)
    algo = MAPPO(MAPPOConfig(**fields), info, "cpu", seed=0)
    install_known_nets(algo, critic=True)  # V(s) = s[0]
    return algo


def test_value_loss_ignores_steps_where_the_whole_team_is_dead():
    algo = _value_loss_algo(value_norm=False, value_clip=False)
    state = torch.zeros(2, 2, 2)
    state[..., 0] = T2([[0.0, 1.0], [2.0, 3.0]])  # V = s[0]
    # env 0 at t1: one agent dead (the team lives: counted); env 1 at t1: both dead (no target)
    alive = _alive([[[1, 1], [1, 1]], [[1, 0], [0, 0]]])
    ro = rollout_with(T=2, E=2, N=2, alive=alive, state=state, values=state[..., 0],
                      returns=T2([[1.0, 1.0], [14.0, 100.0]]))
    # Huber(delta 10) of R - V on the three live steps: 0.5 * 1^2 = 0.5, 0, and beyond delta
    # 10 * (12 - 10/2) = 70 (env 0 at t1); the dead step (10 * (97 - 5) = 920) is left out: 70.5 / 3
    assert float(algo.value_loss(ro, algo.critic(ro.state).squeeze(-1)).detach()) == pytest.approx(70.5 / 3, abs=1e-5)


def test_value_clip_takes_the_larger_of_the_clipped_and_unclipped_errors():
    algo = _value_loss_algo(value_norm=False, value_clip=True, clip_eps=0.2)
    state = torch.zeros(1, 2, 2)
    state[..., 0] = 0.5  # the critic now says 0.5 in both envs; it said 0 when collecting
    ro = rollout_with(T=1, E=2, N=2, state=state, values=torch.zeros(1, 2), returns=T2([[1.0, 0.0]]))
    # env 0: R=1: unclipped 0.5*0.5^2 = 0.125, clipped V = 0 + clip(0.5, +-0.2) = 0.2: 0.5*0.8^2 = 0.32 -> 0.32
    # env 1: R=0: unclipped 0.125, clipped 0.5*0.2^2 = 0.02 -> 0.125.   mean (0.32 + 0.125) / 2 = 0.2225
    assert float(algo.value_loss(ro, algo.critic(ro.state).squeeze(-1)).detach()) == pytest.approx(0.2225, abs=1e-6)


def test_value_norm_statistics_ignore_steps_where_the_whole_team_is_dead():
    info = fake_info(N=2, obs_dim=3, S=2, A=3)
    algo = MAPPO(MAPPOConfig(epochs=1, minibatches=1), info, "cpu", seed=0)
    alive = _alive([[[1, 1], [1, 1]], [[0, 1], [0, 0]]])  # env 1 at t1: the whole team is dead
    ro = rollout_with(T=2, E=2, N=2, alive=alive, returns=T2([[1.0, 3.0], [5.0, 1000.0]]), policy=algo)
    algo.update(ro, 0)
    vn = algo.value_norm
    # first update of a fresh ValueNorm: its debiased mean and variance are the batch's: targets 1, 3, 5
    # mean 3, E[x^2] = 35/3, var = 35/3 - 9 = 8/3
    assert float(vn.denormalize(T2(0.0))) == pytest.approx(3.0, abs=1e-4)
    assert float(vn.denormalize(T2(1.0)) - vn.denormalize(T2(0.0))) == pytest.approx(math.sqrt(8 / 3), abs=1e-4)


# ----------------------------------------------------------------------------------------------
# policy objectives


def _ratio_rollout(ratios: list[list[float]], advs: list[float], alive: list[list[int]]):
    """One env, N agents, two actions, action 0 taken: pi_new(0) = 0.5, pi_old(0) = 0.5 / ratio.
    ``ratios`` [T][N], ``advs`` [T] (the team advantage, the same for every agent), ``alive`` [T][N]."""
    T, N = len(ratios), len(ratios[0])
    r = T2(ratios).view(T, 1, N)
    mb = rollout_with(T=T, E=1, N=N, A=2, alive=T2(alive, dtype=torch.bool).view(T, 1, N))
    mb.actions = torch.zeros(T, 1, N, dtype=torch.long)
    p_new = torch.full((T, 1, N), 0.5)
    logp_all = torch.stack([p_new.log(), (1 - p_new).log()], -1)
    p_old = p_new / r
    mb.logp_old = p_old.log()
    mb.logits_old = torch.stack([p_old.log(), (1 - p_old).log()], -1)
    adv = T2(advs).view(T, 1, 1).expand(T, 1, N).clone()
    return mb, logp_all, adv


@pytest.mark.parametrize("algo_name", ["mappo", "marpo"])
def test_clipped_surrogate_averages_over_alive_agents_only(algo_name):
    info = fake_info(N=2, obs_dim=3, S=2, A=2)
    algo = (MAPPO(MAPPOConfig(), info, "cpu", seed=0) if algo_name == "mappo"
            else MARPO(MARPOConfig(clip="symmetric", reflection=False), info, "cpu", seed=0))
    # agent 1 is dead at t1 (ratio 1: its only action); A = [1, 2]
    mb, logp_all, adv = _ratio_rollout([[1.1, 1.3], [0.9, 1.0]], [1.0, 2.0], [[1, 1], [1, 0]])
    surrogate, _ = algo.policy_objective(mb, logp_all, logp_all[1:], adv, 0)
    # clip [0.8, 1.2]: t0: min(1.1, 1.1) = 1.1, min(1.3, 1.2) = 1.2; t1: min(1.8, 1.8) = 1.8 -> (1.1+1.2+1.8)/3
    assert float(surrogate) == pytest.approx(4.1 / 3, abs=1e-6)


def test_reflection_pairs_need_the_agent_alive_at_both_steps():
    alive = _alive([[[1, 1]], [[1, 1]], [[1, 0]], [[1, 0]]])  # agent 1 dies at t2
    mb = rollout_with(T=4, E=1, N=2, alive=alive)
    # pairs (0,1), (1,2), (2,3): agent 0 all valid; agent 1 only (0,1)
    assert reflection_valid(mb)[:, 0].tolist() == [[True, True], [True, False], [True, False]]


def test_marpo_reflection_term_skips_pairs_whose_next_step_is_dead():
    info = fake_info(N=2, obs_dim=3, S=2, A=2)
    algo = MARPO(MARPOConfig(clip="symmetric", alpha=0.3), info, "cpu", seed=0)
    ratios = [[1.1, 1.05], [0.9, 1.15], [1.3, 1.0], [1.0, 1.0]]  # agent 1 dead at t2, t3
    mb, logp_all, adv = _ratio_rollout(ratios, [1.0, 2.0, -1.0, 0.5], [[1, 1], [1, 1], [1, 0], [1, 0]])
    _, logs = algo.policy_objective(mb, logp_all, logp_all[1:], adv, 0)
    # valid pairs, min(r_k r_k1 A_k1, clip(r_k) clip(r_k1) A_k1) with clip [0.8, 1.2]:
    # agent 0: k0: 1.1*0.9*2 = 1.98; k1: min(0.9*1.3*-1, 0.9*1.2*-1) = -1.17; k2: min(1.3*0.5, 1.2*0.5) = 0.6
    # agent 1: k0: 1.05*1.15*2 = 2.415 (k1 -> t2 is dead: skipped)
    assert logs["reflection_term"] == pytest.approx(0.3 * (1.98 - 1.17 + 0.6 + 2.415) / 4, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# entropy bonus


def _entropy_update(entropy_coef: float = 0.01):
    """A MAPPO update on a policy with fixed logits [0, ln 2, 0] (pi = [1/4, 1/2, 1/4] when every
    action is available), zero advantages (no surrogate gradient) and ratios 1; returns the logs and
    the actor gradient of the (single) gradient step."""
    info = fake_info(N=2, obs_dim=3, S=2, A=3)
    algo = MAPPO(MAPPOConfig(epochs=1, minibatches=1, entropy_coef=entropy_coef), info, "cpu", seed=0)
    install_known_nets(algo, actor_logits=[0.0, math.log(2.0), 0.0], critic=False)
    # 3 of the 8 agent-steps are dead agents (only the no-op: entropy 0, no gradient)
    alive = _alive([[[1, 1], [1, 0]], [[1, 0], [0, 1]]])
    ro = rollout_with(T=2, E=2, N=2, A=3, alive=alive, avail=torch.ones(2, 2, 2, 3, dtype=torch.bool),
                      advantages=torch.zeros(2, 2), policy=algo)
    grads: list[torch.Tensor] = []
    learner = algo.learner()  # the one learner, this seed alone
    real_step = learner.actor_opt.step

    def spy_step(*args, **kwargs):
        grads.append(learner.actor.stack["logits"].grad[0].clone())
        return real_step(*args, **kwargs)

    learner.actor_opt.step = spy_step
    (logs,) = learner.update([ro], 0)
    return logs, grads


def test_entropy_bonus_gradient_raises_the_entropy_of_alive_agents():
    logs, (grad,) = _entropy_update(0.01)
    # H(1/4, 1/2, 1/4) = 1.5 ln 2; dH/dtheta_j = -p_j (ln p_j + H) = [ln2/8, -ln2/4, ln2/8] for every
    # alive agent (dead agents: 0). The actor loss is -surrogate - 0.01 * H: gradient -0.01 * dH/dtheta.
    ln2 = math.log(2.0)
    assert logs["entropy"] == pytest.approx(1.5 * ln2, abs=1e-6)
    torch.testing.assert_close(grad, -0.01 * T2([ln2 / 8, -ln2 / 4, ln2 / 8]), atol=1e-8, rtol=1e-4)
