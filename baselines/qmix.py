"""QMix (Rashid et al., "QMIX: Monotonic Value Function Factorisation for Deep Multi-Agent
Reinforcement Learning", ICML 2018), following the pymarl / pymarl2 code bases.

Structure
- Agent: one recurrent Q-network shared by all agents (pymarl's ``RNNAgent``): ``Linear -> ReLU ->
  GRU -> Linear`` over the input ``[obs (with the agent-id one-hot the env appends when
  agent_id=True), last action one-hot]``; the id is not added a second time here. ``use_rnn=False``
  is EPyMARL's feed-forward variant (``Linear -> ReLU`` in place of the GRU, no memory).
- Mixer: pymarl's ``QMixer``: Q_tot = w_f(s)^T ELU(W_1(s)^T q + b_1(s)) + V(s), where W_1 and w_f are
  the absolute values of hypernetwork outputs (so dQ_tot/dQ_i >= 0), b_1 is linear in s and V(s) is
  a small ReLU MLP (the state-dependent bias).
- Learner: double-Q (argmax of the online network over *available* actions, evaluated by the target
  network), one-step or TD(lambda) targets (pymarl2), masked squared TD error over the valid steps of
  whole episodes, gradient-norm clipping, hard target updates every N episodes or soft updates.
- Acting: epsilon-greedy over available actions; epsilon anneals linearly over env steps (every step
  of every parallel env counts). ``act(deterministic=True)`` is greedy (epsilon 0), the evaluation
  protocol of pymarl/EPyMARL for QMix (docs/algorithms.md, pitfalls); ``deterministic=False`` uses the current epsilon.

Lineage (docs/algorithms.md, pitfalls): ``lineage`` names the code base whose defaults fill every setting left at
``None`` (see ``LINEAGE_DEFAULTS``):
- ``pymarl``  (oxwhirl/pymarl ``qmix.yaml`` + ``default.yaml``): RMSprop lr 5e-4 (alpha 0.99, eps
  1e-5), batch 32 episodes, epsilon 1 -> 0.05 over 50k steps, one-step targets.
- ``pymarl2`` (hijkzzz/pymarl2 ``qmix.yaml``): Adam lr 1e-3, batch 128 episodes, epsilon over 100k
  steps, TD(lambda = 0.6).
- ``epymarl`` (uoe-agents/epymarl; its 2021 first release, the code of its benchmark paper, and the
  2024 tag v.1.0.0 agree on these values): Adam lr 5e-4, batch 32,
  epsilon over 50k steps, one-step targets, no last action in the agent's input, a feed-forward
  agent (``use_rnn: False``: the GRU becomes ``Linear -> ReLU``). For calibrating against
  EPyMARL's published figures.
Shared by both: gamma 0.99, buffer 5,000 episodes, target update every 200 episodes, double-Q,
grad-norm clip 10, GRU hidden 64, mixing embed 32, 2-layer hypernets of width 64.

The default lineage is ``pymarl``; MPE's recipe selects ``epymarl`` (below). ``pymarl2``'s Adam
1e-3 + TD(0.6) diverged on ``jax_mpe:simple_spread`` (Q_tot blowing up after 100-150k steps) and
costs three times the compute per update (batch 128 vs 32).

Recipes per env family (``QMIX_RECIPES``, each value citing its source; the lineage's value is one
``--set`` away):
- MPE: EPyMARL's settings (``lineage=epymarl``, one update per episode: EPyMARL published QMIX on
  MPE, pymarl never ran it) with pymarl's GRU agent (``use_rnn=True``; EPyMARL's code says
  feed-forward; the paper's tuned QMIX uses a GRU on SMAC, its MPE values are not in the stored
  sources; the GRU is the measured better here). Measured on
  ``jax_mpe:simple_spread``, 3 seeds x 2M env steps, greedy return (team_sum) over 100 episodes
  every 50k steps, final = the mean of the last 3 points, 95% t-interval (results/calibration):

  ====================================================  =========================  ====================
  settings                                              return at 500k / 1M / 2M   final
  ====================================================  =========================  ====================
  pymarl (RMSprop, last action, 1 update / 2 episodes)  -56.6 / -50.4 / -41.3       -42.1 [-44.4, -39.8]
  EPyMARL with the GRU agent (the recipe)               -44.9 / -39.6 / -32.5       -32.9 [-36.4, -29.5]
  EPyMARL's code (feed-forward agent)                   -56.4 / -51.0 / -47.4       -47.5 [-53.8, -41.1]
  ====================================================  =========================  ====================

  The time limit is terminal (``bootstrap_truncation=False``: JaxMARL's QMix, and EPyMARL's gym
  wrapper, whose empty info makes the limit a terminal) and rewards are standardised (EPyMARL).
  Why no bootstrap: MPE observations and states carry no time, and every episode ends
  at the 25-step limit, so a bootstrap there asks for the infinite-horizon value of a state (the
  final slot) that is never itself a training input: Q_tot(s_T) is pure extrapolation and, with
  gamma = 0.99, any bias in it is amplified up to 1 / (1 - gamma) = 100 times through the
  self-referential targets. Measured (``jax_mpe:simple_spread``, seed 0, 300k env steps, greedy
  return over 32 episodes; mean Q_tot vs the realised discounted return-to-go of the same replay
  steps, standardised units):

  ==========================  ==========================  =================================
  bootstrap at the limit      return at 100k/200k/300k    Q_tot / realised at 100k, 300k
  ==========================  ==========================  =================================
  yes (pymarl; before)        -59.2 / -67.2 / -69.5       11.9 / 2.1,  96.9 / -0.5
  no, standardised (recipe)   -60.6 / -59.2 / -57.9        6.8 / 2.5,   5.9 / 3.3
  no, raw reward              -65.1 / -63.8 / -62.7       -18.2 / -33.3, -20.7 / -29.6 (raw)
  ==========================  ==========================  =================================

  In the first row Q_tot at the episode's last step reached 109 while the last reward,
  standardised, was -0.04 (an infinite-horizon value of about -4): the growth is the bootstrap
  feeding on itself, not the reward. The standardiser's lagging running mean makes the centred
  reward of an improving policy positive (+0.1 to +0.3 per step), which sets the direction of the
  drift but not its size.
- SMAX: rewards x 10 (JaxMARL's ``REW_SCALE``): SMAX's team return lies in [0, 2], SMAC's (which
  pymarl's settings were tuned on) in about [0, 20]. At x 1 on 2s3z (seed 0, 300k steps): mean
  Q_tot about 0.3, TD loss about 1e-3, win rate 0.0 (results/paper-300k). SMAX keeps pymarl's
  bootstrap at its 100-step limit (battles mostly end earlier).

Replay (vectorised, whole episodes; pymarl's ``EpisodeBatch``/``ReplayBuffer``)
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
  recipe), where the time limit counts as terminal (``no_bootstrap``).
- Death masking follows pymarl: dead agents stay in the mixer and act through their avail mask
  (no-op only); a step is masked from the loss only when the whole team is dead.
- Partially collected episodes at the end of ``learn`` are dropped (pymarl stores complete
  episodes only). The buffer is not checkpointed (it would be tens of MB); a resumed run refills it.
- Its size is known before it is allocated (``EpisodeReplay.nbytes``, exact; ``QMix.memory_estimate``
  adds the updates), and ``run`` refuses a run that would not fit (``marpo_bench.memory``). pymarl's
  5,000 episodes stay the default on every task, as the recipes' sources ran them: 0.6 GB on smax:3m,
  3.9 GB on 8m, 35.7 GB on 25m, 43.8 GB on 27m_vs_30m (``--set qmix.buffer_size=N`` is the departure).

Training ratio: an iteration collects ``rollout_len`` steps (default: the episode limit, i.e. one
episode per env on fixed-horizon tasks) in all E envs, then performs one gradient update per
``episodes_per_update`` episodes finished, once the buffer holds a batch (pymarl: one update per
episode batch collected, i.e. 1 with its episode runner and ``batch_size_run`` with the parallel
one). Default 2 (4 updates per iteration of 8 episodes): on simple_spread, 8 (pymarl's parallel
ratio at E = 8) learned clearly slower per env step (about -70 at 90k vs -60), 1 was no better than
2 at twice the compute at that budget. MPE's recipe takes EPyMARL's 1 (its episode runner),
measured better over 2M steps together with EPyMARL's other settings (the table above); SMAX keeps 2.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marpo_bench.config import Recipe
from marpo_bench.envs.base import EnvInfo, MultiAgentVecEnv, SeedEnvs, TimeStep

# Recipes as data: every default below names the file it comes from and equals that file's value
# (tests/test_qmix.py checks each entry against a transcription of its source).

# The lineage's values for the settings QMixConfig leaves at None.
LINEAGE_DEFAULTS: dict[str, Recipe] = {
    "pymarl": Recipe(
        source="oxwhirl/pymarl src/config/default.yaml (lr: 0.0005, batch_size: 32, obs_last_action: True, "
               "agent: 'rnn', the GRU of src/modules/agents/rnn_agent.py; optimiser RMSprop in "
               "src/learners/q_learner.py) + src/config/algs/qmix.yaml (epsilon_anneal_time: 50000; one-step "
               "targets in q_learner.py)",
        values={"optimizer": "rmsprop", "lr": 5e-4, "batch_size": 32, "epsilon_anneal_steps": 50_000,
                "td_lambda": 0.0, "obs_last_action": True, "use_rnn": True},
    ),
    "pymarl2": Recipe(
        source="hijkzzz/pymarl2 src/config/algs/qmix.yaml (optimizer: 'adam', lr: 0.001, batch_size: 128, "
               "epsilon_anneal_time: 100000, td_lambda: 0.6, agent: 'n_rnn', a GRUCell; nq_learner) + "
               "src/config/default.yaml (obs_last_action: True)",
        values={"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epsilon_anneal_steps": 100_000,
                "td_lambda": 0.6, "obs_last_action": True, "use_rnn": True},
    ),
    # EPyMARL (Papoudakis et al. 2021): tag v.1.0.0 (June 2024); its first release (4bcbb1c, June
    # 2021, the code of the paper) has the same values here (Adam in q_learner.py, default.yaml's lr and
    # batch, qmix.yaml's epsilon, obs_last_action and use_rnn). It differs in how rewards are
    # standardised: per sampled batch (``reward_stats="batch"``), v.1.0.0 by running statistics (the
    # default: measured the same on spread, 3 seeds x 2M env steps, final -33.45 against -32.90; README
    # "Baselines"). The paper tuned some values per environment; its tables are not in the stored sources.
    "epymarl": Recipe(
        source="uoe-agents/epymarl v.1.0.0 src/learners/q_learner.py (Adam(params, lr=args.lr)) + "
               "src/config/default.yaml (lr: 0.0005, batch_size: 32) + src/config/algs/qmix.yaml "
               "(epsilon_anneal_time: 50000, obs_last_action: False, use_rnn: False; one-step targets in "
               "q_learner.py)",
        values={"optimizer": "adam", "lr": 5e-4, "batch_size": 32, "epsilon_anneal_steps": 50_000,
                "td_lambda": 0.0, "obs_last_action": False, "use_rnn": False},
    ),
}

# Per env family: where this suite's env contract or reward scale differs from what the lineage
# was tuned on (SMAC), or where another code base published QMix on the family. Applied by
# ``train.build_config`` before the user's ``--set``; each value is the cited code base's, and the
# default's own value is one ``--set`` away (pymarl: ``lineage=pymarl``, ``episodes_per_update=2``,
# ``bootstrap_truncation=true``, ``standardise_rewards=false``, ``reward_scale=1``).
#
# MPE: EPyMARL's settings, the code base that published QMix on MPE (pymarl never ran it).
# Measured (jax_mpe:simple_spread, 3 seeds x 2M env steps, greedy return over 100 episodes every
# 50k steps, results/calibration): pymarl's settings reach -42.1 team_sum (final, last 3 points),
# EPyMARL's -32.9. Its agent stays the GRU (EPyMARL's code: feed-forward, ``use_rnn: False``; a
# contributor's commit, bedc593, "Hyperparams from paper", later reverted, says ``use_rnn: True``
# with lr 0.005, hidden 128, evaluation epsilon 0.05: the values of the paper's SMAC column as a
# third-party transcription of its appendix gives them, unverified: SMAC's, not MPE's): the feed-forward agent
# reached -47.5 (see the module docstring), a measured departure (README "Baselines"). EPyMARL's
# published QMIX on spread is -126.62 on its scale, -25.8 team_sum (unverified;
# results/calibration/README.md).
# The time limit is terminal (no bootstrap), as in JaxMARL's QMix and EPyMARL's gym wrapper (its
# ``step`` returns an empty info, so the runner's ``terminated != episode_limit`` is True at the
# limit). Measured (seed 0, 300k steps, see the module docstring): bootstrapping at the 25-step
# limit made Q_tot an infinite-horizon value fed only by the network's extrapolation to the
# never-trained final slot; mean Q_tot grew 12 -> 97 while the realised discounted return of the same
# steps stayed at 2 -> -0.5 (standardised units) and the greedy return fell from -59 to -69. With the
# time limit terminal: Q_tot 6 / realised 3, return -58. Every MPE episode lasts exactly 25 steps, so
# centring the reward (standardising) shifts the return from step t by c (1 - gamma^(25 - t)) /
# (1 - gamma): a function of time, not of the action, which leaves the optimal policy unchanged.
_MPE = (
    "uoe-agents/epymarl v.1.0.0 (the code of Papoudakis et al. 2021, which published QMIX on MPE): "
    "src/config/default.yaml (runner: 'episode', batch_size_run: 1; src/run.py trains once per "
    "runner.run(): one update per episode) + src/config/algs/qmix.yaml (standardise_rewards: True) + "
    "src/envs/gymma.py (step returns an empty info: the time limit is terminal) + uoe-agents/epymarl "
    "bedc593 src/config/algs/qmix.yaml ('Hyperparams from paper', the paper's SMAC values: use_rnn: True; "
    "on MPE a measured choice, README 'Baselines') + FLAIROx/JaxMARL "
    "baselines/QLearning/qmix_rnn.py (target = r + (1 - dones['__all__']) * GAMMA * q_next; MPE sets "
    "done at max_steps: no bootstrap)"
)
_MPE_VALUES = {"lineage": "epymarl", "episodes_per_update": 1.0, "use_rnn": True, "bootstrap_truncation": False,
               "standardise_rewards": True}
QMIX_RECIPES: dict[str, Recipe] = {
    "mpe": Recipe(source=_MPE, values=_MPE_VALUES),
    "jax_mpe": Recipe(source=_MPE, values=_MPE_VALUES),
    "smax": Recipe(
        source="FLAIROx/JaxMARL baselines/QLearning/config/alg/ql_rnn_smax.yaml (REW_SCALE: 10., 'scale the "
               "reward to the original scale of SMAC'; qmix_rnn.py multiplies the stored rewards by it)",
        values={"reward_scale": 10.0},
    ),
}


@dataclass
class QMixConfig:
    """QMix settings. ``None`` means "the lineage's default" (``LINEAGE_DEFAULTS``)."""

    # Settings added after runs were stored, with the value those runs ran with: a stored config
    # that lacks one is rebuilt with it (``policy.config_from``), not with today's lineage default.
    LEGACY_VALUES: ClassVar[dict[str, Any]] = {"use_rnn": True}  # before use_rnn every agent was a GRU

    lineage: Literal["pymarl", "pymarl2", "epymarl"] = "pymarl"  # which code base fills the None settings
    # -- runner / evaluation (marpo-bench) --
    num_envs: int = 8  # E parallel envs for collection (marpo-bench; pymarl batch_size_run 1-32, pymarl2 4)
    rollout_len: int = 0  # env steps per iteration per env; 0 = the env's episode_limit
    episodes_per_update: float = 2.0  # finished episodes per gradient update (pymarl: batch_size_run; see above)
    agent_id: bool = True  # env appends the agent-id one-hot to obs (pymarl obs_agent_id: True)
    # evaluation: the run settings (config.RunConfig: 32 greedy episodes = pymarl's test_nepisode 32,
    # test_greedy True)
    # -- optimisation --
    optimizer: Literal["rmsprop", "adam"] | None = None  # pymarl rmsprop | pymarl2 adam
    lr: float | None = None  # pymarl 5e-4 | pymarl2 1e-3
    optim_alpha: float = 0.99  # RMSprop alpha (pymarl default.yaml)
    optim_eps: float = 1e-5  # RMSprop eps (pymarl default.yaml); Adam keeps torch's 1e-8 (pymarl2)
    grad_norm_clip: float = 10.0  # pymarl default.yaml
    gamma: float = 0.99  # pymarl default.yaml
    reward_scale: float = 1.0  # team reward x this before learning (JaxMARL ql_rnn_smax.yaml REW_SCALE: 10 on SMAX)
    standardise_rewards: bool = False  # pymarl/pymarl2: none; EPyMARL qmix.yaml True
    # with which statistics: "running" (EPyMARL v.1.0.0's RunningMeanStd over every reward trained
    # on) | "batch" (EPyMARL's 2021 release: the sampled batch's own mean and std)
    reward_stats: Literal["running", "batch"] = "running"
    bootstrap_truncation: bool = True  # env contract + pymarl's episode_limit: bootstrap at truncation (not on MPE)
    td_lambda: float | None = None  # pymarl 0 (one-step targets) | pymarl2 0.6
    double_q: bool = True  # pymarl qmix.yaml double_q: True (pymarl2 nq_learner always double-Q)
    batch_size: int | None = None  # episodes per batch: pymarl 32 | pymarl2 128
    buffer_size: int = 5000  # episodes (pymarl and pymarl2 qmix.yaml)
    target_update: Literal["hard", "soft"] = "hard"  # pymarl: hard copies
    target_update_interval: int = 200  # episodes between hard copies (pymarl qmix.yaml)
    tau: float = 0.01  # soft-update rate (EPyMARL target_update_interval_or_tau < 1)
    # -- exploration --
    epsilon_start: float = 1.0  # pymarl qmix.yaml
    epsilon_finish: float = 0.05  # pymarl qmix.yaml
    epsilon_anneal_steps: int | None = None  # env steps: pymarl 50k | pymarl2 100k
    # -- networks --
    rnn_hidden_dim: int = 64  # pymarl default.yaml
    use_rnn: bool | None = None  # agent's middle layer: pymarl, pymarl2 GRU (True) | epymarl qmix.yaml False
    obs_last_action: bool | None = None  # pymarl, pymarl2 default.yaml True | epymarl qmix.yaml False
    mixing_embed_dim: int = 32  # pymarl qmix.yaml
    hypernet_layers: int = 2  # pymarl qmix.yaml (1 or 2)
    hypernet_embed: int = 64  # pymarl qmix.yaml

    def resolved(self) -> QMixConfig:
        """A copy with every ``None`` setting filled from the lineage (``LINEAGE_DEFAULTS``)."""
        fill = {k: v for k, v in LINEAGE_DEFAULTS[self.lineage].values.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill)

    def validate(self) -> None:
        """Reject values that cannot work, naming the setting (one-line ConfigError)."""
        from marpo_bench.config import ConfigError

        if self.lineage not in LINEAGE_DEFAULTS:
            raise ConfigError(f"lineage must be one of {', '.join(LINEAGE_DEFAULTS)}, got {self.lineage!r}")
        c = self.resolved()
        for name in ("num_envs", "batch_size", "buffer_size", "target_update_interval", "rnn_hidden_dim",
                     "mixing_embed_dim", "hypernet_embed"):
            if getattr(c, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(c, name)}")
        for name in ("rollout_len", "epsilon_anneal_steps"):
            if getattr(c, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(c, name)}")
        if c.batch_size > c.buffer_size:
            raise ConfigError(f"batch_size ({c.batch_size}) cannot exceed buffer_size ({c.buffer_size})")
        if c.reward_scale <= 0:
            raise ConfigError(f"reward_scale must be positive, got {c.reward_scale}")
        if c.episodes_per_update <= 0 or c.lr <= 0 or c.grad_norm_clip <= 0 or c.optim_eps <= 0:
            raise ConfigError("episodes_per_update, lr, grad_norm_clip and optim_eps must be positive")
        if not 0.0 <= c.gamma <= 1.0 or not 0.0 <= c.td_lambda <= 1.0 or not 0.0 < c.tau <= 1.0:
            raise ConfigError("gamma and td_lambda must lie in [0, 1], tau in (0, 1]")
        if not 0.0 <= c.epsilon_finish <= 1.0 or not 0.0 <= c.epsilon_start <= 1.0 or not 0 <= c.optim_alpha < 1:
            raise ConfigError("epsilon_start and epsilon_finish must lie in [0, 1], optim_alpha in [0, 1)")
        if c.reward_stats not in ("running", "batch"):
            raise ConfigError(f"reward_stats must be running or batch, got {c.reward_stats!r}")
        if c.hypernet_layers not in (1, 2):
            raise ConfigError(f"hypernet_layers must be 1 or 2 (as in pymarl), got {c.hypernet_layers}")


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------


class RNNAgent(nn.Module):
    """pymarl's RNNAgent: ``fc1 -> ReLU -> GRU -> fc2`` (PyTorch default init, as in pymarl).

    ``recurrent=False`` is EPyMARL's feed-forward variant of the same class (``use_rnn: False``):
    the GRU becomes ``Linear -> ReLU`` and the hidden state is not carried between steps."""

    def __init__(self, in_dim: int, hidden: int, num_actions: int, recurrent: bool = True) -> None:
        super().__init__()
        self.recurrent = recurrent
        self.fc1 = nn.Linear(in_dim, hidden)
        self.rnn: nn.Module = nn.GRU(hidden, hidden) if recurrent else nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, num_actions)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [L, M, in] (time-major), ``h`` [M, H] -> Q [L, M, A] and the last hidden [M, H]."""
        y = F.relu(self.fc1(x))
        if not self.recurrent:
            out = F.relu(self.rnn(y))
            return self.fc2(out), out[-1]
        out, hn = self.rnn(y, h.unsqueeze(0))
        return self.fc2(out), hn[0]


