"""MAPPO (Yu et al., "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games",
NeurIPS 2022 Datasets & Benchmarks), on the shared PPO core.

Everything but the policy objective (rollouts, GAE, ValueNorm, clipped Huber value loss,
epochs x minibatches, masking, init) lives in ``marpo_bench/algos/ppo_core.py``. MAPPO's objective
is PPO's clipped surrogate per agent, averaged over alive agents (``marpo-spec.md`` section 0):

    L_clip = E[ min( r_t A_t , clip(r_t, 1 - eps, 1 + eps) A_t ) ],   eps = 0.2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marpo_bench.algos.ppo_core import OnPolicyAlgorithm, PPOConfig, Rollout, masked_mean, ppo_clip_surrogate


@dataclass
class MAPPOConfig(PPOConfig):
    """MAPPO's defaults are the shared PPO core's (MAPPO paper, MPE recipe)."""


class MAPPO(OnPolicyAlgorithm):
    """Multi-agent PPO with a centralised critic (CTDE)."""

    name = "mappo"
    Config = MAPPOConfig

    def policy_objective(self, mb: Rollout, logp_all: torch.Tensor, logp_next: torch.Tensor,
                         adv: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO's clipped surrogate, averaged over alive agents."""
        logp = logp_all.gather(-1, mb.actions.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - mb.logp_old)
        lo, hi = 1.0 - self.cfg.clip_eps, 1.0 + self.cfg.clip_eps
        surrogate = masked_mean(ppo_clip_surrogate(ratio, adv, lo, hi), mb.alive)
        with torch.no_grad():
            logs = {
                "approx_kl": float(masked_mean((ratio - 1) - torch.log(ratio), mb.alive)),
                "clip_fraction": float(masked_mean(((ratio < lo) | (ratio > hi)).float(), mb.alive)),
            }
        return surrogate, logs
