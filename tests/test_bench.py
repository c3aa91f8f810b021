"""``marpo-bench bench``: training rows split each iteration into phases that add up."""

import math

import pytest

from marpo_bench.bench import run_isolated


@pytest.mark.parametrize("algo", ["mappo", "qmix"])
def test_train_bench_phases_are_positive_and_fit_in_the_iteration(algo):
    row = run_isolated("train", (algo, "jax_mpe", "simple_spread", 8, 1.0, (), "cpu"), 1)
    assert row["kind"] == "train" and row["num_envs"] == 8 and row["env_steps_per_s"] > 0 and row["device"] == "cpu"
    for k in ("env_ms", "transfer_ms", "policy_ms", "update_ms"):
        assert math.isfinite(row[k]) and row[k] >= 0, (k, row[k])
    assert row["update_ms"] > 0 and row["env_ms"] > 0
    # The phases partition the wall time of the timed iterations.
    per_iter_s = (row["env_ms"] + row["transfer_ms"] + row["policy_ms"] + row["update_ms"]) / 1000
    steps_per_iter = row["env_steps_per_s"] * per_iter_s
    if algo == "mappo":  # 8 envs x 25 steps per iteration
        assert steps_per_iter == pytest.approx(200, rel=1e-6)


def test_train_bench_on_a_python_env_reports_no_transfer_split():
    row = run_isolated("train", ("mappo", "mpe", "simple_spread", 2, 0.5, (), "cpu"), 1)
    assert math.isnan(row["transfer_ms"]) and row["env_ms"] > 0 and row["update_ms"] > 0


def test_train_bench_on_smax_separates_the_jitted_compute_from_the_exchange():
    row = run_isolated("train", ("mappo", "smax", "3m", 8, 1.0, (), "cpu"), 1)
    assert math.isfinite(row["transfer_ms"]) and row["transfer_ms"] >= 0 and row["env_ms"] > 0


def test_parallel_bench_sums_env_steps_over_processes_and_averages_their_phases():
    row = run_isolated("train", ("mappo", "jax_mpe", "simple_spread", 8, 1.0, (), "cpu"), 1, parallel=2)
    assert row["parallel"] == 2
    # Each process does 200 env steps per iteration (8 envs x 25 steps): the summed rate times the
    # mean iteration time is 2 x 200, up to the two processes' different speeds (Jensen's gap).
    per_iter_s = (row["env_ms"] + row["transfer_ms"] + row["policy_ms"] + row["update_ms"]) / 1000
    assert row["env_steps_per_s"] * per_iter_s == pytest.approx(400, rel=0.25)


@pytest.mark.parametrize("mode", ["sequential", "vectorised", "bound"])
def test_seed_stack_bench_times_s_seeds_each_way_and_counts_all_their_env_steps(mode):
    row = run_isolated("seeds", ("qmix", "jax_mpe", "simple_spread", 2, mode, 1.0,
                                 (("batch_size", "8"), ("num_envs", "4")), "cpu"), 1)
    assert row["kind"] == "seeds" and row["algo"] == f"qmix S=2 {mode}"
    assert row["env_steps_per_s"] > 0 and row["update_ms"] > 0
    # The bound is one learner with S x the envs; the others keep each seed's E.
    assert row["num_envs"] == (8 if mode == "bound" else 4)
