"""MAPPO's and MARPO's published recipes and the switches they need (issue: credible baselines).

- Each recipe-table entry equals what its on-policy script sets, read through on-policy's argparse
  semantics (store_false flags, config.py defaults), except the departures named here with a reason.
- No bootstrap at a time limit (on-policy's ``use_proper_time_limits=False``) vs bootstrapping from
  V(final state): GAE on a hand-made 3-step episode, through ``collect``.
- The recurrent critic's (and actor's) replay reproduces the values the rollout computed, across
  chunk boundaries, episode ends and rollouts.
- MARPO's delta path does not depend on the run's budget.
"""

from __future__ import annotations

import shlex

import pytest
import torch

from baselines.mappo import MAPPO, MAPPO_RECIPES, MAPPOConfig
from marpo_bench.algos.marpo import MARPO, MARPOConfig, schedule_progress
from marpo_bench.config import Recipe, RunSpec
from marpo_bench.envs.base import EnvInfo, TimeStep
from marpo_bench.recipes import build_config
from tests.helpers import replay

# ----------------------------------------------------------------------------------------------
# Recipes against their sources
# ----------------------------------------------------------------------------------------------

# on-policy onpolicy/config.py defaults of the flags the scripts touch, and of the PPO settings.
ONPOLICY_DEFAULTS = {
    "n_rollout_threads": 32, "episode_length": 200, "num_mini_batch": 1, "ppo_epoch": 15, "clip_param": 0.2,
    "lr": 5e-4, "critic_lr": 5e-4, "use_ReLU": True, "share_policy": True, "use_proper_time_limits": False,
    "data_chunk_length": 10, "hidden_size": 64, "entropy_coef": 0.01, "gamma": 0.99, "gae_lambda": 0.95,
    "huber_delta": 10.0, "max_grad_norm": 10.0, "value_loss_coef": 1.0, "opti_eps": 1e-5, "gain": 0.01,
}
STORE_FALSE = {"use_ReLU", "share_policy"}  # on-policy's argparse: passing the flag sets it False
IGNORED = {"use_value_active_masks", "use_eval", "eval_episodes", "gain", "stacked_frames",
           "use_stacked_frames", "num_env_steps"}

# The scripts' command lines (marlbenchmark/on-policy, onpolicy/scripts/...), algorithm and flags.
MPE_SCRIPTS = {
    "simple_spread": ("rmappo", "--n_rollout_threads 128 --num_mini_batch 1 --episode_length 25 "
                      "--num_env_steps 20000000 --ppo_epoch 10 --use_ReLU --gain 0.01 --lr 7e-4 --critic_lr 7e-4"),
    "simple_reference": ("rmappo", "--n_rollout_threads 128 --num_mini_batch 1 --episode_length 25 "
                         "--num_env_steps 3000000 --ppo_epoch 15 --gain 0.01 --lr 7e-4 --critic_lr 7e-4"),
    "simple_speaker_listener": ("rmappo", "--n_rollout_threads 128 --num_mini_batch 1 --episode_length 25 "
                                "--num_env_steps 2000000 --ppo_epoch 15 --gain 0.01 --lr 7e-4 --critic_lr 7e-4 "
                                "--share_policy"),
}
_SMAC = "--n_rollout_threads 8 --num_mini_batch 1 --episode_length 400 --num_env_steps 10000000"
SMAC_SCRIPTS = {
    "3m": ("rmappo", f"{_SMAC} --ppo_epoch 15 --use_value_active_masks --use_eval --eval_episodes 32"),
    "8m": ("rmappo", f"{_SMAC} --ppo_epoch 15 --use_value_active_masks --use_eval --eval_episodes 32"),
    "3s5z": ("rmappo", f"{_SMAC} --ppo_epoch 5 --use_value_active_masks --use_eval --eval_episodes 32"),
    "5m_vs_6m": ("rmappo", f"{_SMAC} --ppo_epoch 10 --clip_param 0.05 --use_value_active_masks --use_eval "
                           "--eval_episodes 32"),
    "10m_vs_11m": ("rmappo", f"{_SMAC} --ppo_epoch 10 --use_value_active_masks --use_eval --eval_episodes 32"),
    "3s_vs_5z": ("mappo", f"{_SMAC} --ppo_epoch 15 --clip_param 0.05 --use_value_active_masks --use_eval "
                          "--eval_episodes 32 --stacked_frames 4 --use_stacked_frames"),
    "2s3z": ("rmappo", _SMAC),  # no script of its own: config.py's defaults
}

