"""The QMix learner: S >= 1 seeds of one configuration on one task trained as one computation
(the JaxMARL pattern: one train function, seeds vectorised); a single run is S = 1.

Each seed is a ``baselines.qmix.QMix`` (a ``Seed`` here): its networks as ``nn.Module``s (for
acting, evaluation and checkpoints), its epsilon-greedy generator, replay sampler, reward
standardiser, counters and checkpoint. The learner holds the seeds' networks stacked along a leading
seed axis (``marpo_bench.seedstack.Stack``) and a stacked optimiser, and runs collection, targets,
loss and update once for all of them:

- Collection: epsilon-greedy over available actions in all E envs of every seed (``act_step``; the
  agent network runs once for all seeds), each seed's episodes into its own replay
  (``baselines/qmix_replay.py``).
- Targets: double-Q (argmax of the online network over *available* actions, evaluated by the target
  network), one-step or TD(lambda) targets (pymarl2; ``baselines/qmix_targets.py``) on each seed's
  learning reward.
- Update: pymarl's masked squared TD error over the valid steps of whole episodes, per-seed
  gradient-norm clipping and optimiser steps, hard target updates every N episodes or soft updates.

Per seed, as in a run of that seed alone: envs, replay buffer, sampling, epsilon, reward
standardisation, gradient clipping, optimiser steps and target updates. After every iteration the
stacks are written back into the seeds, so the runner evaluates, checkpoints and saves each as an
ordinary run, and a checkpoint resumes at any S. A seed that owes fewer updates in an iteration
than another (SMAX: episodes end at different times) sits the extra rounds out: its parameters,
optimiser state, standardiser and sampler are left untouched there.

At S = 1 every stacked operation runs the kernel of its unbatched counterpart on seed 0's slice
(``baselines/qmix_nets.py``, ``marpo_bench.seedstack``; no stack copies): one seed trains bit for
bit as the single-seed learner this one replaced did, and as fast (tests/test_qmix_one_learner.py
against a recorded slice of it; ``benchmarks/qmix_one_learner_speed.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.qmix_nets import Params, agent_q, mix
from baselines.qmix_recipes import QMixConfig
from baselines.qmix_replay import EpisodeBatch, EpisodeReplay, pad_time, stack_batches
from baselines.qmix_targets import (
    RunningMeanStd,
    batch_standardised,
    learning_reward,
    no_bootstrap,
    td_lambda_targets,
)
from marpo_bench import seedstack
from marpo_bench.envs.base import EnvInfo, MultiAgentVecEnv, SeedEnvs


class Seed(Protocol):
    """What the learner reads and writes of one seed (``baselines.qmix.QMix``)."""

    cfg: QMixConfig  # resolved; the same for every seed of a learner
    info: EnvInfo
    device: torch.device
    agent: nn.Module
    mixer: nn.Module
    target_agent: nn.Module
    target_mixer: nn.Module
    params: list[torch.Tensor]  # agent then mixer parameters: the optimiser's
    opt: torch.optim.Optimizer  # holds the seed's optimiser state between learner calls (checkpoints)
    reward_ms: RunningMeanStd
    gen: torch.Generator  # epsilon-greedy
    np_rng: np.random.Generator  # replay sampling
    t_env: int
    episodes: int
    updates: int
    last_target_update_episode: int
    update_credit: float

    def epsilon(self) -> float: ...


def epsilon_greedy(q: torch.Tensor, avail: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    """Epsilon-greedy over available actions: argmax of masked Q, or uniform over available."""
    greedy = q.masked_fill(~avail, -math.inf).argmax(-1)
    if eps <= 0.0:
        return greedy
    u = torch.rand(avail.shape, generator=gen, device=avail.device).masked_fill(~avail, -1.0)
    explore = torch.rand(greedy.shape, generator=gen, device=avail.device) < eps
    return torch.where(explore, u.argmax(-1), greedy)


@torch.no_grad()
def act_step(agent: Params, seeds: Sequence[Seed], obs: torch.Tensor, avail: torch.Tensor, done: torch.Tensor,
             act_state: tuple[torch.Tensor, torch.Tensor], eps: Sequence[float]) -> tuple[torch.Tensor, Any]:
    """One epsilon-greedy step of every seed: obs [S, E, N, D], avail [S, E, N, A], done [S, E]
    (the obs of these envs starts a new episode: their memory is reset) -> actions [S, E, N] and
    the next acting state; seed k selects with ``seeds[k]``'s generator and ``eps[k]``."""
    cfg = seeds[0].cfg
    h, last = act_state
    if bool(done.any()):
        keep = (~done).float().unsqueeze(-1).unsqueeze(-1)
        h, last = h * keep, last * keep
    S, E, N = obs.shape[:3]
    x = torch.cat([obs, last], dim=-1) if cfg.obs_last_action else obs
    q, h_new = agent_q(agent, x.reshape(S, 1, E * N, -1), h.reshape(S, E * N, -1), cfg.use_rnn)
    q = q.view(S, E, N, -1)
    actions = _one_per_seed([epsilon_greedy(q[k], avail[k], eps[k], s.gen) for k, s in enumerate(seeds)])
    return actions, (h_new.view(S, E, N, -1), F.one_hot(actions, q.shape[-1]).float())


