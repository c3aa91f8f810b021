"""QMix's settings: the configuration, the defaults of the code bases it follows (lineages) and
the recipes per env family, each value naming the file it comes from (tests/test_qmix.py checks
each entry against a transcription of its source).

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
``--set`` away). The measurements behind them (tables) are in docs/algorithms.md, "§5 QMix:
calibration", and results/calibration:
- MPE: EPyMARL's settings (``lineage=epymarl``, one update per episode: EPyMARL published QMIX on
  MPE, pymarl never ran it) with pymarl's GRU agent (``use_rnn=True``; EPyMARL's code says
  feed-forward; the paper's tuned QMIX uses a GRU on SMAC, its MPE values are not in the stored
  sources; the GRU is the measured better here: -32.9 against -47.5 team_sum on
  ``jax_mpe:simple_spread``, 3 seeds x 2M env steps). The time limit is terminal
  (``bootstrap_truncation=False``: JaxMARL's QMix, and EPyMARL's gym wrapper, whose empty info
  makes the limit a terminal) and rewards are standardised (EPyMARL). Why no bootstrap: MPE
  observations and states carry no time, and every episode ends at the 25-step limit, so a
  bootstrap there asks for the infinite-horizon value of a state (the final slot) that is never
  itself a training input: Q_tot(s_T) is pure extrapolation and, with gamma = 0.99, any bias in it
  is amplified up to 1 / (1 - gamma) = 100 times through the self-referential targets (measured:
  mean Q_tot 97 against a realised discounted return of -0.5 after 300k steps).
- SMAX: rewards x 10 (JaxMARL's ``REW_SCALE``): SMAX's team return lies in [0, 2], SMAC's (which
  pymarl's settings were tuned on) in about [0, 20]. At x 1 on 2s3z (seed 0, 300k steps): mean
  Q_tot about 0.3, TD loss about 1e-3, win rate 0.0 (results/paper-300k). SMAX keeps pymarl's
  bootstrap at its 100-step limit (battles mostly end earlier).

Training ratio (``episodes_per_update``): an iteration collects ``rollout_len`` steps (default: the
episode limit, i.e. one episode per env on fixed-horizon tasks) in all E envs, then performs one
gradient update per ``episodes_per_update`` episodes finished, once the buffer holds a batch (pymarl:
one update per episode batch collected, i.e. 1 with its episode runner and ``batch_size_run`` with
the parallel one). Default 2 (4 updates per iteration of 8 episodes): on simple_spread, 8 (pymarl's
parallel ratio at E = 8) learned clearly slower per env step (about -70 at 90k vs -60), 1 was no
better than 2 at twice the compute at that budget. MPE's recipe takes EPyMARL's 1 (its episode
runner), measured better over 2M steps together with EPyMARL's other settings; SMAX keeps 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from marpo_bench.config import Recipe

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
# reached -47.5 (docs/algorithms.md, §5 calibration), a measured departure (README "Baselines"). EPyMARL's
# published QMIX on spread is -126.62 on its scale, -25.8 team_sum (unverified;
# results/calibration/README.md).
# The time limit is terminal (no bootstrap), as in JaxMARL's QMix and EPyMARL's gym wrapper (its
# ``step`` returns an empty info, so the runner's ``terminated != episode_limit`` is True at the
# limit). Measured (seed 0, 300k steps, docs/algorithms.md, §5 calibration): bootstrapping at the 25-step
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
    episodes_per_update: float = 2.0  # finished episodes per gradient update (pymarl: batch_size_run; module docstring)
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