# Departures that stay, by (family, task or "*"): field -> (our value, reason). Everything else
# must equal the script.
DEPARTURES = {
    ("jax_mpe", "*"): {"chunk_len": (25, "data_chunk_length 10 does not divide the 25-step rollout")},
    ("smax", "*"): {"num_envs": (64, "vectorised SMAX: 64 x 50 = on-policy's 8 x 400 transitions"),
                    "rollout_len": (50, "same batch as 8 x 400")},
    ("smax", "3s_vs_5z"): {"recurrent": (True, "no frame stacking here: the GRU gives the memory"),
                           "recurrent_critic": (True, "as the actor")},
}


def onpolicy_args(algo: str, flags: str) -> dict[str, object]:
    """The settings an on-policy script runs with: config.py defaults, then its flags, read with
    on-policy's argparse semantics, then what train_*.py sets for ``algorithm_name``."""
    args = dict(ONPOLICY_DEFAULTS)
    tokens = shlex.split(flags)
    i = 0
    while i < len(tokens):
        name = tokens[i].removeprefix("--")
        if name in STORE_FALSE:
            args[name] = False
            i += 1
        elif name in IGNORED or name not in args:
            assert name in IGNORED, f"flag {name} not modelled"
            i += 1 if i + 1 >= len(tokens) or tokens[i + 1].startswith("--") else 2
        else:
            args[name] = type(ONPOLICY_DEFAULTS[name])(float(tokens[i + 1]) if "e" in tokens[i + 1] else tokens[i + 1])
            i += 2
    args["use_recurrent_policy"] = algo == "rmappo"  # train_mpe.py / train_smac.py
    return args


def as_ppo_config(args: dict[str, object], family: str) -> dict[str, object]:
    """on-policy's settings in this suite's PPOConfig fields."""
    return {
        "num_envs": args["n_rollout_threads"], "rollout_len": args["episode_length"],
        "minibatches": args["num_mini_batch"], "epochs": args["ppo_epoch"], "clip_eps": args["clip_param"],
        "lr": args["lr"], "critic_lr": args["critic_lr"],
        "activation": "relu" if args["use_ReLU"] else "tanh", "share_policy": args["share_policy"],
        "recurrent": args["use_recurrent_policy"], "recurrent_critic": args["use_recurrent_policy"],
        "chunk_len": args["data_chunk_length"], "bootstrap_truncation": args["use_proper_time_limits"],
        "hidden": args["hidden_size"], "entropy_coef": args["entropy_coef"], "gamma": args["gamma"],
        "gae_lambda": args["gae_lambda"], "huber_delta": args["huber_delta"], "max_grad_norm": args["max_grad_norm"],
        "value_coef": args["value_loss_coef"], "adam_eps": args["opti_eps"],
        # on-policy's MPE observations carry no agent id (its SMAC env's own features are kept as-is).
        **({"agent_id": False} if family == "jax_mpe" else {}),
    }


CASES = [("jax_mpe", t, *s) for t, s in MPE_SCRIPTS.items()] + [("smax", t, *s) for t, s in SMAC_SCRIPTS.items()]


@pytest.mark.parametrize(("algo", "family", "task", "script_algo", "flags"),
                         [(a, *c) for a in ("mappo", "marpo") for c in CASES])
def test_recipe_equals_the_onpolicy_script_it_cites(algo, family, task, script_algo, flags):
    cfg = build_config(RunSpec(algo, family, task, seed=0, steps=1000))
    want = as_ppo_config(onpolicy_args(script_algo, flags), family)
    for scope in ((family, "*"), (family, task)):
        for name, (ours, _reason) in DEPARTURES.get(scope, {}).items():
            want[name] = ours
    got = {k: getattr(cfg, k) for k in want}
    assert got == pytest.approx(want)
    assert cfg.num_envs * cfg.rollout_len == pytest.approx(
        onpolicy_args(script_algo, flags)["n_rollout_threads"] * onpolicy_args(script_algo, flags)["episode_length"])


def test_mpe2_family_uses_the_same_recipes_as_jax_mpe():
    for task in MPE_SCRIPTS:
        mpe2, jax = (build_config(RunSpec("mappo", fam, task, 0, 1000)) for fam in ("mpe", "jax_mpe"))
        assert mpe2 == jax


def test_every_recipe_entry_names_a_source_script_with_its_flags():
    for key, recipe in MAPPO_RECIPES.items():
        assert isinstance(recipe, Recipe) and "on-policy" in recipe.source, key
        for name, value in recipe.values.items():
            assert name in MAPPOConfig.__dataclass_fields__, (key, name)
            if key.count(":") and name in ("epochs", "clip_eps"):  # a task's numbers are quoted in its source
                flag = {"epochs": "--ppo_epoch", "clip_eps": "--clip_param"}[name]
                assert f"{flag} {value:g}" in recipe.source, (key, name)


def test_marpo_uses_mappos_recipes():
    assert MARPO.DEFAULTS_BY_FAMILY is MAPPO.DEFAULTS_BY_FAMILY