def seed_reward(seed: Seed, batch: EpisodeBatch) -> torch.Tensor:
    """The learning reward [B, T] of ``batch`` for ``seed``: scaled, and standardised by the seed's
    running statistics or by the batch's own, per ``reward_stats``."""
    c = seed.cfg
    if c.standardise_rewards and c.reward_stats == "batch":
        return batch_standardised(learning_reward(batch.reward, c.reward_scale, None), batch.filled)
    return learning_reward(batch.reward, c.reward_scale, seed.reward_ms if c.standardise_rewards else None)


class QMixSeeds:
    """The QMix learner of S >= 1 seeds (see the module docstring; ``QMix.batched`` builds one).

    ``members[k]`` is seed k: its initial networks, epsilon-greedy generator, replay sampler,
    reward standardiser and counters, exactly as a run of seed k alone has them. Learning runs on
    stacked copies of the networks and a stacked optimiser (``sync_in`` reads the members,
    ``sync_out`` writes them back)."""

    def __init__(self, members: Sequence[Seed]) -> None:
        if not members:
            raise ValueError("QMixSeeds needs at least one seed")
        self.members = ms = list(members)
        self.cfg = c = ms[0].cfg
        self.info = ms[0].info
        self.device = ms[0].device
        self.S = len(ms)
        self.agent = seedstack.Stack([m.agent for m in ms])
        self.mixer = seedstack.Stack([m.mixer for m in ms])
        self.target_agent = seedstack.Stack([m.target_agent for m in ms], requires_grad=False)
        self.target_mixer = seedstack.Stack([m.target_mixer for m in ms], requires_grad=False)
        eps = c.optim_eps if c.optimizer == "rmsprop" else 1e-8  # Adam: torch's default eps (pymarl2)
        self.opt = seedstack.StackedOptimizer([*self.agent.tensors(), *self.mixer.tensors()], c.optimizer, c.lr,
                                              alpha=c.optim_alpha, eps=eps)
        for k, m in enumerate(ms):
            self.opt.read_from(k, m.opt, m.params)

    def sync_in(self) -> None:
        """Read every member's networks and optimiser state into the stacks (after a load)."""
        for k, m in enumerate(self.members):
            self.agent.read_from(k, m.agent)
            self.mixer.read_from(k, m.mixer)
            self.target_agent.read_from(k, m.target_agent)
            self.target_mixer.read_from(k, m.target_mixer)
            self.opt.read_from(k, m.opt, m.params)

    def sync_out(self) -> None:
        """Write the stacks back into the members (before they are evaluated or checkpointed)."""
        for k, m in enumerate(self.members):
            self.agent.write_to(k, m.agent)
            self.mixer.write_to(k, m.mixer)
            self.target_agent.write_to(k, m.target_agent)
            self.target_mixer.write_to(k, m.target_mixer)
            self.opt.write_to(k, m.opt, m.params)

    def initial_act_state(self, num_envs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every seed's ``QMix.initial_act_state``: zeros [S, E, N, H] and [S, E, N, A]."""
        N, A, H = self.info.num_agents, self.info.num_actions, self.cfg.rnn_hidden_dim
        return (torch.zeros(self.S, num_envs, N, H, device=self.device),
                torch.zeros(self.S, num_envs, N, A, device=self.device))

    # -- the networks over stacked episode batches ----------------------------------------------

    def q_all(self, agent: Params, b: EpisodeBatch) -> torch.Tensor:
        """Per-agent Q of ``agent`` (stacked parameters) for every slot of stacked batches ([S, B, ...]
        fields): [S, B, T+1, N, A], one agent pass over whole episodes."""
        S, B, L, N, _ = b.obs.shape
        A, c = self.info.num_actions, self.cfg
        x = b.obs
        if c.obs_last_action:
            x = torch.cat([x, _onehot_last(b.actions.reshape(S * B, L - 1, N), A).view(S, B, L, N, A)], dim=-1)
        x = x.permute(0, 2, 1, 3, 4).reshape(S, L, B * N, -1)
        h0 = torch.zeros(S, B * N, c.rnn_hidden_dim, device=x.device)
        q, _ = agent_q(agent, x, h0, c.use_rnn)
        return q.view(S, L, B, N, A).permute(0, 2, 1, 3, 4)

    def _mix(self, mixer: Params, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return mix(mixer, agent_qs, states, self.cfg.mixing_embed_dim, self.cfg.hypernet_layers)

    # -- learning -------------------------------------------------------------------------------

    def targets(self, b: EpisodeBatch, rewards: torch.Tensor, q_online: torch.Tensor | None = None,
                lam: float | None = None) -> torch.Tensor:
        """TD(lambda) targets [S, B, T] from the target networks (double-Q: argmax of the online
        network over available actions) on each seed's learning reward ``rewards`` [S, B, T],
        bootstrapping where ``no_bootstrap`` allows. ``q_online``: the online [S, B, T+1, N, A] if
        computed; ``lam``: overrides ``td_lambda``."""
        c = self.cfg
        S, B, T = rewards.shape
        with torch.no_grad():
            q_tgt = self.q_all(self.target_agent.params, b)[:, :, 1:]
            avail_next = b.avail[:, :, 1:]
            if c.double_q:
                q_on = (q_online if q_online is not None else self.q_all(self.agent.params, b)).detach()[:, :, 1:]
                a_star = q_on.masked_fill(~avail_next, -math.inf).argmax(-1, keepdim=True)
                q_next = q_tgt.gather(-1, a_star).squeeze(-1)
            else:
                q_next = q_tgt.masked_fill(~avail_next, -math.inf).max(-1).values
            # Padded slots have no available action: keep their (masked-out) values finite.
            q_next = torch.where(avail_next.any(-1), q_next, torch.zeros_like(q_next))
            q_tot_next = self._mix(self.target_mixer.params, q_next, b.state[:, :, 1:])
            filled = _filled(b).flatten(0, 1)
            stop = no_bootstrap(b.terminated.flatten(0, 1), filled, c.bootstrap_truncation)
            y = td_lambda_targets(rewards.flatten(0, 1), stop, filled, q_tot_next.flatten(0, 1), c.gamma,
                                  lam=c.td_lambda if lam is None else lam)
        return y.view(S, B, T)

    def loss(self, b: EpisodeBatch, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pymarl's masked squared TD error of Q_tot over the valid steps (team not all dead), per
        seed [S], and each seed's mean Q_tot [S], on stacked batches with each seed's learning
        reward ``rewards`` [S, B, T]."""
        q = self.q_all(self.agent.params, b)
        chosen = q[:, :, :-1].gather(-1, b.actions.unsqueeze(-1)).squeeze(-1)
        q_tot = self._mix(self.mixer.params, chosen, b.state[:, :, :-1])
        y = self.targets(b, rewards, q)
        mask = _filled(b) & b.alive[:, :, :-1].any(-1)
        n = mask.sum((1, 2)).clamp(min=1)
        zero = torch.zeros((), device=q_tot.device)
        loss = torch.where(mask, (q_tot - y) ** 2, zero).sum((1, 2)) / n  # where: padding can't leak NaN/inf
        q_mean = torch.where(mask, q_tot.detach(), zero).sum((1, 2)) / n
        return loss, q_mean

    def update(self, batches: list[EpisodeBatch | None]) -> list[dict[str, float] | None]:
        """One gradient step of every seed whose batch is given (``None``: the seed sits it out),
        then each stepped seed's target update when due."""
        c, ms = self.cfg, self.members
        active_list = [b is not None for b in batches]
        first = next(b for b in batches if b is not None)
        rows = [b if b is not None else first for b in batches]
        if c.standardise_rewards and c.reward_stats == "running":
            for m, b, on in zip(ms, rows, active_list, strict=True):
                if on:
                    m.reward_ms.update(c.reward_scale * b.reward[b.filled])
        t_max = max(int(b.reward.shape[1]) for b in rows)
        rows = [pad_time(b, t_max) for b in rows]
        rewards = _one_per_seed([seed_reward(m, b) for m, b in zip(ms, rows, strict=True)])
        loss, q_mean = self.loss(stack_batches(rows), rewards)
        active = torch.tensor(active_list, device=self.device)
        self.opt.zero_grad()
        (loss if all(active_list) else torch.where(active, loss, torch.zeros_like(loss))).sum().backward()
        norms = seedstack.clip_grad_norm(self.opt.tensors, c.grad_norm_clip)
        self.opt.step(active)
        due = [False] * self.S
        for k, m in enumerate(ms):
            if not active_list[k]:
                continue
            m.updates += 1
            since = m.episodes - m.last_target_update_episode
            if c.target_update == "hard" and since / c.target_update_interval >= 1.0:
                due[k] = True
                m.last_target_update_episode = m.episodes
        if c.target_update == "soft":
            self.target_agent.lerp_from(self.agent, c.tau, active)
            self.target_mixer.lerp_from(self.mixer, c.tau, active)
        elif any(due):
            self._update_targets(torch.tensor(due, device=self.device))
        return [{"td_loss": float(loss[k].detach()), "q_mean": float(q_mean[k]), "grad_norm": float(norms[k])}
                if on else None for k, on in enumerate(active_list)]

    def _update_targets(self, due: torch.Tensor) -> None:
        """Hard target update (copies of the online networks) of the seeds in ``due`` [S] bool."""
        self.target_agent.copy_from(self.agent, due)
        self.target_mixer.copy_from(self.mixer, due)

    def learn(self, envs: list[MultiAgentVecEnv], total_steps: int, seeds: list[int],
              on_iteration: list[Callable[[int, dict[str, float]], None]], start_steps: int = 0) -> None:
        """Collect with epsilon-greedy in all E envs of every seed for ``rollout_len`` steps, then
        one update per ``episodes_per_update`` finished episodes of a seed (once its buffer can be
        sampled); repeat until ``total_steps`` env steps (counted from the schedule position
        ``t_env``, so a loaded state resumes; ``start_steps`` > 0, passed by the runner when
        resuming, sets it explicitly). ``envs[k]``, ``seeds[k]`` and ``on_iteration[k]`` are seed
        k's; ``on_iteration[k]`` gets every iteration that trained (warm-up iterations are folded
        into the first one) and the last one, after the members were written back (``sync_out``),
        so a callback may evaluate or checkpoint its member. The replay buffers live only inside
        this call."""
        self.sync_in()
        ms, cfg, S = self.members, self.cfg, self.S
        for m in ms:
            if start_steps:
                m.t_env = int(start_steps)
        if len({m.t_env for m in ms}) != 1:
            raise ValueError("the seeds of a batched QMix must resume from the same env step")
        info = envs[0].info
        E = info.num_envs
        replays = [EpisodeReplay(cfg.buffer_size, E, info, self.device) for _ in ms]
        chunk = cfg.rollout_len or info.episode_limit
        seed_envs = SeedEnvs(envs)
        tss = seed_envs.reset(seeds)
        env_dev = tss[0].obs.device
        tss = [ts.to(self.device) for ts in tss]  # the learner's copy: one packed host-device transfer per step
        act_state = self.initial_act_state(E)
        done = torch.zeros(S, E, dtype=torch.bool, device=self.device)
        finished: list[list[float]] = [[] for _ in ms]
        while ms[0].t_env < total_steps:
            for _ in range(chunk):
                for rp, ts in zip(replays, tss, strict=True):
                    rp.add_obs(ts)
                obs = _one_per_seed([ts.obs for ts in tss])
                avail = _one_per_seed([ts.avail_actions for ts in tss])
                actions, act_state = act_step(self.agent.params, ms, obs, avail, done, act_state,
                                              [m.epsilon() for m in ms])
                nxts = [ts.to(self.device) for ts in seed_envs.step(list(actions.to(env_dev)))]
                for k, (m, rp, nxt) in enumerate(zip(ms, replays, nxts, strict=True)):
                    ended = rp.add_step(actions[k], nxt)
                    m.t_env += E
                    if ended.numel():
                        m.episodes += ended.numel()
                        finished[k].extend(nxt.episode_return[ended].tolist())
                        if rp.size >= cfg.batch_size:
                            m.update_credit += ended.numel() / cfg.episodes_per_update
                done = _one_per_seed([nxt.done for nxt in nxts])
                tss = nxts
                if ms[0].t_env >= total_steps:
                    break
            logs: list[dict[str, list[float]]] = [{} for _ in ms]
            while any(m.update_credit >= 1.0 for m in ms):
                batches: list[EpisodeBatch | None] = []
                for m, rp in zip(ms, replays, strict=True):
                    if m.update_credit >= 1.0:
                        m.update_credit -= 1.0
                        batches.append(rp.sample(cfg.batch_size, m.np_rng))
                    else:
                        batches.append(None)
                for k, out in enumerate(self.update(batches)):
                    for key, v in (out or {}).items():
                        logs[k].setdefault(key, []).append(v)
            self.sync_out()
            seed_envs.sync()
            for k, m in enumerate(ms):
                if not logs[k] and m.t_env < total_steps:
                    continue  # warm-up: report with the first training iteration
                metrics = {key: float(np.mean(v)) for key, v in logs[k].items()}
                metrics["epsilon"] = m.epsilon()
                metrics["train_return_mean"] = float(np.mean(finished[k])) if finished[k] else math.nan
                finished[k] = []
                on_iteration[k](m.t_env, metrics)


def _onehot_last(actions: torch.Tensor, num_actions: int) -> torch.Tensor:
    """[B, T, N] actions -> [B, T+1, N, A] one-hot of the previous action (zeros at t = 0)."""
    B, T, N = actions.shape
    out = torch.zeros(B, T + 1, N, num_actions, device=actions.device)
    out[:, 1:].scatter_(-1, actions.unsqueeze(-1), 1.0)
    return out


def _one_per_seed(items: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-seed tensors stacked along a new seed axis (one is a view, not a copy)."""
    return items[0].unsqueeze(0) if len(items) == 1 else torch.stack(list(items))


def _filled(b: EpisodeBatch) -> torch.Tensor:
    """[S, B, T] bool: the valid transitions of stacked batches (t < length)."""
    T = b.reward.shape[-1]
    return torch.arange(T, device=b.length.device) < b.length.unsqueeze(-1)
