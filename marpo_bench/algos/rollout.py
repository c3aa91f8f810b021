"""What on-policy collection produces and the update reads: the rollout (time-major, per env and
agent), GAE over it, its recurrent replay inputs cut into chunks, and the masked mean over alive
agents that every loss takes. Shared by the per-seed algorithm (``ppo_core``) and the learner
(``ppo_learner``), which import it and not each other's internals."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is true (0 when the mask is empty)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a [T, E] rollout with auto-reset.

    ``next_values[t]`` is V of the state after step t: the next state of the same episode, or the
    *final* state of an episode that ended at t. A terminal step does not bootstrap; a truncated
    one (time limit) does (docs/algorithms.md, pitfalls). The recursion stops at any episode end (``done``):
        delta_t = r_t + gamma * (1 - term_t) * V(s'_t) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
    Returns (advantages, returns = advantages + values)."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    not_term = 1.0 - terminated.float()
    not_done = 1.0 - done.float()
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * not_term[t] * next_values[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv, adv + values


@dataclass
class Rollout:
    """One on-policy batch, time-major: [T, E, ...]."""

    obs: torch.Tensor  # [T, E, N, O]
    state: torch.Tensor  # [T, E, S]
    avail: torch.Tensor  # [T, E, N, A] bool
    alive: torch.Tensor  # [T, E, N] bool
    actions: torch.Tensor  # [T, E, N] int64
    logp_old: torch.Tensor  # [T, E, N]   log pi_old(a|o) of the taken actions
    logits_old: torch.Tensor  # [T, E, N, A] masked log pi_old(.|o) (MARPO's exact KL)
    values: torch.Tensor  # [T, E] critic output (normalised space when value_norm)
    rewards: torch.Tensor  # [T, E]
    terminated: torch.Tensor  # [T, E] bool
    done: torch.Tensor  # [T, E] bool
    advantages: torch.Tensor  # [T, E]
    returns: torch.Tensor  # [T, E] (denormalised)
    hidden: torch.Tensor | None = None  # [T, E, N, H] recurrent actor state before step t (reset applied)
    hidden_critic: torch.Tensor | None = None  # [T, E, H] recurrent critic state before step t (reset applied)

    def select_envs(self, idx: torch.Tensor) -> Rollout:
        """The sub-rollout of envs ``idx`` (all T steps, so (t, t+1) pairs stay together)."""
        return Rollout(**{k: (v[:, idx] if v is not None else None) for k, v in self.__dict__.items()})


@dataclass
class ChunkedInputs:
    """The recurrent networks' replay inputs, cut into C = T / L chunks of ``L`` steps, each replayed
    from the hidden state stored at its start. They depend only on the rollout, so an update builds
    them once for all its epochs.

    Actor (recurrent actor only; chunks of L + 1 steps, the extra one being step k + 1 for MARPO's
    reflection on the chunk's last step, §1): ``obs`` [L+1, C, E, N, O], ``avail``
    [L+1, C, E, N, A], ``starts`` [L+1, C, E, N] (the step opens a new episode), ``h0`` [C, E, N, H].
    Critic (recurrent critic only): ``state`` [L, C, E, S], ``env_starts`` [L, C, E], ``hc0`` [C, E, H]."""

    obs: torch.Tensor | None = None
    avail: torch.Tensor | None = None
    starts: torch.Tensor | None = None
    h0: torch.Tensor | None = None
    state: torch.Tensor | None = None
    env_starts: torch.Tensor | None = None
    hc0: torch.Tensor | None = None

    @classmethod
    def from_rollout(cls, ro: Rollout, chunk_len: int) -> ChunkedInputs:
        T, E = ro.rewards.shape
        L, dev = chunk_len, ro.rewards.device
        C = T // L
        idx = (torch.arange(C, device=dev)[:, None] * L
               + torch.arange(L + 1, device=dev)[None, :]).clamp(max=T - 1)  # [C, L+1]

        def seq(x: torch.Tensor) -> torch.Tensor:  # [T, E, ...] -> [L+1, C, E, ...]
            return x[idx].transpose(0, 1).contiguous()

        starts = torch.zeros(T, E, dtype=torch.bool, device=dev)
        starts[1:] = ro.done[:-1]  # step t opens a new episode when step t-1 ended one
        out = cls()
        if ro.hidden is not None:
            out.obs, out.avail, out.h0 = seq(ro.obs), seq(ro.avail), ro.hidden[idx[:, 0]]
            out.starts = seq(starts.unsqueeze(-1).expand(ro.actions.shape))
        if ro.hidden_critic is not None:
            out.state, out.env_starts = seq(ro.state)[:L], seq(starts)[:L]
            out.hc0 = ro.hidden_critic[idx[:, 0]]
        return out

    def select_envs(self, idx: torch.Tensor) -> ChunkedInputs:
        """The chunks of envs ``idx`` (as ``Rollout.select_envs``)."""
        def pick(x: torch.Tensor | None, axis: int) -> torch.Tensor | None:
            return None if x is None else x.index_select(axis, idx)

        return ChunkedInputs(obs=pick(self.obs, 2), avail=pick(self.avail, 2), starts=pick(self.starts, 2),
                             h0=pick(self.h0, 1), state=pick(self.state, 2), env_starts=pick(self.env_starts, 2),
                             hc0=pick(self.hc0, 1))
