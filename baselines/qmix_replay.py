"""QMix's episode replay (pymarl's ``EpisodeBatch`` / ``ReplayBuffer``, vectorised): whole
episodes collected from auto-resetting parallel envs, stored in a ring buffer and sampled as
padded batches; and its exact size, known before it is allocated.

- Episodes are padded to ``T = episode_limit`` transitions plus one bootstrap slot (``T + 1`` obs /
  state / avail slots) and stored with their length; ``filled[t] = t < length`` masks the rest.
- With auto-reset and E parallel envs, each env's running episode is assembled in a per-env staging
  tensor ``[E, T + 1, ...]`` at the env's own time index (one indexed write per field per step, no
  per-env Python loop). When envs finish, their rows are scattered into the ring buffer in one
  indexed copy, with the bootstrap slot ``t = length`` holding ``final_obs`` / ``final_state``
  (the env's last observation of the finished episode; ``obs`` already belongs to the next one).
  The env gives no avail mask for that final observation, so the bootstrap slot reuses the mask of
  the episode's last step (exact on MPE; on SMAX, an agent dying on the very last step keeps its
  last mask there).
- Terminated episodes never bootstrap (the target is the reward); truncated ones (time limit)
  bootstrap from Q_tot(final obs, final state) unless ``bootstrap_truncation`` is off (MPE's
  recipe), where the time limit counts as terminal (``qmix_targets.no_bootstrap``).
- Death masking follows pymarl: dead agents stay in the mixer and act through their avail mask
  (no-op only); a step is masked from the loss only when the whole team is dead.
- Partially collected episodes at the end of ``learn`` are dropped (pymarl stores complete
  episodes only). The buffer is not checkpointed (it would be tens of MB); a resumed run refills it.
- Its size is known before it is allocated (``EpisodeReplay.nbytes``, exact; ``QMix.memory_estimate``
  adds the updates), and ``run`` refuses a run that would not fit (``marpo_bench.memory``). pymarl's
  5,000 episodes stay the default on every task, as the recipes' sources ran them: 0.6 GB on smax:3m,
  3.9 GB on 8m, 35.7 GB on 25m, 43.8 GB on 27m_vs_30m (``--set qmix.buffer_size=N`` is the departure).
- A batched learner keeps one replay per seed and trains on their samples stacked along a leading
  seed axis (``stack_batches``, after ``pad_time`` brings them to one length).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from baselines.qmix_recipes import QMixConfig
from marpo_bench.envs.base import EnvInfo, TimeStep


@dataclass
class EpisodeBatch:
    """Whole episodes padded to T transitions (T + 1 observation slots), batch-major."""

    obs: torch.Tensor  # [B, T+1, N, O] float32 (slot `length` = final obs of the episode)
    state: torch.Tensor  # [B, T+1, S] float32
    avail: torch.Tensor  # [B, T+1, N, A] bool
    alive: torch.Tensor  # [B, T+1, N] bool
    actions: torch.Tensor  # [B, T, N] int64
    reward: torch.Tensor  # [B, T] float32
    terminated: torch.Tensor  # [B, T] bool (only at the last step of a terminated episode)
    length: torch.Tensor  # [B] int64 transitions in the episode

    @property
    def filled(self) -> torch.Tensor:
        """[B, T] bool: valid transitions (t < length)."""
        T = self.reward.shape[1]
        return torch.arange(T, device=self.length.device).unsqueeze(0) < self.length.unsqueeze(1)

    def index(self, idx: torch.Tensor) -> EpisodeBatch:
        return EpisodeBatch(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    def truncate(self, t_max: int) -> EpisodeBatch:
        """Keep only the first ``t_max`` transitions (and t_max + 1 observation slots)."""
        return EpisodeBatch(
            obs=self.obs[:, : t_max + 1], state=self.state[:, : t_max + 1], avail=self.avail[:, : t_max + 1],
            alive=self.alive[:, : t_max + 1], actions=self.actions[:, :t_max], reward=self.reward[:, :t_max],
            terminated=self.terminated[:, :t_max], length=self.length,
        )


def _empty_batch(n: int, info: EnvInfo, device: torch.device) -> EpisodeBatch:
    T, N, D, S, A = info.episode_limit, info.num_agents, info.obs_dim, info.state_dim, info.num_actions
    return EpisodeBatch(
        obs=torch.zeros(n, T + 1, N, D, device=device), state=torch.zeros(n, T + 1, S, device=device),
        avail=torch.zeros(n, T + 1, N, A, dtype=torch.bool, device=device),
        alive=torch.zeros(n, T + 1, N, dtype=torch.bool, device=device),
        actions=torch.zeros(n, T, N, dtype=torch.int64, device=device), reward=torch.zeros(n, T, device=device),
        terminated=torch.zeros(n, T, dtype=torch.bool, device=device),
        length=torch.zeros(n, dtype=torch.int64, device=device),
    )


def episode_bytes(info: EnvInfo) -> int:
    """Bytes of one padded episode as ``_empty_batch`` allocates it (every field of
    :class:`EpisodeBatch`: float32 obs / state / reward, bool avail / alive / terminated, int64
    actions / length). Exact, so a replay's size is known before it is allocated."""
    T, N, D, S, A = info.episode_limit, info.num_agents, info.obs_dim, info.state_dim, info.num_actions
    slots = (T + 1) * (4 * N * D + 4 * S + N * A + N)  # obs, state, avail, alive
    steps = T * (8 * N + 4 + 1)  # actions, reward, terminated
    return slots + steps + 8  # + length


