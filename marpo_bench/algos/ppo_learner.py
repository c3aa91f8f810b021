"""The MAPPO / MARPO learner: S >= 1 seeds of one ``OnPolicyAlgorithm`` trained as one computation.

This is the only implementation of on-policy collection and the PPO update; a single run is the
learner at S = 1 (``OnPolicyAlgorithm.learn``), ``run --vectorize-seeds`` puts a seed group in one
learner (JaxMARL's pattern: one train function, seeds batched).

``members[k]`` is an ordinary learner of the algorithm built with seed k (``OnPolicyAlgorithm``
subclass): it supplies seed k's initial networks, sampling generator, minibatch permutations,
ValueNorm, carried GRU states and the algorithm's own per-seed state (MARPO's delta), exactly as a
run of seed k alone has them. What is batched is the networks: the actor and the critic of all
seeds are stacked (``marpo_bench.seedstack.Stack``) and computed for all seeds at once with
batched matmuls (``_Batched``, following the members' own module structure), when acting and in
every epoch and minibatch of the update, forward and backward, with one stacked Adam per network.
(``torch.func.vmap`` of the members' modules works too, but has no batching rule for
``aten::gru_cell`` and ran the recurrent recipe 0.72x as fast as the seeds one after another.)
Everything per seed is computed by the member's own code on its slice: action sampling, GAE,
advantage normalisation, ValueNorm statistics, the policy objective (``policy_objective``:
MAPPO's clip, MARPO's reflection and adaptive clipping with its delta schedule), entropy and value
loss, gradient-norm clipping per seed. After every iteration the stacks are written back into the
members, so the runner evaluates, checkpoints and saves each member as an ordinary run.

Seed k of an S-seed learner follows the same seed trained alone within float tolerance
(tests/test_seed_batch.py); at S = 1 the stacked layers compute what the members' ``nn`` modules
compute bit for bit (``seedstack``), and the learner reproduces the recorded slice of the
single-seed learner it replaced (tests/test_one_learner.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from marpo_bench.algos.rollout import ChunkedInputs, Rollout, compute_gae, masked_mean
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


class _Call(nn.Module):
    """``net.method`` as a module's forward (for ``torch.func.functional_call``)."""

    def __init__(self, net: nn.Module, method: str) -> None:
        super().__init__()
        self.net, self.method = net, method

    def forward(self, *args: torch.Tensor) -> Any:
        return getattr(self.net, self.method)(*args)


class _Batched:
    """One network of every seed: the stacked parameters, and the network's methods (``forward``,
    ``step``, ``unroll``) for all seeds at once.

    S > 1 seeds of ``nets.MLP``, ``nets.RecurrentNet`` or ``nets.PerAgent`` of them are computed
    with ``marpo_bench.seedstack``'s stacked layers, following the module's own structure (read
    from seed 0's module; its parameter values are never used). One seed, or a network of another
    kind (a plugin's, a test's hand-made one), runs as its own module seed by seed on its slice of
    the stack (``torch.func.functional_call``): the same kernels, so the same bits, as the module.
    Without autograd (acting) one seed runs on ``_views``, a copy of the module whose parameters
    are views of the stack (kept current by the optimiser's in-place steps), built once."""

    STACKED = (MLP, RecurrentNet, PerAgent)

    def __init__(self, modules: list[nn.Module]) -> None:
        self.stack = Stack(modules)
        self.template = modules[0]
        self.by_seed = len(modules) == 1 or not isinstance(self.template, self.STACKED)
        self._views = copy.deepcopy(self.template) if len(modules) == 1 else None
        if self._views is not None:
            with torch.no_grad():
                for name, t in self.stack.params.items():
                    owner, _, leaf = name.rpartition(".")
                    mod = self._views.get_submodule(owner)
                    setattr(mod, leaf, nn.Parameter(t.detach()[0], requires_grad=False))

    def __call__(self, method: str, *args: torch.Tensor) -> Any:
        """``method`` of every seed's network on its slice of ``args`` (leading dimension S)."""
        if self._views is not None and not torch.is_grad_enabled():
            out = getattr(self._views, method)(*(a[0] for a in args))
            return tuple(o.unsqueeze(0) for o in out) if isinstance(out, tuple) else out.unsqueeze(0)
        if self.by_seed:
            return self._seed_by_seed(method, *args)
        return getattr(self, f"_{method}")(self.template, "", *args)

    def _seed_by_seed(self, method: str, *args: torch.Tensor) -> Any:
        call, outs = _Call(self.template, method), []
        for k in range(len(self.stack)):
            params = {f"net.{n}": self.stack[n][k] for n in self.stack.names}
            outs.append(torch.func.functional_call(call, params, tuple(a[k] for a in args)))
        if isinstance(outs[0], tuple):
            return tuple(stack_seeds(list(parts)) for parts in zip(*outs, strict=True))
        return stack_seeds(outs)

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


