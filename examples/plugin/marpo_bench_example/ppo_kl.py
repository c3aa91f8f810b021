"""PPO with a KL penalty instead of the clip (Schulman et al. 2017, "Proximal Policy Optimization
Algorithms", section 4, fixed-coefficient variant), on marpo-bench's shared PPO core: the same
centralised critic, GAE, value normalisation, rollouts and evaluation as MAPPO; only the policy
objective differs:

    L = E[ r_t A_t ] - beta * E[ KL_t ],   KL_t estimated by (r_t - 1) - log r_t   (r_t = pi / pi_old)

beta = 1.0 is one of the paper's fixed coefficients (it tried 0.3, 1, 3 and 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marpo_bench.algos.ppo_core import OnPolicyAlgorithm, PPOConfig
from marpo_bench.algos.rollout import Rollout, masked_mean


@dataclass
class PPOKLConfig(PPOConfig):
    kl_coef: float = 1.0  # beta (Schulman et al. 2017, section 4: fixed KL penalty)


class PPOKL(OnPolicyAlgorithm):
    """PPO-penalty: the PPO core with a fixed KL penalty in place of the clipped surrogate."""

    name = "ppo_kl"
    description = "Example plugin: PPO with a fixed KL penalty (Schulman et al. 2017, sec. 4) on the PPO core"
    Config = PPOKLConfig
    metrics = ("policy_loss", "value_loss", "entropy", "grad_norm", "approx_kl", "kl_penalty")

    def policy_objective(self, mb: Rollout, logp_all: torch.Tensor, logp_next: torch.Tensor,
                         adv: torch.Tensor, env_steps: int) -> tuple[torch.Tensor, dict[str, float]]:
        logp = logp_all.gather(-1, mb.actions.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - mb.logp_old)
        kl = masked_mean((ratio - 1) - torch.log(ratio), mb.alive)
        objective = masked_mean(ratio * adv, mb.alive) - self.cfg.kl_coef * kl
        return objective, {"approx_kl": float(kl.detach()), "kl_penalty": float(self.cfg.kl_coef * kl.detach())}