def update_bytes(cfg: QMixConfig, info: EnvInfo) -> int:
    """Estimated peak working set of one gradient update (``cfg`` resolved): the sampled batch (a
    copy of ``batch_size`` whole episodes) and what the agent networks (online and target) and the
    mixers hold over it while the loss is built and back-propagated. The activation terms are
    coarse, set from measured peak RSS with room to spare (the batched learner's step-by-step GRU
    keeps the most: about 2,500 floats per agent row at 64 hidden units on jax_mpe:simple_spread;
    tests/test_memory.py). Next to a replay of thousands of episodes it is a few percent."""
    T, N, A, S = info.episode_limit, info.num_agents, info.num_actions, info.state_dim
    B, H, Em = cfg.batch_size, cfg.rnn_hidden_dim, cfg.mixing_embed_dim
    in_dim = info.obs_dim + (A if cfg.obs_last_action else 0)
    rows = B * (T + 1) * N  # agent-network rows of a batch
    agent = 4 * rows * (4 * in_dim + 40 * H + 4 * A)
    mixer = 4 * B * T * 2 * (2 * S + 3 * cfg.hypernet_embed + 2 * N * Em + 4 * Em)
    return B * episode_bytes(info) + agent + mixer


class EpisodeReplay:
    """Ring buffer of whole episodes, filled from auto-resetting vectorised envs.

    ``stage`` holds each env's running episode ([E, T + 1, ...], written at the env's own time
    index ``t``); finished episodes are copied into ``data`` ([C, T + 1, ...]) with one indexed copy
    per field. Uniform sampling without replacement (pymarl's ``ReplayBuffer.sample``)."""

    def __init__(self, capacity: int, num_envs: int, info: EnvInfo, device: torch.device) -> None:
        self.capacity, self.E, self.T = capacity, num_envs, info.episode_limit
        self.device = device
        self.data = _empty_batch(capacity, info, device)
        self.stage = _empty_batch(num_envs, info, device)
        self.t = torch.zeros(num_envs, dtype=torch.int64, device=device)
        self.rows = torch.arange(num_envs, device=device)
        self.ptr = 0
        self.size = 0
        self.episodes = 0  # episodes ever inserted

    @staticmethod
    def nbytes(capacity: int, num_envs: int, info: EnvInfo) -> int:
        """Bytes this buffer allocates for ``capacity`` episodes and ``num_envs`` envs: the ring
        (``data``), the per-env staging rows (``stage``) and the per-env time index and row
        numbers (int64). Exact (tests/test_memory.py compares it with the allocated tensors)."""
        return (capacity + num_envs) * episode_bytes(info) + 2 * 8 * num_envs

    def __len__(self) -> int:
        return self.size

    def add_obs(self, ts: TimeStep) -> None:
        """Record the observation slot ``t`` of every env (before acting)."""
        st, r, t = self.stage, self.rows, self.t
        ts = ts.to(self.device)
        st.obs[r, t] = ts.obs
        st.state[r, t] = ts.state
        st.avail[r, t] = ts.avail_actions
        st.alive[r, t] = ts.alive

    def add_step(self, actions: torch.Tensor, nxt: TimeStep) -> torch.Tensor:
        """Record the transition taken at slot ``t`` and its outcome ``nxt``; move finished episodes
        to the buffer. Returns the indices of the envs whose episode ended."""
        st, r, t = self.stage, self.rows, self.t
        nxt = nxt.to(self.device)
        st.actions[r, t] = actions
        st.reward[r, t] = nxt.reward
        st.terminated[r, t] = nxt.terminated
        done = nxt.done
        self.t = t = t + 1
        if not bool(done.any()):
            if bool((t >= self.T).any()):
                raise RuntimeError(f"an episode ran past the env's episode_limit ({self.T}) without ending")
            return done.nonzero().squeeze(1)
        idx = done.nonzero().squeeze(1)
        tl = t[idx]  # = episode lengths
        # Bootstrap slot: the final obs/state of the finished episode; no avail mask is given for
        # it, so it reuses the last step's (see the module docstring).
        st.obs[idx, tl] = nxt.final_obs[idx]
        st.state[idx, tl] = nxt.final_state[idx]
        st.avail[idx, tl] = st.avail[idx, tl - 1]
        st.alive[idx, tl] = st.alive[idx, tl - 1]
        st.length[idx] = tl
        k = idx.numel()
        slots = (self.ptr + torch.arange(k, device=self.device)) % self.capacity
        for f in dataclasses.fields(EpisodeBatch):
            getattr(self.data, f.name)[slots] = getattr(st, f.name)[idx]
            getattr(st, f.name)[idx] = 0  # the staging row starts the next episode clean (zero padding)
        self.ptr = (self.ptr + k) % self.capacity
        self.size = min(self.size + k, self.capacity)
        self.episodes += k
        t[idx] = 0
        if bool((t >= self.T).any()):
            raise RuntimeError(f"an episode ran past the env's episode_limit ({self.T}) without ending")
        return idx

    def sample(self, batch_size: int, rng: np.random.Generator) -> EpisodeBatch:
        """``batch_size`` distinct stored episodes, truncated to the longest one."""
        idx = torch.from_numpy(rng.choice(self.size, batch_size, replace=False)).to(self.device)
        batch = self.data.index(idx)
        return batch.truncate(int(batch.length.max()))