def test_a_set_override_beats_the_recipe():
    spec = RunSpec("mappo", "jax_mpe", "simple_spread", 0, 1000,
                   overrides=(("recurrent", "false"), ("bootstrap_truncation", "true"), ("activation", "relu")))
    cfg = build_config(spec)
    assert (cfg.recurrent, cfg.bootstrap_truncation, cfg.activation, cfg.epochs) == (False, True, "relu", 10)


# ----------------------------------------------------------------------------------------------
# A hand-made env: episodes of known lengths, the state a known function of time
# ----------------------------------------------------------------------------------------------


class ClockEnv:
    """E envs, N agents. The state is ``[10 + t]`` (t = step within the episode); every step pays
    reward 1; env e's episodes last ``lengths[e]`` steps and end by truncation, or by termination
    when ``terminal`` is set. Observations are random but fixed per (env, t) so recurrent nets see
    something."""

    def __init__(self, lengths: list[int], N: int = 2, terminal: bool = False, seed: int = 0) -> None:
        self.lengths = torch.tensor(lengths)
        self.E, self.N, self.terminal = len(lengths), N, terminal
        self.table = torch.randn(self.E, 64, N, 3, generator=torch.Generator().manual_seed(seed))
        self.info = EnvInfo(family="test", task="clock", num_envs=self.E, num_agents=N, obs_dim=3, state_dim=1,
                            num_actions=2, episode_limit=int(self.lengths.max()), reward_scale="team_sum",
                            has_won=False)
        self.device = torch.device("cpu")
        self.t = torch.zeros(self.E, dtype=torch.long)
        self.ret = torch.zeros(self.E)

    def _obs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.table[torch.arange(self.E), self.t % 64], (10.0 + self.t.float()).unsqueeze(-1)

    def reset(self, seed: int) -> TimeStep:
        self.t.zero_()
        self.ret.zero_()
        obs, state = self._obs()
        return TimeStep.first(obs, state, torch.ones(self.E, self.N, 2, dtype=torch.bool),
                              torch.ones(self.E, self.N, dtype=torch.bool))

    def step(self, actions: torch.Tensor) -> TimeStep:
        self.t += 1
        self.ret += 1.0
        final_obs, final_state = self._obs()
        done = self.t >= self.lengths
        ep_ret = torch.where(done, self.ret, torch.full((self.E,), float("nan")))
        ep_len = torch.where(done, self.t, torch.zeros_like(self.t))
        self.t = torch.where(done, 0, self.t)
        self.ret = torch.where(done, 0.0, self.ret)
        obs, state = self._obs()
        false = torch.zeros(self.E, dtype=torch.bool)
        return TimeStep(obs=obs, state=state, avail_actions=torch.ones(self.E, self.N, 2, dtype=torch.bool),
                        alive=torch.ones(self.E, self.N, dtype=torch.bool), reward=torch.ones(self.E),
                        terminated=done if self.terminal else false, truncated=false if self.terminal else done,
                        final_obs=final_obs, final_state=final_state, episode_return=ep_ret,
                        episode_length=ep_len, won=torch.full((self.E,), float("nan")))

    def close(self) -> None:
        pass