class QMixer(nn.Module):
    """pymarl's QMixer: monotonic mixing with hypernetwork weights on the global state."""

    def __init__(self, num_agents: int, state_dim: int, embed_dim: int = 32, hypernet_layers: int = 2,
                 hypernet_embed: int = 64) -> None:
        super().__init__()
        self.n, self.embed = num_agents, embed_dim

        def hyper(out: int) -> nn.Module:
            if hypernet_layers == 1:
                return nn.Linear(state_dim, out)
            return nn.Sequential(nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, out))

        self.hyper_w_1 = hyper(embed_dim * num_agents)
        self.hyper_w_final = hyper(embed_dim)
        self.hyper_b_1 = nn.Linear(state_dim, embed_dim)
        self.V = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``agent_qs`` [..., N], ``states`` [..., S] -> Q_tot [...]."""
        lead = agent_qs.shape[:-1]
        s = states.reshape(-1, states.shape[-1])
        q = agent_qs.reshape(-1, 1, self.n)
        w1 = torch.abs(self.hyper_w_1(s)).view(-1, self.n, self.embed)
        b1 = self.hyper_b_1(s).view(-1, 1, self.embed)
        hidden = F.elu(torch.bmm(q, w1) + b1)
        w_final = torch.abs(self.hyper_w_final(s)).view(-1, self.embed, 1)
        v = self.V(s).view(-1, 1, 1)
        return (torch.bmm(hidden, w_final) + v).view(lead)


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Episode storage
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# The algorithm
# ----------------------------------------------------------------------------------------------


def _onehot_last(actions: torch.Tensor, num_actions: int) -> torch.Tensor:
    """[B, T, N] actions -> [B, T+1, N, A] one-hot of the previous action (zeros at t = 0)."""
    B, T, N = actions.shape
    out = torch.zeros(B, T + 1, N, num_actions, device=actions.device)
    out[:, 1:].scatter_(-1, actions.unsqueeze(-1), 1.0)
    return out


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


class QMix:
    """QMix with a recurrent shared agent network, hypernetwork mixer and episode replay."""

    name = "qmix"
    Config = QMixConfig
    DEFAULTS_BY_FAMILY = QMIX_RECIPES  # the env families' recipes (above), with their sources
    on_policy = False
    # The episode being collected and the acting state are local to learn(), and the replay buffer
    # is not saved (see train.py): a resume restarts mid-episode envs and refills the buffer.
    resumes_mid_episode = False
    resumes_exactly = False
    metrics: tuple[str, ...] = ("td_loss", "q_mean", "grad_norm", "epsilon")
    # One learner with these settings x S does the arithmetic of S seeds (S x the envs and the batch,
    # the same updates per iteration): ``bench --seed-stacks`` times it as batching's bound.
    seed_scaled_settings = ("num_envs", "batch_size", "episodes_per_update")
    # The setting its memory grows with and what it holds, named when a run would not fit
    # (``marpo_bench.memory``): the replay of whole episodes.
    memory_setting = ("buffer_size", "its replay of {buffer_size} episodes (buffer_size) and its updates")

    @classmethod
    def memory_estimate(cls, cfg: QMixConfig, info: EnvInfo, seeds: int = 1) -> int:
        """Bytes ``learn`` allocates on the learner's device for ``cfg`` on a task of ``info``'s
        shapes (``seeds`` > 1: the batched learner, ``QMixSeeds``, which keeps one replay per
        seed): per seed, the replay (exact: ``EpisodeReplay.nbytes`` with ``cfg.num_envs`` envs)
        and one update's working set (``update_bytes``; the batched learner also pads and stacks
        its seeds' batches: two more copies). The networks and optimiser states (a few MB at the
        default sizes) are left out. Called before anything is built (``marpo_bench.memory``)."""
        c = cfg.resolved()
        per_seed = EpisodeReplay.nbytes(c.buffer_size, c.num_envs, info) + update_bytes(c, info)
        if seeds > 1:
            per_seed += 2 * c.batch_size * episode_bytes(info)
        return seeds * per_seed

    def __init__(self, cfg: QMixConfig, env_info: EnvInfo, device: torch.device | str, seed: int) -> None:
        cfg.validate()
        self.cfg = cfg = cfg.resolved()
        self.info = env_info
        self.device = torch.device(device)
        self.seed = seed
        N, A = env_info.num_agents, env_info.num_actions
        self.in_dim = env_info.obs_dim + (A if cfg.obs_last_action else 0)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG state
            torch.manual_seed(seed)
            self.agent = RNNAgent(self.in_dim, cfg.rnn_hidden_dim, A, cfg.use_rnn).to(self.device)
            self.mixer = QMixer(N, env_info.state_dim, cfg.mixing_embed_dim, cfg.hypernet_layers,
                                cfg.hypernet_embed).to(self.device)
        self.target_agent = copy.deepcopy(self.agent)
        self.target_mixer = copy.deepcopy(self.mixer)
        for p in (*self.target_agent.parameters(), *self.target_mixer.parameters()):
            p.requires_grad_(False)
        self.params = [*self.agent.parameters(), *self.mixer.parameters()]
        if cfg.optimizer == "adam":
            self.opt: torch.optim.Optimizer = torch.optim.Adam(self.params, lr=cfg.lr)
        else:
            self.opt = torch.optim.RMSprop(self.params, lr=cfg.lr, alpha=cfg.optim_alpha, eps=cfg.optim_eps)
        self.reward_ms = RunningMeanStd().to(self.device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        self.t_env = 0  # env steps trained on: the epsilon schedule position
        self.episodes = 0  # episodes collected
        self.updates = 0
        self.last_target_update_episode = 0
        self.update_credit = 0.0

    @classmethod
    def batched(cls, cfg: QMixConfig, env_info: EnvInfo, device: torch.device | str, seeds: list[int]) -> QMixSeeds:
        """S seeds as one batched learner (the optional ``batched`` contract, docs/extending.md)."""
        return QMixSeeds(cfg, env_info, device, seeds)

    # -- acting -------------------------------------------------------------------------------

    def epsilon(self) -> float:
        """pymarl's linear DecayThenFlatSchedule over env steps."""
        c = self.cfg
        if c.epsilon_anneal_steps == 0:
            return c.epsilon_finish
        frac = min(self.t_env / c.epsilon_anneal_steps, 1.0)
        return c.epsilon_start + frac * (c.epsilon_finish - c.epsilon_start)

    def initial_act_state(self, num_envs: int) -> Any:
        """(agent hidden [E, N, H], last action one-hot [E, N, A]), zeros at episode start."""
        N, A, H = self.info.num_agents, self.info.num_actions, self.cfg.rnn_hidden_dim
        return (torch.zeros(num_envs, N, H, device=self.device), torch.zeros(num_envs, N, A, device=self.device))

    def _inputs(self, obs: torch.Tensor, last_onehot: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs, last_onehot], dim=-1) if self.cfg.obs_last_action else obs

    def _select(self, q: torch.Tensor, avail: torch.Tensor, eps: float) -> torch.Tensor:
        """Epsilon-greedy over available actions: argmax of masked Q, or uniform over available."""
        greedy = q.masked_fill(~avail, -math.inf).argmax(-1)
        if eps <= 0.0:
            return greedy
        u = torch.rand(avail.shape, generator=self.gen, device=avail.device).masked_fill(~avail, -1.0)
        explore = torch.rand(greedy.shape, generator=self.gen, device=avail.device) < eps
        return torch.where(explore, u.argmax(-1), greedy)

    @torch.no_grad()
    def _act(self, obs: torch.Tensor, avail: torch.Tensor, done: torch.Tensor, act_state: Any,
             eps: float) -> tuple[torch.Tensor, Any]:
        h, last = act_state
        if bool(done.any()):  # the obs of these envs starts a new episode
            keep = (~done).float().view(-1, 1, 1)
            h, last = h * keep, last * keep
        E, N = obs.shape[:2]
        q, h_new = self.agent(self._inputs(obs, last).reshape(1, E * N, -1), h.reshape(E * N, -1))
        actions = self._select(q.view(E, N, -1), avail, eps)
        onehot = F.one_hot(actions, self.info.num_actions).float()
        return actions, (h_new.view(E, N, -1), onehot)

    @torch.no_grad()
    def act(self, ts: TimeStep, act_state: Any, deterministic: bool) -> tuple[torch.Tensor, Any]:
        """Actions [E, N] on the env's device: greedy when ``deterministic``, else epsilon-greedy at
        the current schedule epsilon. Resets the recurrent state where ``ts.done``."""
        eps = 0.0 if deterministic else self.epsilon()
        tsd = ts.to(self.device)  # one packed host-device transfer (TimeStep.to)
        a, st = self._act(tsd.obs, tsd.avail_actions, tsd.done, act_state, eps)
        return a.to(ts.obs.device), st

    # -- learning -------------------------------------------------------------------------------

    def _q_all(self, agent: RNNAgent, batch: EpisodeBatch) -> torch.Tensor:
        """Per-agent Q for every slot: [B, T+1, N, A] (one agent pass over whole episodes)."""
        B, L, N, _ = batch.obs.shape
        x = self._inputs(batch.obs, _onehot_last(batch.actions, self.info.num_actions))
        x = x.permute(1, 0, 2, 3).reshape(L, B * N, -1)
        h0 = torch.zeros(B * N, self.cfg.rnn_hidden_dim, device=x.device)
        q, _ = agent(x, h0)
        return q.view(L, B, N, -1).permute(1, 0, 2, 3)

    def targets(self, batch: EpisodeBatch, q_online: torch.Tensor | None = None,
                lam: float | None = None) -> torch.Tensor:
        """TD(lambda) targets [B, T] from the target networks (double-Q: argmax of the online
        network over available actions) on the learning reward (``learning_reward``), bootstrapping
        where ``no_bootstrap`` allows. ``q_online``: the online [B, T+1, N, A] if computed;
        ``lam``: overrides ``td_lambda``."""
        with torch.no_grad():
            q_tgt = self._q_all(self.target_agent, batch)[:, 1:]
            avail_next = batch.avail[:, 1:]
            if self.cfg.double_q:
                q_on = (q_online if q_online is not None else self._q_all(self.agent, batch)).detach()[:, 1:]
                a_star = q_on.masked_fill(~avail_next, -math.inf).argmax(-1, keepdim=True)
                q_next = q_tgt.gather(-1, a_star).squeeze(-1)
            else:
                q_next = q_tgt.masked_fill(~avail_next, -math.inf).max(-1).values
            # Padded slots have no available action: keep their (masked-out) values finite.
            q_next = torch.where(avail_next.any(-1), q_next, torch.zeros_like(q_next))
            q_tot_next = self.target_mixer(q_next, batch.state[:, 1:])
            return td_lambda_targets(self._reward(batch), self._no_bootstrap(batch), batch.filled, q_tot_next,
                                     self.cfg.gamma, lam=self.cfg.td_lambda if lam is None else lam)

    def _reward(self, batch: EpisodeBatch) -> torch.Tensor:
        c = self.cfg
        if c.standardise_rewards and c.reward_stats == "batch":
            return batch_standardised(learning_reward(batch.reward, c.reward_scale, None), batch.filled)
        return learning_reward(batch.reward, c.reward_scale, self.reward_ms if c.standardise_rewards else None)

    def _no_bootstrap(self, batch: EpisodeBatch) -> torch.Tensor:
        return no_bootstrap(batch.terminated, batch.filled, self.cfg.bootstrap_truncation)

    def realised_returns(self, batch: EpisodeBatch) -> torch.Tensor:
        """[B, T] discounted return-to-go of every stored step, from the stored (scaled,
        standardised) rewards, bootstrapped at the episode's end exactly where the TD targets are
        (lambda = 1 targets): what Q_tot of the behaviour policy should match on average."""
        return self.targets(batch, lam=1.0)

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """pymarl's masked squared TD error of Q_tot over valid steps (team not all dead)."""
        q = self._q_all(self.agent, batch)
        chosen = q[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        q_tot = self.mixer(chosen, batch.state[:, :-1])
        y = self.targets(batch, q)
        mask = batch.filled & batch.alive[:, :-1].any(-1)
        n = mask.sum().clamp(min=1)
        zero = torch.zeros((), device=q_tot.device)
        loss = torch.where(mask, (q_tot - y) ** 2, zero).sum() / n  # where: padding can't leak NaN/inf
        q_mean = torch.where(mask, q_tot.detach(), zero).sum() / n
        return loss, {"td_loss": float(loss.detach()), "q_mean": float(q_mean)}

    def update(self, batch: EpisodeBatch) -> dict[str, float]:
        """One gradient step; then the target update when due."""
        if self.cfg.standardise_rewards and self.cfg.reward_stats == "running":
            self.reward_ms.update(self.cfg.reward_scale * batch.reward[batch.filled])
        loss, logs = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.params, self.cfg.grad_norm_clip))
        self.opt.step()
        self.updates += 1
        if self.cfg.target_update == "soft":
            with torch.no_grad():
                for tgt, src in ((self.target_agent, self.agent), (self.target_mixer, self.mixer)):
                    for pt, ps in zip(tgt.parameters(), src.parameters(), strict=True):
                        pt.lerp_(ps, self.cfg.tau)
        elif (self.episodes - self.last_target_update_episode) / self.cfg.target_update_interval >= 1.0:
            self.update_targets()
            self.last_target_update_episode = self.episodes
        return logs

    def update_targets(self) -> None:
        self.target_agent.load_state_dict(self.agent.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())

    def learn(self, env: MultiAgentVecEnv, total_steps: int, seed: int,
              on_iteration: Callable[[int, dict[str, float]], None], start_steps: int = 0) -> None:
        """Collect with epsilon-greedy in all E envs for ``rollout_len`` steps, then one update per
        ``episodes_per_update`` finished episodes (once a batch can be sampled); repeat until
        ``total_steps`` env steps (counted from the schedule position ``t_env``, so a loaded state
        resumes; ``start_steps`` > 0, passed by the runner when resuming, sets it explicitly).
        ``on_iteration`` gets every iteration that trained (warm-up iterations are folded into the
        first one) and the last one. The replay buffer lives only inside this call."""
        if start_steps:
            self.t_env = int(start_steps)
        cfg, info = self.cfg, env.info
        E = info.num_envs
        replay = EpisodeReplay(cfg.buffer_size, E, info, self.device)
        chunk = cfg.rollout_len or info.episode_limit
        ts = env.reset(seed)
        env_dev = ts.obs.device
        ts = ts.to(self.device)  # the learner's copy: one packed host-device transfer per step
        act_state = self.initial_act_state(E)
        done = torch.zeros(E, dtype=torch.bool, device=self.device)
        finished: list[float] = []
        while self.t_env < total_steps:
            for _ in range(chunk):
                replay.add_obs(ts)
                actions, act_state = self._act(ts.obs, ts.avail_actions, done, act_state, self.epsilon())
                nxt = env.step(actions.to(env_dev)).to(self.device)
                ended = replay.add_step(actions, nxt)
                done = nxt.done
                self.t_env += E
                if ended.numel():
                    self.episodes += ended.numel()
                    finished.extend(nxt.episode_return[ended].tolist())
                    if replay.size >= cfg.batch_size:
                        self.update_credit += ended.numel() / cfg.episodes_per_update
                ts = nxt
                if self.t_env >= total_steps:
                    break
            logs: dict[str, list[float]] = {}
            while self.update_credit >= 1.0:
                self.update_credit -= 1.0
                for k, v in self.update(replay.sample(cfg.batch_size, self.np_rng)).items():
                    logs.setdefault(k, []).append(v)
            if not logs and self.t_env < total_steps:
                continue  # warm-up: report with the first training iteration
            metrics = {k: float(np.mean(v)) for k, v in logs.items()}
            metrics["epsilon"] = self.epsilon()
            metrics["train_return_mean"] = float(np.mean(finished)) if finished else math.nan
            finished = []
            on_iteration(self.t_env, metrics)

    # -- checkpointing --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Networks, target networks, optimiser, RNG states and schedule position (not the replay
        buffer). Loads with ``torch.load(weights_only=True)``."""
        return {
            "agent": self.agent.state_dict(), "mixer": self.mixer.state_dict(),
            "target_agent": self.target_agent.state_dict(), "target_mixer": self.target_mixer.state_dict(),
            "opt": self.opt.state_dict(), "reward_ms": self.reward_ms.state_dict(),
            "gen": self.gen.get_state(), "np_rng": self.np_rng.bit_generator.state,
            "t_env": self.t_env, "episodes": self.episodes, "updates": self.updates,
            "last_target_update_episode": self.last_target_update_episode, "update_credit": self.update_credit,
            "config": dataclasses.asdict(self.cfg),  # resolved: the lineage's values spelled out
        }

    def policy_state_dict(self) -> dict:
        """What ``act`` needs: the agent network and the schedule position (the exploration
        epsilon of ``act(deterministic=False)``)."""
        return {"agent": self.agent.state_dict(), "t_env": self.t_env}

    def load_policy_state_dict(self, sd: dict) -> None:
        self.agent.load_state_dict(sd["agent"])
        self.t_env = int(sd["t_env"])

    def forget_episodes(self) -> None:
        """Nothing is carried across episodes outside learn()."""

    def load_state_dict(self, sd: dict) -> None:
        self.agent.load_state_dict(sd["agent"])
        self.mixer.load_state_dict(sd["mixer"])
        self.target_agent.load_state_dict(sd["target_agent"])
        self.target_mixer.load_state_dict(sd["target_mixer"])
        self.opt.load_state_dict(sd["opt"])
        self.reward_ms.load_state_dict(sd["reward_ms"])
        self.gen.set_state(sd["gen"])
        self.np_rng.bit_generator.state = sd["np_rng"]
        self.t_env, self.episodes, self.updates = int(sd["t_env"]), int(sd["episodes"]), int(sd["updates"])
        self.last_target_update_episode = int(sd["last_target_update_episode"])
        self.update_credit = float(sd["update_credit"])


# ----------------------------------------------------------------------------------------------
# Seed-vectorised QMix: S seeds as one batched learner
# ----------------------------------------------------------------------------------------------


def _pad_time(batch: EpisodeBatch, t_max: int) -> EpisodeBatch:
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


class QMixSeeds:
    """S seeds of QMix trained as one batched learner (``marpo_bench.seedstack``).

    ``members[k]`` is an ordinary ``QMix`` built with seed k: it supplies seed k's initial
    networks, epsilon-greedy generator, replay sampler, reward standardiser and counters, exactly
    as an unbatched run of seed k has them. Learning runs on stacked copies of the networks and a
    stacked optimiser; after every iteration the stacks are written back into the members, so the
    runner evaluates, checkpoints and saves each member as an ordinary QMix run (and a checkpoint
    of either kind resumes in the other). Per seed as in ``QMix.learn``: envs, replay buffer,
    sampling, epsilon, reward standardisation, gradient clipping, optimiser steps and target
    updates. What is batched: the agent network when acting, and the whole update (forward,
    backward, optimiser). A seed that owes fewer updates in an iteration than another (SMAX:
    episodes end at different times) sits the extra rounds out: its parameters, optimiser state,
    standardiser and sampler are left untouched there."""

    def __init__(self, cfg: QMixConfig, env_info: EnvInfo, device: torch.device | str, seeds: list[int]) -> None:
        if not seeds:
            raise ValueError("QMixSeeds needs at least one seed")
        self.members = [QMix(copy.deepcopy(cfg), env_info, device, s) for s in seeds]
        self.cfg = self.members[0].cfg
        self.info = env_info
        self.device = torch.device(device)
        self.S = len(seeds)
        self._stack()

    def _stack(self) -> None:
        from marpo_bench.seedstack import Stack, StackedOptimizer

        ms, c = self.members, self.cfg
        self.agent = Stack([m.agent for m in ms])
        self.mixer = Stack([m.mixer for m in ms])
        self.target_agent = Stack([m.target_agent for m in ms], requires_grad=False)
        self.target_mixer = Stack([m.target_mixer for m in ms], requires_grad=False)
        eps = c.optim_eps if c.optimizer == "rmsprop" else 1e-8
        self.opt = StackedOptimizer([*self.agent.tensors(), *self.mixer.tensors()], c.optimizer, c.lr,
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

    # -- networks on the stacks -------------------------------------------------------------

    def _agent(self, stack: Any, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``RNNAgent`` per seed: ``x`` [S, L, M, in], ``h`` [S, M, H] -> Q [S, L, M, A], last h."""
        from marpo_bench.seedstack import gru, linear

        y = F.relu(linear(x, stack["fc1.weight"], stack["fc1.bias"]))
        if not self.cfg.use_rnn:
            out = F.relu(linear(y, stack["rnn.weight"], stack["rnn.bias"]))
            return linear(out, stack["fc2.weight"], stack["fc2.bias"]), out[:, -1]
        out, hn = gru(y, h, stack["rnn.weight_ih_l0"], stack["rnn.weight_hh_l0"], stack["rnn.bias_ih_l0"],
                      stack["rnn.bias_hh_l0"])
        return linear(out, stack["fc2.weight"], stack["fc2.bias"]), hn

    def _mixer(self, stack: Any, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``QMixer.forward`` per seed: ``agent_qs`` [S, ..., N], ``states`` [S, ..., state] -> [S, ...]."""
        from marpo_bench.seedstack import linear, relu_mlp

        S, lead = agent_qs.shape[0], agent_qs.shape[1:-1]
        N, Em, L = self.info.num_agents, self.cfg.mixing_embed_dim, self.cfg.hypernet_layers
        s = states.reshape(S, -1, states.shape[-1])
        R = s.shape[1]
        q = agent_qs.reshape(S * R, 1, N)
        w1 = torch.abs(relu_mlp(s, stack, "hyper_w_1", L)).reshape(S * R, N, Em)
        b1 = linear(s, stack["hyper_b_1.weight"], stack["hyper_b_1.bias"]).reshape(S * R, 1, Em)
        hidden = F.elu(torch.bmm(q, w1) + b1)
        w_final = torch.abs(relu_mlp(s, stack, "hyper_w_final", L)).reshape(S * R, Em, 1)
        v = relu_mlp(s, stack, "V", 2).reshape(S * R, 1, 1)
        return (torch.bmm(hidden, w_final) + v).reshape(S, *lead)

    def _inputs(self, obs: torch.Tensor, last_onehot: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs, last_onehot], dim=-1) if self.cfg.obs_last_action else obs

    def _q_all(self, stack: Any, b: EpisodeBatch) -> torch.Tensor:
        """Per-agent Q for every slot of stacked batches ([S, B, ...] fields): [S, B, T+1, N, A]."""
        S, B, L, N, _ = b.obs.shape
        A = self.info.num_actions
        x = self._inputs(b.obs, _onehot_last(b.actions.reshape(S * B, L - 1, N), A).view(S, B, L, N, A))
        x = x.permute(0, 2, 1, 3, 4).reshape(S, L, B * N, -1)
        h0 = torch.zeros(S, B * N, self.cfg.rnn_hidden_dim, device=x.device)
        q, _ = self._agent(stack, x, h0)
        return q.view(S, L, B, N, A).permute(0, 2, 1, 3, 4)

    # -- acting -------------------------------------------------------------------------------

    def initial_act_state(self, num_envs: int) -> tuple[torch.Tensor, torch.Tensor]:
        N, A, H = self.info.num_agents, self.info.num_actions, self.cfg.rnn_hidden_dim
        return (torch.zeros(self.S, num_envs, N, H, device=self.device),
                torch.zeros(self.S, num_envs, N, A, device=self.device))

    @torch.no_grad()
    def _act(self, obs: torch.Tensor, avail: torch.Tensor, done: torch.Tensor, act_state: Any,
             eps: list[float]) -> tuple[torch.Tensor, Any]:
        """``QMix._act`` for every seed: obs [S, E, N, D], avail [S, E, N, A], done [S, E] ->
        actions [S, E, N]; each seed selects with its own generator and epsilon."""
        h, last = act_state
        keep = (~done).float().unsqueeze(-1).unsqueeze(-1)
        h, last = h * keep, last * keep
        S, E, N = obs.shape[:3]
        q, h_new = self._agent(self.agent, self._inputs(obs, last).reshape(S, 1, E * N, -1), h.reshape(S, E * N, -1))
        q = q.view(S, E, N, -1)
        actions = torch.stack([m._select(q[k], avail[k], eps[k]) for k, m in enumerate(self.members)])
        onehot = F.one_hot(actions, self.info.num_actions).float()
        return actions, (h_new.view(S, E, N, -1), onehot)

    # -- learning -------------------------------------------------------------------------------

    def loss(self, b: EpisodeBatch, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-seed masked squared TD error [S] and mean Q_tot [S] (``QMix.loss`` per seed) on
        stacked batches, with each seed's learning reward ``rewards`` [S, B, T]."""
        c = self.cfg
        S, B = b.reward.shape[:2]
        q = self._q_all(self.agent, b)
        chosen = q[:, :, :-1].gather(-1, b.actions.unsqueeze(-1)).squeeze(-1)
        q_tot = self._mixer(self.mixer, chosen, b.state[:, :, :-1])
        flat = EpisodeBatch(**{f.name: getattr(b, f.name).flatten(0, 1) for f in dataclasses.fields(EpisodeBatch)})
        with torch.no_grad():
            q_tgt = self._q_all(self.target_agent, b)[:, :, 1:]
            avail_next = b.avail[:, :, 1:]
            if c.double_q:
                a_star = q.detach()[:, :, 1:].masked_fill(~avail_next, -math.inf).argmax(-1, keepdim=True)
                q_next = q_tgt.gather(-1, a_star).squeeze(-1)
            else:
                q_next = q_tgt.masked_fill(~avail_next, -math.inf).max(-1).values
            q_next = torch.where(avail_next.any(-1), q_next, torch.zeros_like(q_next))
            q_tot_next = self._mixer(self.target_mixer, q_next, b.state[:, :, 1:])
            nb = no_bootstrap(flat.terminated, flat.filled, c.bootstrap_truncation)
            y = td_lambda_targets(rewards.flatten(0, 1), nb, flat.filled, q_tot_next.flatten(0, 1), c.gamma,
                                  lam=c.td_lambda).view(S, B, -1)
        mask = (flat.filled & flat.alive[:, :-1].any(-1)).view(S, B, -1)
        n = mask.sum((1, 2)).clamp(min=1)
        zero = torch.zeros((), device=q_tot.device)
        loss = torch.where(mask, (q_tot - y) ** 2, zero).sum((1, 2)) / n
        q_mean = torch.where(mask, q_tot.detach(), zero).sum((1, 2)) / n
        return loss, q_mean

    def update(self, batches: list[EpisodeBatch | None]) -> list[dict[str, float] | None]:
        """One gradient step of every seed whose batch is given (``None``: the seed sits it out),
        then each stepped seed's target update when due (``QMix.update`` per seed)."""
        from marpo_bench.seedstack import clip_grad_norm

        c = self.cfg
        active_list = [b is not None for b in batches]
        first = next(b for b in batches if b is not None)
        rows = [b if b is not None else first for b in batches]
        rewards = []
        for m, b, on in zip(self.members, rows, active_list, strict=True):
            if c.standardise_rewards and c.reward_stats == "running" and on:
                m.reward_ms.update(c.reward_scale * b.reward[b.filled])
        t_max = max(int(b.reward.shape[1]) for b in rows)
        rows = [_pad_time(b, t_max) for b in rows]
        for m, b in zip(self.members, rows, strict=True):
            rewards.append(m._reward(b))
        stacked = EpisodeBatch(**{f.name: torch.stack([getattr(b, f.name) for b in rows])
                                  for f in dataclasses.fields(EpisodeBatch)})
        active = torch.tensor(active_list, device=self.device)
        loss, q_mean = self.loss(stacked, torch.stack(rewards))
        self.opt.zero_grad()
        torch.where(active, loss, torch.zeros_like(loss)).sum().backward()
        norms = clip_grad_norm(self.opt.tensors, c.grad_norm_clip)
        self.opt.step(active)
        due = torch.zeros(self.S, dtype=torch.bool, device=self.device)
        for k, m in enumerate(self.members):
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
        elif bool(due.any()):
            self.target_agent.copy_from(self.agent, due)
            self.target_mixer.copy_from(self.mixer, due)
        return [{"td_loss": float(loss[k].detach()), "q_mean": float(q_mean[k]), "grad_norm": float(norms[k])}
                if on else None for k, on in enumerate(active_list)]

    def learn(self, envs: list[MultiAgentVecEnv], total_steps: int, seeds: list[int],
              on_iteration: list[Callable[[int, dict[str, float]], None]], start_steps: int = 0) -> None:
        """``QMix.learn`` for every seed at once: ``envs[k]``, ``seeds[k]`` and ``on_iteration[k]``
        are seed k's. The members are written back (``sync_out``) before each iteration's
        callbacks, so a callback may evaluate or checkpoint its member."""
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
        tss = [ts.to(self.device) for ts in tss]
        act_state = self.initial_act_state(E)
        done = torch.zeros(S, E, dtype=torch.bool, device=self.device)
        finished: list[list[float]] = [[] for _ in ms]
        while ms[0].t_env < total_steps:
            for _ in range(chunk):
                for rp, ts in zip(replays, tss, strict=True):
                    rp.add_obs(ts)
                obs = torch.stack([ts.obs for ts in tss])
                avail = torch.stack([ts.avail_actions for ts in tss])
                actions, act_state = self._act(obs, avail, done, act_state, [m.epsilon() for m in ms])
                nxts = [ts.to(self.device) for ts in seed_envs.step(list(actions.to(env_dev)))]
                for k, (m, rp, nxt) in enumerate(zip(ms, replays, nxts, strict=True)):
                    ended = rp.add_step(actions[k], nxt)
                    m.t_env += E
                    if ended.numel():
                        m.episodes += ended.numel()
                        finished[k].extend(nxt.episode_return[ended].tolist())
                        if rp.size >= cfg.batch_size:
                            m.update_credit += ended.numel() / cfg.episodes_per_update
                done = torch.stack([nxt.done for nxt in nxts])
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