def pad_time(batch: EpisodeBatch, t_max: int) -> EpisodeBatch:
    """Zero-pad a batch to ``t_max`` transitions (``t_max + 1`` observation slots). The padding lies
    outside ``filled``: every loss and target term there is masked, as it is for a batch's own
    padding, and the recurrence only runs past the episodes' ends."""
    T = batch.reward.shape[1]
    if T == t_max:
        return batch
    grow = t_max - T

    def pad(x: torch.Tensor) -> torch.Tensor:
        shape = list(x.shape)
        shape[1] = grow
        return torch.cat([x, torch.zeros(shape, dtype=x.dtype, device=x.device)], dim=1)

    return EpisodeBatch(**{f.name: getattr(batch, f.name) if f.name == "length" else pad(getattr(batch, f.name))
                           for f in dataclasses.fields(EpisodeBatch)})


def stack_batches(batches: Sequence[EpisodeBatch]) -> EpisodeBatch:
    """Batches of one shape stacked along a new leading seed axis (``[S, B, ...]`` fields); one
    batch is viewed as ``[1, B, ...]`` without a copy."""
    names = [f.name for f in dataclasses.fields(EpisodeBatch)]
    if len(batches) == 1:
        return EpisodeBatch(**{n: getattr(batches[0], n).unsqueeze(0) for n in names})
    return EpisodeBatch(**{n: torch.stack([getattr(b, n) for b in batches]) for n in names})
