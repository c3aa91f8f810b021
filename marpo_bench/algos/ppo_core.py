"""What MAPPO and MARPO share: config, actor/critic, rollout buffer, GAE, value normalisation,
and ``OnPolicyAlgorithm``, one seed's part of the on-policy learner (``ppo_learner.OnPolicyLearner``
does collection and the PPO update for S >= 1 of them). Only the *policy objective* differs
between the two algorithms: each subclass implements ``policy_objective`` (MAPPO in ``baselines/mappo.py``, MARPO in
``marpo_bench/algos/marpo.py``).

Structure (CTDE, ``docs/algorithms.md`` §0): a shared actor pi(a_i | o_i, id_i) over discrete
actions with availability masks; a centralised critic V(s) on the global state. The team reward is
shared, so one value per env suffices and advantages broadcast to every agent.

Minibatches are drawn over *environments* (each minibatch holds whole [T]-step trajectories of a
subset of envs). This keeps (t, t+1) pairs together for MARPO's reflection term and lets a
recurrent policy be added without changing the sampler; with one minibatch (MAPPO's published
default everywhere) it is identical to MAPPO's sampler.

The published per-task recipes (which of these switches on-policy's scripts set, with their
sources) are ``MAPPO_RECIPES`` in ``baselines/mappo.py``; MARPO inherits them. The ``PPOConfig``
class defaults are the base they override (on-policy's ``config.py`` defaults where an env family has no recipe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from marpo_bench.algos.rollout import Rollout, masked_mean
from marpo_bench.envs.base import EnvInfo, MultiAgentVecEnv, TimeStep
from marpo_bench.nets import MLP, PerAgent, RecurrentNet, gumbel_max_sample, masked_logits


@dataclass
class PPOConfig:
    """Shared on-policy settings. The class defaults are the base every recipe overrides: on-policy's
    ``onpolicy/config.py`` defaults (gamma 0.99, GAE lambda 0.95, clip 0.2, entropy 0.01, value coef
    1, Huber delta 10 with value clipping, ValueNorm, grad-norm clip 10, Adam eps 1e-5, 1 minibatch,
    64-unit networks with input LayerNorm, ReLU) with the MPE scripts' 128 envs x 25 steps, lr 7e-4
    and 10 epochs, as an MLP (non-recurrent) actor and critic. The published recipe of each env
    family and task (recurrent actor and critic, activation, epochs, clip, shared policy, agent id,
    time-limit bootstrap) is ``MAPPO_RECIPES`` in ``baselines/mappo.py``."""

    num_envs: int = 128
    rollout_len: int = 25
    epochs: int = 10
    minibatches: int = 1
    lr: float = 7e-4
    critic_lr: float = 7e-4
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    entropy_coef: float = 0.01
    value_coef: float = 1.0
    huber_delta: float = 10.0
    value_clip: bool = True
    value_norm: bool = True
    max_grad_norm: float = 10.0
    hidden: int = 64
    layers: int = 2
    activation: Literal["relu", "tanh"] = "relu"  # on-policy --use_ReLU (store_false: passing it gives Tanh)
    agent_id: bool = True  # the env appends a one-hot agent id to each observation
    recurrent: bool = False  # GRU actor (on-policy's rmappo R_Actor)
    recurrent_critic: bool = False  # GRU critic (rmappo's R_Critic; on-policy's rmappo sets both)
    chunk_len: int = 10  # BPTT chunk length of the recurrent nets (on-policy data_chunk_length 10)
    share_policy: bool = True  # one actor for all agents (on-policy --share_policy, store_false)
    # Truncated episodes (time limit) bootstrap from V(final state). on-policy's
    # use_proper_time_limits is False: its recipes treat a time limit as terminal (no bootstrap).
    # Without the bootstrap the value of a state depends on the time left, which a GRU critic
    # replaying from the episode's start can track and an MLP critic on a timeless state cannot.
    bootstrap_truncation: bool = True

    def validate(self) -> None:
        """Reject values that cannot work, naming the setting."""
        from marpo_bench.config import ConfigError

        for name in ("num_envs", "rollout_len", "epochs", "minibatches", "hidden", "layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if (self.recurrent or self.recurrent_critic) and (self.chunk_len <= 0 or self.rollout_len % self.chunk_len):
            raise ConfigError(f"rollout_len ({self.rollout_len}) must be a multiple of chunk_len ({self.chunk_len})")
        if self.minibatches > self.num_envs:
            raise ConfigError(f"minibatches ({self.minibatches}) cannot exceed num_envs ({self.num_envs})")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError("gamma and gae_lambda must lie in [0, 1]")
        if self.clip_eps <= 0 or self.lr <= 0 or self.critic_lr <= 0:
            raise ConfigError("clip_eps, lr and critic_lr must be positive")


# ----------------------------------------------------------------------------------------------
# Value normalisation
# ----------------------------------------------------------------------------------------------


class ValueNorm(nn.Module):
    """Running mean/std of value targets with a debiased EMA (MAPPO's ``ValueNorm``, beta 0.99999).

    The critic predicts normalised values; GAE works on denormalised ones."""

    def __init__(self, beta: float = 0.99999, eps: float = 1e-5) -> None:
        super().__init__()
        self.beta, self.eps = beta, eps
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean_sq", torch.zeros((), dtype=torch.float64))
        self.register_buffer("debias", torch.zeros((), dtype=torch.float64))

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.debias.clamp(min=self.eps)
        mean = self.mean / d
        var = (self.mean_sq / d - mean**2).clamp(min=1e-2)
        return mean, var

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch of targets into the running statistics."""
        x = x.detach().double()
        self.mean.mul_(self.beta).add_(x.mean() * (1 - self.beta))
        self.mean_sq.mul_(self.beta).add_((x**2).mean() * (1 - self.beta))
        self.debias.mul_(self.beta).add_(1 - self.beta)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._stats()
        return ((x.double() - mean) / var.sqrt()).to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._stats()
        return (x.double() * var.sqrt() + mean).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Memory of a rollout and an update
# ----------------------------------------------------------------------------------------------


def rollout_bytes(cfg: PPOConfig, info: EnvInfo) -> int:
    """Bytes of one :class:`Rollout` of ``cfg.num_envs`` envs x ``cfg.rollout_len`` steps on a task
    of ``info``'s shapes: every field at its dtype (float32, bool, int64 actions), the recurrent
    states only where the actor / critic is recurrent. Exact for the stacked rollout ``collect``
    returns (tests/test_memory.py)."""
    N, D, S, A, H = info.num_agents, info.obs_dim, info.state_dim, info.num_actions, cfg.hidden
    per_agent = 4 * D + A + 1 + 8 + 4 + 4 * A  # obs, avail, alive, actions, logp_old, logits_old
    per_agent += 4 * H if cfg.recurrent else 0  # hidden
    per_env = 4 * S + 4 * 4 + 2  # state; values, rewards, advantages, returns; terminated, done
    per_env += 4 * H if cfg.recurrent_critic else 0  # hidden_critic
    return cfg.num_envs * cfg.rollout_len * (N * per_agent + per_env)


def ppo_update_bytes(cfg: PPOConfig, info: EnvInfo) -> int:
    """Estimated working set of one PPO update on a minibatch (rollout_len x num_envs /
    minibatches transitions): what autograd keeps per agent row over the actor's replay (input
    LayerNorm, ``layers`` hidden layers, the GRU's gates step by step, log-probabilities) and the
    recurrent replay's chunked copies of the inputs. Coarse and on the safe side: set from
    measured peak RSS (about 2,000 to 3,200 floats per agent row at 64 hidden units with the
    recipes' GRU actor and critic on jax_mpe:simple_spread, smax:3m and smax:8m;
    tests/test_memory.py)."""
    rows = cfg.rollout_len * cfg.num_envs * info.num_agents // cfg.minibatches
    floats = (16 + 16 * cfg.layers) * cfg.hidden + 4 * info.obs_dim + 16 * info.num_actions
    return 4 * rows * floats


# ----------------------------------------------------------------------------------------------
# The on-policy learner
# ----------------------------------------------------------------------------------------------


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Elementwise Huber loss (MAPPO's value loss with delta 10)."""
    a = x.abs()
    return torch.where(a <= delta, 0.5 * x**2, delta * (a - 0.5 * delta))


class OnPolicyAlgorithm:
    """One seed of a MAPPO-style CTDE learner: its networks (``nn`` modules, what acting,
    evaluation, checkpoints and the saved policy use), optimisers, ValueNorm, RNGs, carried GRU
    states and the per-seed hooks of the update (``policy_objective``, supplied by subclasses;
    ``value_loss``). Training (``learn``, ``collect``, ``update``) runs through the one learner,
    ``ppo_learner.OnPolicyLearner``, with this seed alone or with others."""

    name = "ppo"
    Config = PPOConfig
    on_policy = True
    # All in-flight episode state (the GRU states carried across rollouts) is in the state_dict.
    resumes_mid_episode = True
    resumes_exactly = True
    metrics: tuple[str, ...] = ("policy_loss", "value_loss", "entropy", "grad_norm", "approx_kl", "clip_fraction")
    # One learner with S x the envs does S seeds' arithmetic (same epochs and minibatch count):
    # ``bench --seed-stacks`` times it as batching's bound.
    seed_scaled_settings = ("num_envs",)
    # The setting its memory grows with and what it holds, named when a run would not fit
    # (``marpo_bench.memory``).
    memory_setting = ("num_envs", "its rollout of {num_envs} envs (num_envs) x {rollout_len} steps and its update")

    @classmethod
    def memory_estimate(cls, cfg: PPOConfig, info: EnvInfo, seeds: int = 1) -> int:
        """Bytes ``learn`` allocates for ``cfg`` on a task of ``info``'s shapes (``seeds`` > 1: the
        batched learner, one rollout per seed): per seed, the rollout twice (``collect`` holds the
        per-step tensors while it stacks them: ``rollout_bytes``) and one update's working set
        (``ppo_update_bytes``). Networks and optimiser states (about a MB) are left out."""
        return seeds * (2 * rollout_bytes(cfg, info) + ppo_update_bytes(cfg, info))

    def __init__(self, cfg: PPOConfig, env_info: EnvInfo, device: torch.device | str, seed: int) -> None:
        self.cfg = cfg
        self.info = env_info
        self.device = torch.device(device)
        self.seed = seed
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG state
            torch.manual_seed(seed)
            net = RecurrentNet if cfg.recurrent else MLP
            actors = [net(env_info.obs_dim, env_info.num_actions, cfg.hidden, cfg.layers, cfg.activation,
                          out_gain=0.01) for _ in range(1 if cfg.share_policy else env_info.num_agents)]
            self.actor: nn.Module = (actors[0] if cfg.share_policy else PerAgent(actors)).to(self.device)
            # One centralised critic V(s) per env: the team reward is shared, so agents' critics on the
            # same state would learn the same function (on-policy's separated runner keeps one each).
            net = RecurrentNet if cfg.recurrent_critic else MLP
            self.critic = net(env_info.state_dim, 1, cfg.hidden, cfg.layers, cfg.activation,
                              out_gain=1.0).to(self.device)
        self.value_norm = ValueNorm().to(self.device) if cfg.value_norm else None
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=cfg.adam_eps)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        # The recurrent states carried across rollouts (part of the state: see state_dict).
        self.rollout_h: torch.Tensor | None = None  # actor [E, N, H]
        self.rollout_hc: torch.Tensor | None = None  # critic [E, H]

    # What the learner (``OnPolicyLearner``) computes itself, for all its seeds at once: a subclass
    # overriding one of these would be bypassed by ``learn``. A subclass changes the per-seed hooks
    # (``policy_objective``, ``value_loss``, ``summarize_logs``, the state) or brings its own ``learn``.
    _LEARNER_COMPUTES = ("collect", "update", "policy_log_probs", "replay_values", "log_probs", "_step_policy")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "learn" in vars(cls):  # its own training loop: the learner cannot batch it
            cls.batched = None  # type: ignore[assignment]
            return
        replaced = [name for name in OnPolicyAlgorithm._LEARNER_COMPUTES if name in vars(cls)]
        if replaced:
            raise TypeError(f"{cls.__name__} overrides {', '.join(replaced)}, which the on-policy learner "
                            "computes for all seeds at once (marpo_bench.algos.ppo_learner) and would bypass: "
                            "override policy_objective or value_loss (per seed), or define learn as well")

    @classmethod
    def batched(cls, cfg: PPOConfig, env_info: EnvInfo, device: torch.device | str, seeds: list[int]) -> Any:
        """S seeds as one learner (the optional ``batched`` contract, docs/extending.md): an
        ``OnPolicyLearner`` over fresh members of this class. ``None`` on a subclass with its own
        ``learn``."""
        from marpo_bench.algos.ppo_learner import OnPolicyLearner

        return OnPolicyLearner.of_seeds(cls, cfg, env_info, device, seeds)

    # -- acting -------------------------------------------------------------------------------

    def log_probs(self, obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """Masked log pi(.|o) for every action: [..., A] (feed-forward actor)."""
        return torch.log_softmax(masked_logits(self.actor(obs), avail), dim=-1)

    def zero_hidden(self, num_envs: int) -> torch.Tensor:
        """The recurrent actor's state at an episode start: [E, N, H] zeros."""
        return torch.zeros(num_envs, self.info.num_agents, self.cfg.hidden, device=self.device)

    def _step_policy(self, ts: TimeStep, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masked log pi(.|o_t) [E, N, A] and the next hidden state for a TimeStep already on the
        learner's device; the hidden state is zeroed where ``ts.done`` says the observation starts
        a new episode."""
        if h is None:
            return self.log_probs(ts.obs, ts.avail_actions), None
        h = h * (~ts.done).view(-1, 1, 1).to(h.dtype)
        logits, h_next = self.actor.step(ts.obs, h)
        return torch.log_softmax(masked_logits(logits, ts.avail_actions), dim=-1), h_next

    def initial_act_state(self, num_envs: int) -> Any:
        """Per-env policy state for acting: the GRU hidden state, or None for an MLP policy."""
        return self.zero_hidden(num_envs) if self.cfg.recurrent else None

    @torch.no_grad()
    def act(self, ts: TimeStep, act_state: Any, deterministic: bool) -> tuple[torch.Tensor, Any]:
        """Actions [E, N] for a TimeStep (greedy when ``deterministic``) on the env's device, and
        the next policy state (``ts.done`` marks envs whose episode restarted)."""
        logp, act_state = self._step_policy(ts.to(self.device), act_state)
        a = logp.argmax(-1) if deterministic else gumbel_max_sample(logp, self.gen)
        return a.to(ts.obs.device), act_state

    # -- training: the one learner (``ppo_learner.OnPolicyLearner``) with this seed alone -----------

    def learner(self) -> Any:
        """This seed as an S = 1 ``OnPolicyLearner`` (it reads the networks and optimiser states
        now; its ``sync_out`` writes them back)."""
        from marpo_bench.algos.ppo_learner import OnPolicyLearner

        return OnPolicyLearner([self])

    def denorm(self, v: torch.Tensor) -> torch.Tensor:
        return self.value_norm.denormalize(v) if self.value_norm is not None else v

    def collect(self, env: MultiAgentVecEnv, ts: TimeStep) -> tuple[Rollout, TimeStep, list[float]]:
        """One rollout of this seed (``OnPolicyLearner.collect`` at S = 1): the rollout, the next
        TimeStep and the returns of the episodes that ended."""
        lr = self.learner()
        ros, tss, finished = lr.collect([env], [ts])
        return ros[0], tss[0], finished[0]

    # -- update ---------------------------------------------------------------------------------

    def policy_objective(self, mb: Rollout, logp_all: torch.Tensor, logp_next: torch.Tensor,
                         adv: torch.Tensor, env_steps: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The surrogate to *maximise* on a minibatch (subclass hook). ``logp_all`` is the current
        masked log pi(.|o) [T, B, N, A]; ``logp_next`` [T-1, B, N, A] the next step's, as seen
        from each step k (see ``OnPolicyLearner.log_probs``); ``adv`` the normalised advantages [T, B, N];
        ``env_steps`` the env steps collected so far (never the run's budget)."""
        raise NotImplementedError

    def value_loss(self, mb: Rollout, v: torch.Tensor) -> torch.Tensor:
        """MAPPO's clipped Huber value loss in normalised space; ``v``: the current critic's values
        over the minibatch [T, B] (``OnPolicyLearner.values``)."""
        target = self.value_norm.normalize(mb.returns) if self.value_norm is not None else mb.returns
        err = huber(target - v, self.cfg.huber_delta)
        if self.cfg.value_clip:
            v_clip = mb.values + (v - mb.values).clamp(-self.cfg.clip_eps, self.cfg.clip_eps)
            err = torch.max(err, huber(target - v_clip, self.cfg.huber_delta))
        env_alive = mb.alive.any(-1)  # a value target exists while any agent of the team lives
        return masked_mean(err, env_alive)

    def update(self, ro: Rollout, env_steps: int) -> dict[str, float]:
        """One PPO update of this seed on ``ro`` (``OnPolicyLearner.update`` at S = 1), ``env_steps``
        collected so far. Returns the mean of each logged metric."""
        lr = self.learner()
        logs = lr.update([ro], env_steps)
        lr.sync_out()
        return logs[0]

    def summarize_logs(self, logs: dict[str, list[float]]) -> dict[str, float]:
        """Reduce per-minibatch metrics to one value each for the update (mean by default)."""
        return {k: float(np.mean(v)) for k, v in logs.items()}

    # -- training loop --------------------------------------------------------------------------

    def learn(self, env: MultiAgentVecEnv, total_steps: int, seed: int,
              on_iteration: Callable[[int, dict[str, float]], None], start_steps: int = 0) -> None:
        """Train this seed for ``total_steps`` env steps: ``OnPolicyLearner.learn`` at S = 1 (the
        one implementation; ``on_iteration(env_steps, metrics)`` after every update, ``start_steps``
        > 0 to continue a resumed run)."""
        self.learner().learn([env], total_steps, [seed], [on_iteration], start_steps=start_steps)

    # -- checkpointing --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to resume: networks, optimisers, normaliser, RNG states."""
        return {
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "value_norm": self.value_norm.state_dict() if self.value_norm is not None else None,
            "gen": self.gen.get_state(), "np_rng": self.np_rng.bit_generator.state,
            "rollout_h": self.rollout_h, "rollout_hc": self.rollout_hc,
        }

    def load_state_dict(self, sd: dict) -> None:
        self.actor.load_state_dict(sd["actor"])
        self.critic.load_state_dict(sd["critic"])
        self.actor_opt.load_state_dict(sd["actor_opt"])
        self.critic_opt.load_state_dict(sd["critic_opt"])
        if self.value_norm is not None and sd["value_norm"] is not None:
            self.value_norm.load_state_dict(sd["value_norm"])
        self.gen.set_state(sd["gen"])
        self.np_rng.bit_generator.state = sd["np_rng"]
        self.rollout_h = sd.get("rollout_h")
        self.rollout_hc = sd.get("rollout_hc")

    def policy_state_dict(self) -> dict:
        """What ``act`` needs: the actor (the saved policy of a complete run)."""
        return {"actor": self.actor.state_dict()}

    def load_policy_state_dict(self, sd: dict) -> None:
        self.actor.load_state_dict(sd["actor"])

    def forget_episodes(self) -> None:
        """The env restarted its episodes (an inexact resume): so do the carried GRU states."""
        self.rollout_h = self.rollout_hc = None


def ppo_clip_surrogate(ratio: torch.Tensor, adv: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Elementwise PPO surrogate min(r A, clip(r, lo, hi) A) (§0, L_clip)."""
    return torch.min(ratio * adv, ratio.clamp(lo, hi) * adv)
