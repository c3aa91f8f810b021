"""MARPO: Multi-Agent Reflective Policy Optimization (Wu, Gan, Xing, Fu, 2025; arXiv 2512.22832).

MAPPO (shared PPO core) with a different policy objective (``docs/algorithms.md`` §1-§4; the § below):

1. Reflection (docs/algorithms.md §1). Besides the current step's clipped surrogate L0, the objective
   reuses the *next* step of the same agent's trajectory:
       L1 = E_k[ valid_k * min( rho_k rho_{k+1} A_{k+1},
                                clip(rho_k, x1, x2) clip(rho_{k+1}, x1, x2) A_{k+1} ) ]
       objective = L0 + alpha * L1            (alpha = 0.3)
   valid_k masks episode ends (k is the last step of its episode), the rollout's last step, and
   dead agents. A_{k+1} is the next step's normalised advantage in both branches. The released
   code's L1 is identically zero (its next-step advantages are never written, §1); this
   file computes A_{k+1} by a time shift of the same advantage tensor.

2. KL-derived dynamic asymmetric clipping (§2). The bounds x1 < 1 < x2 are the roots
   of f(r) = r - 1 - ln r = delta (the per-sample k3 KL estimator), in closed form with Lambert W:
       x1 = -W_0(-e^{-(1+delta)}),   x2 = -W_{-1}(-e^{-(1+delta)})
   delta adapts once per minibatch, before its gradient step:
       biased = max(KL_mb, kl_floor) + kl_bias * (1 - min(progress, 1))
       delta <- (1 - ema) * delta + ema * biased
   with KL_mb the exact categorical KL(pi_snapshot || pi_theta) averaged over the minibatch's alive
   agents, pi_snapshot the policy that collected the rollout, and progress = env steps so far /
   ``progress_horizon`` (default 10M, the paper's budget). The horizon is fixed, not the run's
   budget: a budget is a stopping rule, so a 300k-step run follows the first 300k steps of a
   10M-step run's delta path (keyed to the budget, a short run would compress the schedule).

Switches (§3): ``reflection`` (False: alpha is ignored), ``clip`` ("adaptive" |
"symmetric" = PPO's [1-eps, 1+eps] everywhere), ``main_clip`` ("adaptive" = the paper's placement,
bounds in L0 too | "ppo" = the official code's, adaptive bounds in L1 only). With
``reflection=False`` and ``clip="symmetric"`` MARPO is exactly MAPPO (a test asserts it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.special import lambertw

from baselines.mappo import MAPPO_RECIPES
from marpo_bench.algos.ppo_core import OnPolicyAlgorithm, PPOConfig, ppo_clip_surrogate
from marpo_bench.algos.rollout import Rollout, masked_mean


@dataclass
class MARPOConfig(PPOConfig):
    """MARPO = MAPPO's defaults and per-task recipes (the official code is a fork of MAPPO's and its
    scripts are MAPPO's) plus the paper's alpha 0.3, the official code's delta schedule constants
    (delta0 0.01, floor 0.008, bias 0.08, EMA 0.08) and the env steps over which delta's bias decays
    (``progress_horizon``: the paper's 10M-step budget; the official code divides its step count by
    the total, docs/algorithms.md §2)."""

    alpha: float = 0.3
    reflection: bool = True
    clip: Literal["adaptive", "symmetric"] = "adaptive"
    main_clip: Literal["adaptive", "ppo"] = "adaptive"
    delta0: float = 0.01
    kl_floor: float = 0.008
    kl_bias: float = 0.08
    delta_ema: float = 0.08
    progress_horizon: int = 10_000_000

    def validate(self) -> None:
        super().validate()
        from marpo_bench.config import ConfigError

        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        if self.delta0 <= 0 or self.kl_floor < 0 or self.kl_bias < 0 or not 0 <= self.delta_ema <= 1:
            raise ConfigError("need delta0 > 0, kl_floor >= 0, kl_bias >= 0 and 0 <= delta_ema <= 1")
        if self.progress_horizon <= 0:
            raise ConfigError(f"progress_horizon must be positive, got {self.progress_horizon}")


def kl_clip_bounds(delta: float) -> tuple[float, float]:
    """The two roots x1 < 1 < x2 of r - 1 - ln r = delta (§2, Lambert W closed form).

    The bounds are asymmetric (x2 - 1 > 1 - x1): a ratio may grow further than it may shrink for
    the same KL budget."""
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    z = -math.exp(-(1.0 + delta))
    x1 = float(-lambertw(z, 0).real)
    x2 = float(-lambertw(z, -1).real)
    return x1, x2


def schedule_progress(env_steps: int, horizon: int) -> float:
    """How far delta's bias has decayed: env steps so far over the fixed ``progress_horizon``, at
    most 1. Independent of the run's budget by construction."""
    return min(env_steps / horizon, 1.0)