def stack_seeds(xs: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(xs)``; one seed's tensor as a view (no copy) with the seed axis added."""
    return xs[0].unsqueeze(0) if len(xs) == 1 else torch.stack(xs)


class OnPolicyLearner:
    """S >= 1 seeds of one ``OnPolicyAlgorithm`` subclass as one learner (module docstring):
    ``members`` are the seeds' own learners, already built (and loaded, when resuming)."""

    @classmethod
    def of_seeds(cls, algo_cls: type, cfg: Any, env_info: EnvInfo,
                 device: torch.device | str, seeds: list[int]) -> OnPolicyLearner:
        """A learner of fresh members of ``algo_cls``, one per seed."""
        return cls([algo_cls(copy.deepcopy(cfg), env_info, device, s) for s in seeds])

    def __init__(self, members: list[Any]) -> None:
        if not members:
            raise ValueError("a learner needs at least one seed")
        self.members = list(members)
        self.cfg = self.members[0].cfg
        self.info = self.members[0].info
        self.device = self.members[0].device
        self.S = len(self.members)
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
        """Run ``rollout_len`` steps in every env of every seed (``envs[k]`` from ``tss[k]``);
        returns each seed's rollout, next TimeStep and the returns of the episodes that ended.
        The actor and critic steps are batched over seeds (and the envs, when they stack:
        ``SeedEnvs``); sampling, bootstrap values and GAE are per seed.

        Advantages (GAE) bootstrap from V of the next state; at an episode's end from V(final
        state) when it was truncated and ``bootstrap_truncation`` is on, else not at all
        (on-policy's use_proper_time_limits=False: a time limit ends the return). A recurrent
        critic computes V step by step from its carried hidden state (V(final state) continues the
        finished episode's hidden state)."""
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
            h = stack_seeds([m.rollout_h if m.rollout_h is not None and m.rollout_h.shape[0] == E
                             else m.zero_hidden(E) for m in ms])
        if cfg.recurrent_critic:
            hc = stack_seeds([m.rollout_hc if m.rollout_hc is not None and m.rollout_hc.shape[0] == E
                              else torch.zeros(E, cfg.hidden, device=dev) for m in ms])
        env_dev = tss[0].obs.device
        tsd = [ts.to(dev) for ts in tss]
        for _ in range(T):
            done = stack_seeds([t.done for t in tsd])
            obs, avail = stack_seeds([t.obs for t in tsd]), stack_seeds([t.avail_actions for t in tsd])
            state = stack_seeds([t.state for t in tsd])
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
            actions = stack_seeds([gumbel_max_sample(logp_all[k], m.gen) for k, m in enumerate(ms)])
            buf["obs"].append(obs)
            buf["state"].append(state)
            buf["avail"].append(avail)
            buf["alive"].append(stack_seeds([t.alive for t in tsd]))
            buf["actions"].append(actions)
            buf["logits_old"].append(logp_all)
            buf["logp_old"].append(logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1))
            tss = envs.step(list(actions.to(env_dev)))
            tsd = [ts.to(dev) for ts in tss]
            buf["rewards"].append(stack_seeds([t.reward for t in tsd]))
            buf["terminated"].append(stack_seeds([t.terminated for t in tsd]))
            buf["done"].append(stack_seeds([t.done for t in tsd]))
            buf["final_state"].append(stack_seeds([t.final_state for t in tsd]))
            for k, ts in enumerate(tss):
                if bool(ts.done.any()):
                    finished[k].extend(ts.episode_return[ts.done].tolist())
        for k, m in enumerate(ms):
            m.rollout_h = None if h is None else h[k].clone()
            m.rollout_hc = None if hc is None else hc[k].clone()
        # [T, S, ...] -> [S, T, ...]
        data = {k: torch.stack(v).transpose(0, 1) for k, v in buf.items() if v}
        final_state = data.pop("final_state")
        last_state = stack_seeds([t.state for t in tsd])
        last_done = stack_seeds([t.done for t in tsd])
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

    def inputs(self, mbs: list[Rollout], chunks: list[ChunkedInputs] | None) -> dict[str, torch.Tensor]:
        """The networks' replay inputs of every seed, stacked ([S, ...]): built once per minibatch
        (once per update when there is one minibatch: they do not change between epochs)."""
        c = self.cfg
        if c.recurrent:
            names = ("obs", "h0", "starts", "avail")
            out = {n: stack_seeds([getattr(ch, n) for ch in chunks]) for n in names}
        else:
            out = {"obs": stack_seeds([mb.obs for mb in mbs]), "avail": stack_seeds([mb.avail for mb in mbs])}
        if c.recurrent_critic:
            out.update({n: stack_seeds([getattr(ch, n) for ch in chunks]) for n in ("state", "hc0", "env_starts")})
        else:
            out["state"] = stack_seeds([mb.state for mb in mbs])
        return out

    def log_probs(self, mbs: list[Rollout], x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The current masked log pi(.|o) of every seed over its minibatch: ``(logp_all [S, T, B,
        N, A], logp_next [S, T-1, B, N, A])`` where ``logp_next[:, k]`` is step k+1 as seen when
        reflecting on step k (MARPO §1); ``x``: the minibatches' ``inputs``.

        Feed-forward: ``logp_next = logp_all[:, 1:]``. Recurrent: the rollout is cut into chunks of
        ``chunk_len`` steps, each replayed from its stored hidden state over chunk_len + 1 steps
        (docs/algorithms.md §1); the extra step gives step k+1 for the chunk's last k, continuing the
        same hidden state (the official code restarts it from h_k: an off-by-one not copied here)."""
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

    def values(self, mbs: list[Rollout], x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The current critic's values of every seed over its minibatch [S, T, B] (normalised when
        ``value_norm``); a recurrent critic replays each chunk of ``chunk_len`` steps from the
        hidden state stored at its start (as rMAPPO)."""
        if not self.cfg.recurrent_critic:
            return self.critic("forward", x["state"]).squeeze(-1)
        T, B = mbs[0].rewards.shape
        v = self.critic("unroll", x["state"], x["hc0"], x["env_starts"]).squeeze(-1)  # [S, L, C, B]
        return v.transpose(1, 2).reshape(self.S, T, B)

    def update(self, ros: list[Rollout], env_steps: int) -> list[dict[str, float]]:
        """PPO epochs x minibatches over envs for every seed in lockstep (each seed with its own
        permutation), the networks batched; ``env_steps`` collected so far (never the budget).
        Returns each seed's mean of every logged metric.

        Advantages: the shared team advantage per agent, normalised over alive agents (MAPPO).
        ValueNorm takes every minibatch's targets just before normalising them (on-policy's
        cal_value_loss: epochs x minibatches times per rollout). One minibatch is the whole rollout
        (the losses are means, so no copy), and its replay inputs are built once per update."""
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
                    inputs = self.inputs(mbs, mb_chunks)
                logp_all, logp_next = self.log_probs(mbs, inputs)
                v_all = self.values(mbs, inputs)
                total = torch.zeros((), device=self.device)
                step_logs = []
                for k, m in enumerate(ms):
                    mb = mbs[k]
                    surrogate, pol_logs = m.policy_objective(mb, logp_all[k], logp_next[k], mb_advs[k], env_steps)
                    entropy = masked_mean(-(logp_all[k].exp() * logp_all[k]).sum(-1), mb.alive)
                    if m.value_norm is not None:
                        m.value_norm.update(mb.returns[mb.alive.any(-1)])
                    v_loss = m.value_loss(mb, v_all[k])
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
        """Train every seed for ``total_steps`` env steps (E x T per iteration; ``envs[k]``,
        ``seeds[k]`` and ``on_iteration[k]`` are seed k's). ``on_iteration[k](env_steps, metrics)``
        is called after every update, the members written back first (the runner evaluates,
        logs and checkpoints from there). ``start_steps`` > 0 continues a resumed run: the env
        steps already done, with the members' loaded recurrent states kept (the runner's envs then
        return their saved state on reset)."""
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
