"""QMix (Rashid et al., "QMIX: Monotonic Value Function Factorisation for Deep Multi-Agent
Reinforcement Learning", ICML 2018), following the pymarl / pymarl2 code bases: one seed.

``QMix`` is the algorithm the registry names (``qmix``) and one seed of it: its networks
(``nn.Module``s, for acting, evaluation and checkpoints), epsilon-greedy generator, replay
sampler, reward standardiser, counters and ``state_dict`` (the checkpoint format of stored runs).
It learns through the one QMix learner, ``baselines.qmix_learner.QMixSeeds``, which trains
S >= 1 seeds as one computation: ``learn``, ``update``, ``loss`` and ``targets`` here run it over
``[self]``, and ``batched`` builds it over S seeds (the runner's ``--vectorize-seeds``).

Where each part lives, each file read top to bottom:
- ``baselines/qmix_learner.py``: collection, double-Q TD(lambda) targets, the masked TD loss and
  the update (the learning rule).
- ``baselines/qmix_nets.py``: the agent network (pymarl's ``RNNAgent``; ``use_rnn=False``:
  EPyMARL's feed-forward variant) and the monotonic hypernetwork mixer (pymarl's ``QMixer``).
- ``baselines/qmix_targets.py``: the learning reward and the TD(lambda) targets over padded episodes.
- ``baselines/qmix_replay.py``: the replay of whole episodes and the memory it needs.
- ``baselines/qmix_recipes.py``: the settings, the lineages' defaults (pymarl, pymarl2, EPyMARL)
  and the recipes per env family, with their sources; docs/algorithms.md (§5) has the
  measurements behind them.

Acting: epsilon-greedy over available actions; epsilon anneals linearly over env steps (every step
of every parallel env counts). ``act(deterministic=True)`` is greedy (epsilon 0), the evaluation
protocol of pymarl/EPyMARL for QMix (docs/algorithms.md, pitfalls); ``deterministic=False`` uses the
current epsilon.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from baselines.qmix_learner import QMixSeeds, act_step, seed_reward
from baselines.qmix_nets import QMixer, RNNAgent, seed_view
from baselines.qmix_recipes import QMIX_RECIPES, QMixConfig
from baselines.qmix_replay import EpisodeBatch, EpisodeReplay, episode_bytes, stack_batches, update_bytes
from baselines.qmix_targets import RunningMeanStd
from marpo_bench.envs.base import EnvInfo, MultiAgentVecEnv, TimeStep


class QMix:
    """One seed of QMix: its networks, generators, standardiser, counters and checkpoint; it
    learns through the one learner (``QMixSeeds``), alone (S = 1) or batched with other seeds."""

    name = "qmix"
    Config = QMixConfig
    DEFAULTS_BY_FAMILY = QMIX_RECIPES  # the env families' recipes (baselines/qmix_recipes.py), with their sources
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
        shapes (``seeds`` > 1: S seeds in one learner, each with its own replay): per seed, the
        replay (exact: ``EpisodeReplay.nbytes`` with ``cfg.num_envs`` envs) and one update's
        working set (``update_bytes``; several seeds also pad and stack their batches: two more
        copies). The networks and optimiser states (a few MB at the default sizes) are left out.
        Called before anything is built (``marpo_bench.memory``)."""
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
        # The optimiser's state lives in the learner while it trains; this one holds it for the
        # checkpoint (its state_dict is what stored runs hold).
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
        """S seeds as one learner (the optional ``batched`` contract, docs/extending.md): a
        ``QMix`` per seed (``members[k]`` is built exactly as a run of ``seeds[k]`` alone)."""
        if not seeds:
            raise ValueError("a batched QMix needs at least one seed")
        return QMixSeeds([cls(copy.deepcopy(cfg), env_info, device, s) for s in seeds])

    # -- acting ---------------------------------------------------------------------------------

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

    def _act(self, obs: torch.Tensor, avail: torch.Tensor, done: torch.Tensor, act_state: Any,
             eps: float) -> tuple[torch.Tensor, Any]:
        """``act_step`` for this seed alone: obs [E, N, D], avail [E, N, A], done [E] -> actions [E, N]."""
        h, last = act_state
        a, (h, last) = act_step(seed_view(self.agent), [self], obs.unsqueeze(0), avail.unsqueeze(0),
                                done.unsqueeze(0), (h.unsqueeze(0), last.unsqueeze(0)), [eps])
        return a[0], (h[0], last[0])

    @torch.no_grad()
    def act(self, ts: TimeStep, act_state: Any, deterministic: bool) -> tuple[torch.Tensor, Any]:
        """Actions [E, N] on the env's device: greedy when ``deterministic``, else epsilon-greedy at
        the current schedule epsilon. Resets the recurrent state where ``ts.done``."""
        eps = 0.0 if deterministic else self.epsilon()
        tsd = ts.to(self.device)  # one packed host-device transfer (TimeStep.to)
        a, st = self._act(tsd.obs, tsd.avail_actions, tsd.done, act_state, eps)
        return a.to(ts.obs.device), st

    # -- learning: the one learner over this seed ---------------------------------------------

    def learn(self, env: MultiAgentVecEnv, total_steps: int, seed: int,
              on_iteration: Callable[[int, dict[str, float]], None], start_steps: int = 0) -> None:
        """``QMixSeeds.learn`` with this seed alone (see there)."""
        QMixSeeds([self]).learn([env], total_steps, [seed], [on_iteration], start_steps=start_steps)

    def update(self, batch: EpisodeBatch) -> dict[str, float]:
        """One gradient step on ``batch``, then the target update when due (``QMixSeeds.update``)."""
        learner = QMixSeeds([self])
        out = learner.update([batch])[0]
        learner.sync_out()
        assert out is not None
        return out

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """``QMixSeeds.loss`` of this seed on ``batch`` (a value: the learner's copies take the gradient)."""
        loss, q_mean = QMixSeeds([self]).loss(stack_batches([batch]), seed_reward(self, batch).unsqueeze(0))
        return loss[0], {"td_loss": float(loss[0].detach()), "q_mean": float(q_mean[0])}

    def targets(self, batch: EpisodeBatch, q_online: torch.Tensor | None = None,
                lam: float | None = None) -> torch.Tensor:
        """``QMixSeeds.targets`` of this seed on ``batch``: [B, T]."""
        q = None if q_online is None else q_online.unsqueeze(0)
        return QMixSeeds([self]).targets(stack_batches([batch]), seed_reward(self, batch).unsqueeze(0), q, lam)[0]

    def realised_returns(self, batch: EpisodeBatch) -> torch.Tensor:
        """[B, T] discounted return-to-go of every stored step, from the stored (scaled,
        standardised) rewards, bootstrapped at the episode's end exactly where the TD targets are
        (lambda = 1 targets): what Q_tot of the behaviour policy should match on average."""
        return self.targets(batch, lam=1.0)

    def _q_all(self, agent: RNNAgent, batch: EpisodeBatch) -> torch.Tensor:
        """Per-agent Q of ``agent`` (this seed's online or target network) for every slot: [B, T+1, N, A]."""
        return QMixSeeds([self]).q_all(seed_view(agent), stack_batches([batch]))[0]

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