def update_delta(delta: float, kl: float, progress: float, cfg: MARPOConfig) -> float:
    """One step of delta's schedule (§2): EMA of max(KL, floor) plus a decaying bias."""
    biased = max(kl, cfg.kl_floor) + cfg.kl_bias * (1.0 - min(progress, 1.0))
    return (1.0 - cfg.delta_ema) * delta + cfg.delta_ema * biased


def categorical_kl(logp_old: torch.Tensor, logp_new: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi_old || pi_new) over the last axis; masked actions carry zero old probability."""
    p_old = logp_old.exp()
    return (p_old * (logp_old - logp_new)).sum(-1)


def reflection_term(rho_k: torch.Tensor, rho_next: torch.Tensor, adv_next: torch.Tensor,
                    valid: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """L1 of §1 on time-major [T-1, ...] tensors: pair k uses step k's ratio and step
    k+1's ratio and advantage. ``valid`` says whether the pair may be used (same episode, agent
    alive at both steps; the rollout's last step has no pair). Normalised by max(#valid, 1) as in
    the official code."""
    unclipped = rho_k * rho_next * adv_next
    clipped = rho_k.clamp(lo, hi) * rho_next.clamp(lo, hi) * adv_next
    m = valid.to(rho_k.dtype)
    return (torch.min(unclipped, clipped) * m).sum() / m.sum().clamp(min=1.0)


def reflection_valid(mb: Rollout) -> torch.Tensor:
    """[T-1, E, N] mask of usable (k, k+1) pairs: k not the end of its episode, the agent alive at
    both steps. The rollout's last step has no k+1 and is excluded by construction (T-1 rows)."""
    not_end = ~mb.done[:-1]  # [T-1, E]
    return not_end.unsqueeze(-1) & mb.alive[:-1] & mb.alive[1:]


