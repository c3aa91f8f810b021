"""S seeds of MAPPO or MARPO trained as one batched learner (``run --vectorize-seeds``).

``members[k]`` is an ordinary learner of the algorithm built with seed k (``OnPolicyAlgorithm``
subclass): it supplies seed k's initial networks, sampling generator, minibatch permutations,
ValueNorm, carried GRU states and the algorithm's own per-seed state (MARPO's delta), exactly as
an unbatched run of seed k has them. What is batched is the networks: the actor and the critic of
all seeds are stacked (``marpo_bench.seedstack.Stack``) and computed for all seeds at once with
batched matmuls (``_Batched``, following the members' own module structure), when acting and in
every epoch and minibatch of the update, forward and backward, with one stacked Adam per network.
(``torch.func.vmap`` of the members' modules works too, but has no batching rule for
``aten::gru_cell`` and ran the recurrent recipe 0.72x as fast as the seeds one after another.)
Everything per seed is computed by the member's own code on its slice: action sampling, GAE,
advantage normalisation, ValueNorm statistics, the policy objective (``policy_objective``:
MAPPO's clip, MARPO's reflection and adaptive clipping with its delta schedule), entropy and value
loss, gradient-norm clipping per seed. After every iteration the stacks are written back into the members, so the runner
evaluates, checkpoints and saves each member as an ordinary run.

Seed k follows the unbatched run of seed k within float tolerance (tests/test_seed_batch.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from marpo_bench.algos.ppo_core import ChunkedInputs, OnPolicyAlgorithm, PPOConfig, Rollout, compute_gae, masked_mean
from marpo_bench.envs.base import EnvInfo, MultiAgentVecEnv, SeedEnvs, TimeStep
from marpo_bench.nets import MLP, PerAgent, RecurrentNet, gumbel_max_sample, masked_logits
from marpo_bench.seedstack import (
    Stack,
    StackedOptimizer,
    clip_grad_norm,
    gru_cell,
    layer_norm,
    linear,
    sequential,
)


class _Batched:
    """One network of every seed (``nets.MLP``, ``nets.RecurrentNet`` or ``nets.PerAgent`` of
    them): the stacked parameters, and the network's methods (``forward``, ``step``, ``unroll``)
    computed for all seeds at once with ``marpo_bench.seedstack``'s stacked layers, following the
    module's own structure (read from seed 0's module; its parameter values are never used)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.stack = Stack(modules)
        self.template = modules[0]

    def __call__(self, method: str, *args: torch.Tensor) -> Any:
        """``method`` of every seed's network on its slice of ``args`` (leading dimension S)."""
        return getattr(self, f"_{method}")(self.template, "", *args)

    def _p(self, name: str) -> torch.Tensor:
        return self.stack[name]

    def _forward(self, net: nn.Module, pre: str, x: torch.Tensor) -> torch.Tensor:
        if isinstance(net, PerAgent):
            return torch.stack([self._forward(sub, f"{pre}nets.{i}.", x[..., i, :]) for i, sub in enumerate(net.nets)],
                               dim=-2)
        if isinstance(net, MLP):
            return sequential(x, self.stack, f"{pre}net.", net.net)
        raise TypeError(f"no stacked forward for {type(net).__name__}")

    def _cell(self, pre: str, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        p = self._p
        return gru_cell(x, h, p(f"{pre}gru.weight_ih"), p(f"{pre}gru.weight_hh"), p(f"{pre}gru.bias_ih"),
                        p(f"{pre}gru.bias_hh"))

    def _head(self, net: RecurrentNet, pre: str, h: torch.Tensor) -> torch.Tensor:
        p = self._p
        y = layer_norm(h, p(f"{pre}norm.weight"), p(f"{pre}norm.bias"), net.norm.eps)
        return linear(y, p(f"{pre}head.weight"), p(f"{pre}head.bias"))

    def _step(self, net: nn.Module, pre: str, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(net, PerAgent):
            outs = [self._step(sub, f"{pre}nets.{i}.", x[..., i, :], h[..., i, :]) for i, sub in enumerate(net.nets)]
            return torch.stack([o for o, _ in outs], dim=-2), torch.stack([hn for _, hn in outs], dim=-2)
        if not isinstance(net, RecurrentNet):
            raise TypeError(f"no stacked step for {type(net).__name__}")
        S, shape, H = x.shape[0], x.shape[1:-1], net.hidden_size
        feats = sequential(x, self.stack, f"{pre}base.", net.base).reshape(S, -1, H)
        h_new = self._cell(pre, feats, h.reshape(S, -1, H))
        return self._head(net, pre, h_new).reshape(S, *shape, -1), h_new.reshape(S, *shape, H)

    def _unroll(self, net: nn.Module, pre: str, x: torch.Tensor, h0: torch.Tensor, resets: torch.Tensor
                ) -> torch.Tensor:
        if isinstance(net, PerAgent):
            return torch.stack([self._unroll(sub, f"{pre}nets.{i}.", x[..., i, :], h0[..., i, :], resets[..., i])
                                for i, sub in enumerate(net.nets)], dim=-2)
        if not isinstance(net, RecurrentNet):
            raise TypeError(f"no stacked unroll for {type(net).__name__}")
        S, L, batch, H = x.shape[0], x.shape[1], x.shape[2:-1], net.hidden_size
        feats = sequential(x.reshape(S, L, -1, x.shape[-1]), self.stack, f"{pre}base.", net.base)
        resets = resets.reshape(S, L, -1)
        h, outs = h0.reshape(S, -1, H), []
        for j, f in enumerate(feats.unbind(1)):  # step by step, unbind (see seedstack.gru)
            if j > 0:
                h = h * (~resets[:, j]).unsqueeze(-1).to(h.dtype)
            h = self._cell(pre, f, h)
            outs.append(h)
        out = self._head(net, pre, torch.stack(outs, dim=1))
        return out.reshape(S, L, *batch, out.shape[-1])


class OnPolicySeeds:
    """S seeds of one ``OnPolicyAlgorithm`` subclass as one batched learner (module docstring)."""

    def __init__(self, algo_cls: type[OnPolicyAlgorithm], cfg: PPOConfig, env_info: EnvInfo,
                 device: torch.device | str, seeds: list[int]) -> None:
        if not seeds:
            raise ValueError("a batched learner needs at least one seed")
        self.members = [algo_cls(copy.deepcopy(cfg), env_info, device, s) for s in seeds]
        self.cfg = self.members[0].cfg
        self.info = env_info
        self.device = torch.device(device)
        self.S = len(seeds)
        ms, c = self.members, self.cfg
        self.actor = _Batched([m.actor for m in ms])
        self.critic = _Batched([m.critic for m in ms])
        self.actor_opt = StackedOptimizer(self.actor.stack.tensors(), "adam", c.lr, eps=c.adam_eps)
        self.critic_opt = StackedOptimizer(self.critic.stack.tensors(), "adam", c.critic_lr, eps=c.adam_eps)
        self.sync_in()

    def sync_in(self) -> None:
        """Read every member's networks and optimiser states into the stacks (after a load)."""
        for k, m in enumerate(self.members):
            self.actor.stack.read_from(k, m.actor)
            self.critic.stack.read_from(k, m.critic)
            self.actor_opt.read_from(k, m.actor_opt, list(m.actor.parameters()))
            self.critic_opt.read_from(k, m.critic_opt, list(m.critic.parameters()))

    def sync_out(self) -> None:
        """Write the stacks back into the members (before they are evaluated or checkpointed)."""
        for k, m in enumerate(self.members):
            self.actor.stack.write_to(k, m.actor)
            self.critic.stack.write_to(k, m.critic)
            self.actor_opt.write_to(k, m.actor_opt, list(m.actor.parameters()))
            self.critic_opt.write_to(k, m.critic_opt, list(m.critic.parameters()))

    # -- collection -----------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self, envs: SeedEnvs | list[MultiAgentVecEnv], tss: list[TimeStep]
                ) -> tuple[list[Rollout], list[TimeStep], list[list[float]]]:
        """``OnPolicyAlgorithm.collect`` for every seed: the actor and critic steps batched (and
        the envs, when they stack: ``SeedEnvs``), the sampling, bootstrap values and GAE per seed."""
        if not isinstance(envs, SeedEnvs):  # a list: stepped together for this rollout only
            seed_envs = SeedEnvs(envs)
            try:
                return self.collect(seed_envs, tss)
            finally:
                seed_envs.sync()
        cfg, T, dev, S, ms = self.cfg, self.cfg.rollout_len, self.device, self.S, self.members
        E = tss[0].obs.shape[0]
        keys = ("obs", "state", "avail", "alive", "actions", "logp_old", "logits_old", "rewards",
                "terminated", "done", "final_state", "hidden", "hidden_critic", "values", "hc_after")
        buf: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        finished: list[list[float]] = [[] for _ in ms]
        h = hc = None
        if cfg.recurrent:
            h = torch.stack([m.rollout_h if m.rollout_h is not None and m.rollout_h.shape[0] == E
                             else m.zero_hidden(E) for m in ms])
        if cfg.recurrent_critic:
            hc = torch.stack([m.rollout_hc if m.rollout_hc is not None and m.rollout_hc.shape[0] == E
                              else torch.zeros(E, cfg.hidden, device=dev) for m in ms])
        env_dev = tss[0].obs.device
        tsd = [ts.to(dev) for ts in tss]
        for _ in range(T):
            done = torch.stack([t.done for t in tsd])
            obs, avail = torch.stack([t.obs for t in tsd]), torch.stack([t.avail_actions for t in tsd])
            state = torch.stack([t.state for t in tsd])
            if h is not None:
                h = h * (~done).view(S, -1, 1, 1).to(h.dtype)
                buf["hidden"].append(h)
            if hc is not None:
                hc = hc * (~done).view(S, -1, 1).to(hc.dtype)
                buf["hidden_critic"].append(hc)
                v, hc = self.critic("step", state, hc)
                buf["values"].append(v.squeeze(-1))
                buf["hc_after"].append(hc)
            if h is None:
                logits = self.actor("forward", obs)
            else:
                logits, h = self.actor("step", obs, h)
            logp_all = torch.log_softmax(masked_logits(logits, avail), dim=-1)
            actions = torch.stack([gumbel_max_sample(logp_all[k], m.gen) for k, m in enumerate(ms)])
            buf["obs"].append(obs)
            buf["state"].append(state)
            buf["avail"].append(avail)
            buf["alive"].append(torch.stack([t.alive for t in tsd]))
            buf["actions"].append(actions)
            buf["logits_old"].append(logp_all)
            buf["logp_old"].append(logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1))
            tss = envs.step(list(actions.to(env_dev)))
            tsd = [ts.to(dev) for ts in tss]
            buf["rewards"].append(torch.stack([t.reward for t in tsd]))
            buf["terminated"].append(torch.stack([t.terminated for t in tsd]))
            buf["done"].append(torch.stack([t.done for t in tsd]))
            buf["final_state"].append(torch.stack([t.final_state for t in tsd]))
            for k, ts in enumerate(tss):
                if bool(ts.done.any()):
                    finished[k].extend(ts.episode_return[ts.done].tolist())
        for k, m in enumerate(ms):
            m.rollout_h = None if h is None else h[k].clone()
            m.rollout_hc = None if hc is None else hc[k].clone()
        # [T, S, ...] -> [S, T, ...]
        data = {k: torch.stack(v).transpose(0, 1) for k, v in buf.items() if v}
        final_state = data.pop("final_state")
        last_state = torch.stack([t.state for t in tsd])
        last_done = torch.stack([t.done for t in tsd])
        if hc is None:
            values = self.critic("forward", data["state"]).squeeze(-1)  # [S, T, E]
            v_last = self.critic("forward", last_state).squeeze(-1)  # [S, E]
            v_final_all = (self.critic("forward", final_state).squeeze(-1) if cfg.bootstrap_truncation else None)
        else:
            values, hc_after = data.pop("values"), data.pop("hc_after")
            v_last = self.critic("step", last_state, hc * (~last_done).view(S, -1, 1).to(hc.dtype))[0].squeeze(-1)
            v_final_all = None
            if cfg.bootstrap_truncation:
                flat = final_state.reshape(S, T * E, -1)
                v_final_all = self.critic("step", flat, hc_after.reshape(S, T * E, -1))[0].reshape(S, T, E)
        rollouts = []
        for k, m in enumerate(ms):
            d = {key: v[k] for key, v in data.items()}
            v_den = m.denorm(values[k])
            nxt = torch.cat([v_den[1:], m.denorm(v_last[k]).unsqueeze(0)])
            done_k = d["done"]
            if cfg.bootstrap_truncation:
                term = d["terminated"]
                truncated = done_k & ~term
                if bool(truncated.any()):
                    nxt[truncated] = m.denorm(v_final_all[k][truncated])
            else:
                term = done_k
            adv, ret = compute_gae(d["rewards"], v_den, nxt, term, done_k, cfg.gamma, cfg.gae_lambda)
            rollouts.append(Rollout(values=values[k], advantages=adv, returns=ret, **d))
        return rollouts, tss, finished

    # -- update ---------------------------------------------------------------------------------

    def _inputs(self, mbs: list[Rollout], chunks: list[ChunkedInputs] | None) -> dict[str, torch.Tensor]:
        """The networks' replay inputs of every seed, stacked ([S, ...]): built once per minibatch
        (once per update when there is one minibatch: they do not change between epochs)."""
        c = self.cfg
        if c.recurrent:
            names = ("obs", "h0", "starts", "avail")
            out = {n: torch.stack([getattr(ch, n) for ch in chunks]) for n in names}
        else:
            out = {"obs": torch.stack([mb.obs for mb in mbs]), "avail": torch.stack([mb.avail for mb in mbs])}
        if c.recurrent_critic:
            out.update({n: torch.stack([getattr(ch, n) for ch in chunks]) for n in ("state", "hc0", "env_starts")})
        else:
            out["state"] = torch.stack([mb.state for mb in mbs])
        return out

    def _log_probs(self, mbs: list[Rollout], x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``policy_log_probs`` of every seed: [S, T, B, N, A] and the next step's [S, T-1, B, N, A]."""
        if not self.cfg.recurrent:
            logp_all = torch.log_softmax(masked_logits(self.actor("forward", x["obs"]), x["avail"]), dim=-1)
            return logp_all, logp_all[:, 1:]
        S = self.S
        T, B, N = mbs[0].actions.shape
        L = self.cfg.chunk_len
        logits = self.actor("unroll", x["obs"], x["h0"], x["starts"])  # [S, L+1, C, B, N, A]
        logp = torch.log_softmax(masked_logits(logits, x["avail"]), dim=-1)
        logp = logp.transpose(1, 2)  # [S, C, L+1, B, N, A]
        logp_all = logp[:, :, :L].reshape(S, T, B, N, -1)
        logp_next = logp[:, :, 1:].reshape(S, T, B, N, -1)[:, :-1]
        return logp_all, logp_next

    def _values(self, mbs: list[Rollout], x: dict[str, torch.Tensor]) -> torch.Tensor:
        """``replay_values`` of every seed: [S, T, B]."""
        if not self.cfg.recurrent_critic:
            return self.critic("forward", x["state"]).squeeze(-1)
        T, B = mbs[0].rewards.shape
        v = self.critic("unroll", x["state"], x["hc0"], x["env_starts"]).squeeze(-1)  # [S, L, C, B]
        return v.transpose(1, 2).reshape(self.S, T, B)

    def update(self, ros: list[Rollout], env_steps: int) -> list[dict[str, float]]:
        """``OnPolicyAlgorithm.update`` for every seed, epoch by epoch and minibatch by minibatch
        in lockstep (each seed with its own permutation), the networks batched."""
        cfg, ms = self.cfg, self.members
        advs = []
        for ro in ros:
            adv = ro.advantages.unsqueeze(-1).expand_as(ro.logp_old)
            live = adv[ro.alive]
            advs.append((adv - live.mean()) / (live.std() + 1e-5) if live.numel() > 1 else adv)
        E = ros[0].rewards.shape[1]
        recurrent = cfg.recurrent or cfg.recurrent_critic
        chunks = [ChunkedInputs.from_rollout(ro, cfg.chunk_len) for ro in ros] if recurrent else None
        logs: list[dict[str, list[float]]] = [{} for _ in ms]
        whole = cfg.minibatches == 1
        inputs: dict[str, torch.Tensor] | None = None
        for _ in range(cfg.epochs):
            splits = [torch.chunk(torch.from_numpy(m.np_rng.permutation(E)).to(self.device), cfg.minibatches)
                      for m in ms]
            for j in range(cfg.minibatches):
                idx = [sp[j] for sp in splits]
                mbs = ros if whole else [ro.select_envs(i) for ro, i in zip(ros, idx, strict=True)]
                mb_advs = advs if whole else [a[:, i] for a, i in zip(advs, idx, strict=True)]
                mb_chunks = (chunks if whole or chunks is None
                             else [c.select_envs(i) for c, i in zip(chunks, idx, strict=True)])
                if not whole or inputs is None:
                    inputs = self._inputs(mbs, mb_chunks)
                logp_all, logp_next = self._log_probs(mbs, inputs)
                v_all = self._values(mbs, inputs)
                total = torch.zeros((), device=self.device)
                step_logs = []
                for k, m in enumerate(ms):
                    mb = mbs[k]
                    surrogate, pol_logs = m.policy_objective(mb, logp_all[k], logp_next[k], mb_advs[k], env_steps)
                    entropy = masked_mean(-(logp_all[k].exp() * logp_all[k]).sum(-1), mb.alive)
                    if m.value_norm is not None:
                        m.value_norm.update(mb.returns[mb.alive.any(-1)])
                    v_loss = m.value_loss(mb, None, v=v_all[k])
                    total = total + (-surrogate - cfg.entropy_coef * entropy) + cfg.value_coef * v_loss
                    step_logs.append({"policy_loss": float(-surrogate.detach()), "value_loss": float(v_loss.detach()),
                                      "entropy": float(entropy.detach()), **pol_logs})
                self.actor_opt.zero_grad()
                self.critic_opt.zero_grad()
                total.backward()
                gn = clip_grad_norm(self.actor_opt.tensors, cfg.max_grad_norm)
                clip_grad_norm(self.critic_opt.tensors, cfg.max_grad_norm)
                every = torch.ones(self.S, dtype=torch.bool)
                self.actor_opt.step(every)
                self.critic_opt.step(every)
                for k, sl in enumerate(step_logs):
                    sl["grad_norm"] = float(gn[k])
                    for key, v in sl.items():
                        logs[k].setdefault(key, []).append(v)
        return [m.summarize_logs(lg) for m, lg in zip(ms, logs, strict=True)]

    # -- training loop --------------------------------------------------------------------------

    def learn(self, envs: list[MultiAgentVecEnv], total_steps: int, seeds: list[int],
              on_iteration: list[Callable[[int, dict[str, float]], None]], start_steps: int = 0) -> None:
        """``OnPolicyAlgorithm.learn`` for every seed at once (``envs[k]``, ``seeds[k]`` and
        ``on_iteration[k]`` are seed k's). The members are written back before the callbacks."""
        self.sync_in()
        seed_envs = SeedEnvs(envs)
        tss = seed_envs.reset(seeds)
        if not start_steps:
            for m in self.members:
                m.rollout_h = m.rollout_hc = None
        steps = start_steps
        per_iter = self.cfg.num_envs * self.cfg.rollout_len
        while steps < total_steps:
            ros, tss, finished = self.collect(seed_envs, tss)
            steps += per_iter
            logs = self.update(ros, env_steps=steps)
            self.sync_out()
            seed_envs.sync()
            for k, metrics in enumerate(logs):
                metrics["train_return_mean"] = float(np.mean(finished[k])) if finished[k] else math.nan
                on_iteration[k](steps, metrics)
