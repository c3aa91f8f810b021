"""Small synthetic inputs shared by the algorithm tests."""

from __future__ import annotations

import torch

from marpo_bench.algos.ppo_core import Rollout
from marpo_bench.envs.base import EnvInfo


def fake_info(N: int = 3, obs_dim: int = 6, S: int = 10, A: int = 5) -> EnvInfo:
    return EnvInfo(family="test", task="t", num_envs=4, num_agents=N, obs_dim=obs_dim, state_dim=S,
                   num_actions=A, episode_limit=25, reward_scale="team_sum", has_won=False)


def random_rollout(T: int = 6, E: int = 4, N: int = 3, obs_dim: int = 6, S: int = 10, A: int = 5,
                   seed: int = 0, policy=None, perturb: float = 0.3) -> Rollout:
    """A rollout whose old log-probs come from ``policy`` (an algorithm) perturbed, or random."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, E, N, obs_dim, generator=g)
    avail = torch.rand(T, E, N, A, generator=g) > 0.3
    avail[..., 0] = True
    if policy is not None:
        with torch.no_grad():
            logp_all = policy.log_probs(obs, avail)
            # an older policy: perturb the logits so ratios differ from 1
            logp_all = torch.log_softmax(logp_all + perturb * torch.randn(logp_all.shape, generator=g), -1)
            logp_all = logp_all.masked_fill(~avail, -1e10)
            logp_all = torch.log_softmax(logp_all, -1)
    else:
        logp_all = torch.log_softmax(torch.randn(T, E, N, A, generator=g).masked_fill(~avail, -1e10), -1)
    probs = logp_all.exp()
    actions = torch.multinomial(probs.reshape(-1, A), 1, generator=g).reshape(T, E, N)
    done = torch.rand(T, E, generator=g) < 0.2
    return Rollout(
        obs=obs, state=torch.randn(T, E, S, generator=g), avail=avail,
        alive=torch.ones(T, E, N, dtype=torch.bool), actions=actions,
        logp_old=logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1), logits_old=logp_all,
        values=torch.randn(T, E, generator=g), rewards=torch.randn(T, E, generator=g),
        terminated=torch.zeros(T, E, dtype=torch.bool), done=done,
        advantages=torch.randn(T, E, generator=g), returns=torch.randn(T, E, generator=g),
    )