class MARPO(OnPolicyAlgorithm):
    """MARPO: MAPPO + reflection + KL-derived dynamic asymmetric clipping."""

    name = "marpo"
    Config = MARPOConfig
    cfg: MARPOConfig
    metrics = (*OnPolicyAlgorithm.metrics, "reflection_term", "clip_low_mean", "clip_low_p5", "clip_low_p95",
               "clip_high_mean", "clip_high_p5", "clip_high_p95", "kl_delta")
    DEFAULTS_BY_FAMILY = MAPPO_RECIPES  # the official MARPO scripts are MAPPO's (docs/algorithms.md, pitfalls)

    def __init__(self, cfg: MARPOConfig, *args, **kwargs) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.delta = cfg.delta0

    def policy_objective(self, mb: Rollout, logp_all: torch.Tensor, logp_next: torch.Tensor,
                         adv: torch.Tensor, env_steps: int) -> tuple[torch.Tensor, dict[str, float]]:
        """L0 + alpha * L1 with the configured clipping (§1-§2)."""
        cfg = self.cfg
        logp = logp_all.gather(-1, mb.actions.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - mb.logp_old)
        eps_lo, eps_hi = 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps
        if cfg.clip == "adaptive":
            # delta adapts once per minibatch, before this minibatch's gradient step.
            with torch.no_grad():
                kl = float(masked_mean(categorical_kl(mb.logits_old, logp_all.detach()), mb.alive))
            self.delta = update_delta(self.delta, kl, schedule_progress(env_steps, cfg.progress_horizon), cfg)
            x1, x2 = kl_clip_bounds(self.delta)
            lo0, hi0 = (x1, x2) if cfg.main_clip == "adaptive" else (eps_lo, eps_hi)
            lo1, hi1 = x1, x2
        else:
            lo0, hi0 = lo1, hi1 = eps_lo, eps_hi
        # L0: the current step's clipped surrogate.
        surrogate = masked_mean(ppo_clip_surrogate(ratio, adv, lo0, hi0), mb.alive)
        refl = torch.zeros((), device=ratio.device)
        if cfg.reflection and cfg.alpha > 0:
            # L1: the next step's ratio and advantage reinforce step k (tensor shift along time).
            # Next step's ratio: same agent, step k+1 of the same env (a shift along time); with a
            # recurrent actor it continues step k's hidden state (see OnPolicyLearner.log_probs).
            logp_k1 = logp_next.gather(-1, mb.actions[1:].unsqueeze(-1)).squeeze(-1)
            rho_next = torch.exp(logp_k1 - mb.logp_old[1:])
            refl = cfg.alpha * reflection_term(ratio[:-1], rho_next, adv[1:], reflection_valid(mb), lo1, hi1)
            surrogate = surrogate + refl
        with torch.no_grad():
            logs = {
                "approx_kl": float(masked_mean((ratio - 1) - torch.log(ratio), mb.alive)),
                "clip_fraction": float(masked_mean(((ratio < lo0) | (ratio > hi0)).float(), mb.alive)),
                "reflection_term": float(refl),
                "clip_low": lo1, "clip_high": hi1, "kl_delta": self.delta,
            }
        return surrogate, logs

    def summarize_logs(self, logs: dict[str, list[float]]) -> dict[str, float]:
        """Means, plus the 5/95 percentiles of the bounds over this update's minibatches."""
        out = super().summarize_logs({k: v for k, v in logs.items() if k not in ("clip_low", "clip_high")})
        for side in ("low", "high"):
            vals = np.asarray(logs[f"clip_{side}"])
            out[f"clip_{side}_mean"] = float(vals.mean())
            out[f"clip_{side}_p5"] = float(np.percentile(vals, 5))
            out[f"clip_{side}_p95"] = float(np.percentile(vals, 95))
        out["kl_delta"] = self.delta
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "delta": self.delta}

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        self.delta = float(sd["delta"])


# ----------------------------------------------------------------------------------------------
# Ablations (§3) as named algorithms, so one study (and its report) holds them beside
# MARPO under their own names. Each changes one default; every other setting is MARPO's.
# ----------------------------------------------------------------------------------------------


@dataclass
class MARPONoReflectionConfig(MARPOConfig):
    """MARPO without the reflection term (alpha ignored): MAPPO's objective with the adaptive clip."""

    reflection: bool = False


class MARPONoReflection(MARPO):
    """Ablation: MARPO's KL-derived asymmetric clipping alone."""

    name = "marpo_noreflect"
    Config = MARPONoReflectionConfig


@dataclass
class MARPOSymmetricClipConfig(MARPOConfig):
    """MARPO with PPO's fixed [1 - eps, 1 + eps] bounds in L0 and L1 (reflection kept)."""

    clip: Literal["adaptive", "symmetric"] = "symmetric"


class MARPOSymmetricClip(MARPO):
    """Ablation: MARPO's reflection term alone."""

    name = "marpo_symclip"
    Config = MARPOSymmetricClipConfig


@dataclass
class MARPOPPOMainClipConfig(MARPOConfig):
    """MARPO with the official code's clip placement: the KL-derived bounds in L1 only, PPO's fixed
    [1 - eps, 1 + eps] in L0 (docs/algorithms.md §2, "Where the bounds apply")."""

    main_clip: Literal["adaptive", "ppo"] = "ppo"


class MARPOPPOMainClip(MARPO):
    """Ablation: the paper's objective with the released code's placement of the adaptive bounds."""

    name = "marpo_ppoclip"
    Config = MARPOPPOMainClipConfig
