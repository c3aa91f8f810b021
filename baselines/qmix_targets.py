"""What QMix's TD targets are made of: the learning reward (scaled, optionally standardised) and
the one-step / TD(lambda) targets over padded episodes, with where they do not bootstrap.

Pure functions of tensors with any leading batch shape flattened to rows ``[B, T]``: the learner
(``baselines.qmix``) hands them the rows of all its seeds at once.
"""

from __future__ import annotations

import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Running mean / variance of a scalar stream (parallel update; EPyMARL's reward standardiser)."""

    def __init__(self, eps: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        if x.numel() == 0:
            return
        n, m, v = x.numel(), x.mean(), x.var(unbiased=False)
        delta, tot = m - self.mean, self.count + n
        self.var.copy_((self.var * self.count + v * n + delta**2 * self.count * n / tot) / tot)
        self.mean.add_(delta * n / tot)
        self.count.copy_(tot)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.var.clamp(min=1e-8).sqrt()).to(x.dtype)


def td_lambda_targets(rewards: torch.Tensor, terminated: torch.Tensor, filled: torch.Tensor,
                      next_q: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """TD(lambda) targets [B, T] for padded episodes (lambda = 0: pymarl's one-step targets).

    ``next_q[:, t]`` is the target Q_tot at slot t + 1 (the next state, or the final state of an
    episode that ended at t); ``filled[:, t]`` marks the valid transitions. A terminated step does
    not bootstrap; a truncated (time-limit) step does. The recursion never crosses the end of an
    episode (c = whether step t + 1 is in the episode)::

        G_t = r_t + gamma (1 - term_t) [ (1 - lam c_{t+1}) Q_{t+1} + lam c_{t+1} G_{t+1} ]

    This equals pymarl2's ``build_td_lambda_targets`` where its assumptions hold (episodes end by
    termination or at the padded length) and also handles episodes truncated before it.
    Entries outside ``filled`` are meaningless (masked by the caller)."""
    not_term = 1.0 - terminated.float()
    if lam == 0.0:
        return rewards + gamma * not_term * next_q
    T = rewards.shape[1]
    out = torch.zeros_like(rewards)
    g = torch.zeros_like(rewards[:, 0])
    cont = torch.cat([filled[:, 1:].float(), torch.zeros_like(filled[:, :1], dtype=rewards.dtype)], dim=1)
    for t in reversed(range(T)):
        c = lam * cont[:, t]
        g = rewards[:, t] + gamma * not_term[:, t] * ((1.0 - c) * next_q[:, t] + c * g)
        out[:, t] = g
    return out


def no_bootstrap(terminated: torch.Tensor, filled: torch.Tensor, bootstrap_truncation: bool) -> torch.Tensor:
    """[B, T] bool: the steps whose TD target does not bootstrap from the next state.

    A terminated step never bootstraps. A truncated one (the episode's last valid step, not
    terminated) bootstraps only with ``bootstrap_truncation``: the env contract's reading of a time
    limit, and pymarl's (``terminated != env_info["episode_limit"]``). Without it, the time limit is
    treated as terminal, as JaxMARL's QMix does (``1 - dones["__all__"]``, done at MPE's max_steps):
    MPE observations carry no time, so a bootstrap there asks Q_tot for the infinite-horizon value
    (reward / (1 - gamma)) of a 25-step task."""
    if bootstrap_truncation:
        return terminated
    last = filled & ~torch.cat([filled[:, 1:], torch.zeros_like(filled[:, :1])], dim=1)
    return terminated | last


def learning_reward(reward: torch.Tensor, scale: float, standardiser: RunningMeanStd | None) -> torch.Tensor:
    """The reward the TD targets use: the team reward times ``scale`` (JaxMARL's ``REW_SCALE``,
    which brings SMAX's [0, 2] returns to SMAC's scale, where pymarl's settings were tuned), then
    standardised by the running mean and std of the scaled rewards when a standardiser is given
    (EPyMARL's ``standardise_rewards``)."""
    r = reward * scale
    return standardiser.normalize(r) if standardiser is not None else r


def batch_standardised(reward: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """EPyMARL's first release (2021, the code of its benchmark paper; ``q_learner.py``: ``rewards =
    (rewards - rewards.mean()) / (rewards.std() + 1e-5)``): the sampled batch's own mean and
    (unbiased) std, here over the valid steps (EPyMARL also counts the zero padding after shorter
    episodes; on MPE every episode is full, so the two agree)."""
    valid = reward[filled]
    return (reward - valid.mean()) / (valid.std() + 1e-5)
