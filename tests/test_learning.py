"""End-to-end learning checks (slow): each learner must beat the uniform-random policy by a stated
margin at a stated budget, on every seed tested, under the suite's own evaluation protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marpo_bench import store
from marpo_bench.config import RunSpec
from marpo_bench.envs import make_env
from marpo_bench.evaluation import evaluate
from marpo_bench.train import train_run

BUDGET = 200_000  # env steps per run (~15-30 s each on 2 cores)
MARGIN = 12.0  # team_sum return units per 25-step episode; random ~ -80 (sd ~ 24), trained ~ -58
SEEDS = (0, 1)


class UniformRandom:
    """The baseline policy: uniform over available actions."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def initial_act_state(self, num_envs: int) -> None:
        return None

    def act(self, ts, act_state, deterministic):
        u = torch.rand(ts.avail_actions.shape, generator=self.gen).masked_fill(~ts.avail_actions, -1.0)
        return u.argmax(-1), act_state


def random_policy_return(task: str, episodes: int = 512) -> float:
    env = make_env("jax_mpe", task, episodes)
    return evaluate(UniformRandom(0), env, seed=123, deterministic=False)["eval_return_mean"]


def final_return(results: Path, spec: RunSpec) -> float:
    df = store.read_metrics(store.run_dir(results, "learn", spec.run_id))
    return float(df["eval_return_mean"].iloc[-2:].mean())  # last two evaluation points, 32 episodes each


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["mappo", "marpo"])
def test_learner_beats_random_policy_on_simple_spread(tmp_path, algo):
    random_ret = random_policy_return("simple_spread")
    assert -95 < random_ret < -65  # sanity: the baseline is what the margin was chosen against
    finals = []
    for seed in SEEDS:
        spec = RunSpec(algo, "jax_mpe", "simple_spread", seed, BUDGET)
        res = train_run(spec, tmp_path, "learn")
        assert res.status == "complete", res.message
        finals.append(final_return(tmp_path, spec))
    print(f"{algo}: random {random_ret:.1f}, final greedy returns {np.round(finals, 1)} at {BUDGET} steps")
    assert all(f > random_ret + MARGIN for f in finals), (random_ret, finals)


SMAX_BUDGET = 300_000  # env steps per run (~2-3 min each on one core)
SMAX_WIN_RATE = 0.5  # mean greedy win rate over the last 5 evaluations (32 episodes each)


@pytest.mark.slow
def test_mappo_wins_smax_3m_at_least_half_the_time(tmp_path):
    # Measured while choosing the budget: 0.59 and 0.67 at 200k env steps (2 seeds); the
    # uniform-random policy's win rate on 3m is checked below to be far lower.
    env = make_env("smax", "3m", 128)
    random_win = evaluate(UniformRandom(0), env, seed=123, deterministic=False)["eval_win_rate"]
    assert random_win < 0.2
    finals = []
    for seed in SEEDS:
        spec = RunSpec("mappo", "smax", "3m", seed, SMAX_BUDGET)
        res = train_run(spec, tmp_path, "learn")
        assert res.status == "complete", res.message
        df = store.read_metrics(store.run_dir(tmp_path, "learn", spec.run_id))
        finals.append(float(df["eval_win_rate"].iloc[-5:].mean()))
    print(f"smax 3m mappo: random win rate {random_win:.2f}, final greedy win rates {np.round(finals, 2)}")
    assert all(f >= SMAX_WIN_RATE for f in finals), (random_win, finals)