class _TenthOfState(torch.nn.Module):
    """A critic V(s) = s[0] / 10."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return 0.1 * state[..., :1] + 0.0 * self.unused


def _collect_with_known_critic(bootstrap: bool) -> torch.Tensor:
    env = ClockEnv([3], N=1)
    cfg = MAPPOConfig(num_envs=1, rollout_len=3, gamma=0.9, gae_lambda=0.8, value_norm=False,
                      bootstrap_truncation=bootstrap)
    algo = MAPPO(cfg, env.info, "cpu", seed=0)
    algo.critic = _TenthOfState()  # V(s) = s / 10: V(s_t) = 1 + t / 10
    ro, _, finished = algo.collect(env, env.reset(0))
    assert finished == [3.0]
    return ro.advantages[:, 0]


def test_gae_bootstraps_a_time_limit_only_when_asked():
    # One 3-step episode, r = 1, V(s_t) = 1.0, 1.1, 1.2, V(final s_3) = 1.3, gamma .9, lambda .8.
    # Bootstrapped: deltas .99, .98, 1 + .9 * 1.3 - 1.2 = .97
    #   A2 = .97, A1 = .98 + .72 * .97 = 1.6784, A0 = .99 + .72 * 1.6784 = 2.198448
    torch.testing.assert_close(_collect_with_known_critic(True), torch.tensor([2.198448, 1.6784, 0.97]))
    # on-policy (use_proper_time_limits False): the time limit ends the return, delta_2 = 1 - 1.2
    #   A2 = -.2, A1 = .98 - .144 = .836, A0 = .99 + .72 * .836 = 1.59192
    torch.testing.assert_close(_collect_with_known_critic(False), torch.tensor([1.59192, 0.836, -0.2]))


def test_recurrent_critic_bootstraps_a_truncation_from_the_episodes_own_hidden_state():
    env = ClockEnv([3, 5], N=2)
    cfg = MAPPOConfig(num_envs=2, rollout_len=4, chunk_len=2, recurrent=True, recurrent_critic=True,
                      value_norm=False, bootstrap_truncation=True, gamma=0.9, gae_lambda=0.0)
    algo = MAPPO(cfg, env.info, "cpu", seed=0)
    ro, _, _ = algo.collect(env, env.reset(0))
    # Env 0 truncates at step 2 (its third step): with lambda 0, A_2 = 1 + .9 V(final s_3) - V(s_2),
    # V(final s_3) continuing the hidden state of steps 0..2.
    with torch.no_grad():
        h = torch.zeros(1, cfg.hidden)
        for t in range(3):
            _, h = algo.critic.step(torch.tensor([[10.0 + t]]), h)
        v_final, _ = algo.critic.step(torch.tensor([[13.0]]), h)
    want = 1 + 0.9 * float(v_final) - float(ro.values[2, 0])
    assert float(ro.advantages[2, 0]) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("algo_cls", [MAPPO, MARPO])
def test_recurrent_replay_reproduces_the_rollouts_values_and_log_probs(algo_cls):
    # Episodes of 3 and 5 steps end inside and across chunks of 4; two rollouts carry the hidden
    # states over; one agent per env has its own actor (share_policy off) in the second case.
    for share in (True, False):
        env = ClockEnv([3, 5, 7], N=2, seed=1)
        cfg_cls = MARPOConfig if algo_cls is MARPO else MAPPOConfig
        cfg = cfg_cls(num_envs=3, rollout_len=8, chunk_len=4, recurrent=True, recurrent_critic=True,
                      share_policy=share, value_norm=False)
        algo = algo_cls(cfg, env.info, "cpu", seed=0)
        ts = env.reset(0)
        for _ in range(2):
            ro, ts, _ = algo.collect(env, ts)
            with torch.no_grad():
                _, logp_all, logp_next, values = replay(algo, ro)
                torch.testing.assert_close(values, ro.values, atol=1e-6, rtol=0)
            torch.testing.assert_close(logp_all, ro.logits_old, atol=1e-5, rtol=0)
            # step k+1 as seen from k continues k's hidden state: equal to the rollout's k+1
            torch.testing.assert_close(logp_next, ro.logits_old[1:], atol=1e-5, rtol=0)


def test_separate_policies_give_each_agent_its_own_actor():
    env = ClockEnv([4], N=2)
    algo = MAPPO(MAPPOConfig(num_envs=1, rollout_len=4, share_policy=False), env.info, "cpu", seed=0)
    obs = torch.randn(5, 1, 2, 3)
    out = algo.actor(obs)
    torch.testing.assert_close(out[..., 0, :], algo.actor.nets[0](obs[..., 0, :]))
    torch.testing.assert_close(out[..., 1, :], algo.actor.nets[1](obs[..., 1, :]))
    assert not torch.equal(algo.actor.nets[0](obs[..., 0, :]), algo.actor.nets[1](obs[..., 0, :]))


# ----------------------------------------------------------------------------------------------
# MARPO's delta schedule: a budget is a stopping rule
# ----------------------------------------------------------------------------------------------


def test_schedule_progress_counts_env_steps_towards_the_fixed_horizon():
    assert schedule_progress(300_000, 10_000_000) == pytest.approx(0.03)
    assert schedule_progress(20_000_000, 10_000_000) == 1.0
    assert MARPOConfig().progress_horizon == 10_000_000


class _Stop(Exception):
    pass


def _delta_path(budget: int, upto: int) -> list[tuple[int, float]]:
    env = ClockEnv([25] * 1000, N=1)
    cfg = MARPOConfig(num_envs=1000, rollout_len=25, epochs=1, hidden=8, layers=1)
    algo = MARPO(cfg, env.info, "cpu", seed=0)
    path: list[tuple[int, float]] = []

    def record(steps: int, metrics: dict[str, float]) -> None:
        path.append((steps, metrics["kl_delta"]))
        if steps >= upto:
            raise _Stop

    with pytest.raises(_Stop):
        algo.learn(env, budget, seed=0, on_iteration=record)
    return path


def test_delta_path_does_not_depend_on_budget():
    # The first 300k env steps (12 updates of 25k) of a 300k-step and of a 10M-step run.
    short, long = _delta_path(300_000, 300_000), _delta_path(10_000_000, 300_000)
    assert [s for s, _ in short] == [25_000 * (i + 1) for i in range(12)]
    assert short == long
