"""Statistics with known answers, the fast path against rliable, normalisation and study loading."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from marpo_bench import normalisation, store
from marpo_bench import stats as S
from marpo_bench.analysis.load import load_scores
from marpo_bench.analysis.study import analyse
from marpo_bench.config import RunSpec
from tests import rliable_oracle as oracle
from tests.mpe_oracle import measure_bounds
from tests.test_report import _record, _rows, write_synthetic_study

# --------------------------------------------------------------------------------------------
# known answers


def test_iqm_mean_median_gap_of_known_arrays():
    # one task, 8 skewed runs: IQM, mean and trimmed means at other cuts all differ
    est = S.aggregate_estimates({"a": [np.array([0.0, 1, 2, 3, 4, 5, 6, 100])]}, reps=200)["a"]
    assert est["IQM"].point == pytest.approx(3.5)  # drops 0, 1 and 6, 100: mean of 2..5 (no trim: 15.125)
    assert est["Mean"].point == pytest.approx(121 / 8)
    assert est["Median"].point == pytest.approx(121 / 8)  # median of the per-task means: one task
    assert est["Optimality gap"].point == pytest.approx(1 - (0 + 1 + 1 * 6) / 8)  # mean of min(x, 1)
    scores = np.array([[0.0, 0.1], [0.2, 0.9], [0.3, 0.4], [1.0, 0.5]])  # 4 runs x 2 tasks
    est = S.aggregate_estimates({"b": scores}, reps=200)["b"]
    assert est["IQM"].point == pytest.approx(np.mean([0.2, 0.3, 0.4, 0.5]))
    assert est["Mean"].point == pytest.approx(scores.mean())
    assert est["Median"].point == pytest.approx(np.median(scores.mean(axis=0)))
    assert est["Optimality gap"].point == pytest.approx(1 - scores.mean())
    for e in est.values():
        assert e.lo <= e.point <= e.hi


def test_probability_of_improvement_separated_identical_and_reversed():
    rng = np.random.default_rng(0)
    low = rng.uniform(0.0, 0.4, size=(10, 3))
    high = rng.uniform(0.6, 1.0, size=(10, 3))
    better = S.probability_of_improvement(high, low, reps=2000)
    assert better.point == 1.0 and better.lo == 1.0 and better.hi == 1.0
    assert S.probability_of_improvement(low, high, reps=2000).point == 0.0
    same = S.probability_of_improvement(low, low.copy(), reps=2000)
    assert same.point == pytest.approx(0.5) and same.lo < 0.5 < same.hi
    ties = S.probability_of_improvement(np.full((5, 2), 0.3), np.full((5, 2), 0.3), reps=500)
    assert (ties.point, ties.lo, ties.hi) == (0.5, 0.5, 0.5)  # ties count half


def test_weighted_trimmed_mean_equals_scipy_on_explicit_resamples():
    rng = np.random.default_rng(1)
    x = rng.normal(size=13)
    idx = rng.integers(0, 13, size=(50, 13))
    counts = np.stack([np.bincount(i, minlength=13) for i in idx]).astype(float)
    want = [scipy.stats.trim_mean(x[i], 0.25) for i in idx]
    np.testing.assert_allclose(S._weighted_trimmed_mean(x, counts), want, rtol=1e-12)
    np.testing.assert_allclose(S._weighted_trimmed_mean(x, counts, dtype=np.float32), want, atol=1e-5)
    curves = rng.normal(size=(13, 4))  # several columns at once
    got = S._weighted_trimmed_mean(curves, counts)
    for g in range(4):
        np.testing.assert_allclose(got[:, g], [scipy.stats.trim_mean(curves[i, g], 0.25) for i in idx])


def test_stratified_counts_resample_within_tasks_reproducibly():
    w = S.stratified_counts(S.rng_for(0, "k"), [3, 5], 1000)
    assert w.shape == (1000, 8)
    assert (w[:, :3].sum(1) == 3).all() and (w[:, 3:].sum(1) == 5).all()
    np.testing.assert_array_equal(w, S.stratified_counts(S.rng_for(0, "k"), [3, 5], 1000))
    assert not np.array_equal(w, S.stratified_counts(S.rng_for(0, "other"), [3, 5], 1000))
    # within a task of n runs each run's count is Binomial(n, 1/n): P(never drawn) = (1 - 1/n)^n
    # (3 runs: 8/27 = 0.296; 5 runs: 0.328); 3,000 and 5,000 draws: s.e. < 0.01
    assert (w[:, :3] == 0).mean() == pytest.approx((2 / 3) ** 3, abs=0.03)
    assert (w[:, 3:] == 0).mean() == pytest.approx(0.8**5, abs=0.03)


def test_performance_profile_and_iqm_curve_points():
    x = np.array([[0.1, 0.5], [0.3, 0.7], [0.9, 0.2]])
    taus = np.array([0.0, 0.25, 0.6, 1.0])
    prof = S.performance_profiles({"a": x}, taus, reps=300)["a"]
    np.testing.assert_allclose(prof.point, [1.0, 4 / 6, 2 / 6, 0.0])
    assert (prof.lo <= prof.point + 1e-12).all() and (prof.point <= prof.hi + 1e-12).all()
    curves = [np.random.default_rng(2).uniform(size=(6, 5)), np.random.default_rng(3).uniform(size=(4, 5))]
    band = S.iqm_curves({"a": curves}, np.arange(5), reps=300)["a"]
    pooled = np.concatenate(curves)
    np.testing.assert_allclose(band.point, scipy.stats.trim_mean(pooled, 0.25, axis=0))
    assert (band.lo <= band.point + 1e-9).all() and (band.point <= band.hi + 1e-9).all()


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="finite"):
        S.aggregate_estimates({"a": np.array([[np.nan, 1.0]])}, reps=10)
    with pytest.raises(ValueError, match="same tasks"):
        S.probability_of_improvement(np.ones((3, 2)), np.ones((3, 3)), reps=10)


# --------------------------------------------------------------------------------------------
# the fast path against rliable (the reference implementation)


def _close(fast: S.Estimate, ref: S.Estimate, what: str) -> None:
    """Points identical; CI ends within Monte-Carlo error of the reference's (few) reps: with
    600-2,000 resamples an end's s.e. is ~0.015-0.03 of the interval's width, while 90% ends sit
    ~0.08 widths inside 95% ones, so 0.05 widths tells the levels apart."""
    assert fast.point == pytest.approx(ref.point, abs=1e-6), what
    tol = 0.05 * max(ref.hi - ref.lo, 1e-3)
    assert abs(fast.lo - ref.lo) < tol and abs(fast.hi - ref.hi) < tol, (what, fast, ref)


def test_fast_aggregates_match_rliable():
    rng = np.random.default_rng(4)
    scores = {"marpo": rng.beta(5, 2, size=(8, 4)), "mappo": rng.beta(2, 2, size=(8, 4))}
    ref = oracle.rliable_aggregate_estimates(scores, reps=2000, seed=1)
    fast = S.aggregate_estimates(scores, reps=20_000, seed=1)
    for algo in scores:
        for m in S.METRIC_NAMES:
            _close(fast[algo][m], ref[algo][m], f"{algo} {m}")


def test_fast_probability_of_improvement_matches_rliable():
    rng = np.random.default_rng(5)
    x, y = rng.beta(4, 3, size=(6, 3)), rng.beta(3, 3, size=(6, 3))
    ref = oracle.rliable_probability_of_improvement(x, y, reps=600, seed=2)
    fast = S.probability_of_improvement(x, y, reps=20_000, seed=2)
    _close(fast, ref, "P(x > y)")
    from rliable import metrics

    assert fast.point == pytest.approx(metrics.probability_of_improvement(x, y))


def test_rliable_path_is_reproducible_and_leaves_global_random_state_alone():
    scores = {"a": np.random.default_rng(6).uniform(size=(5, 2))}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    one = oracle.rliable_aggregate_estimates(scores, reps=200, seed=7)
    two = oracle.rliable_aggregate_estimates(scores, reps=200, seed=7)
    assert one == two
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert S.aggregate_estimates(scores, reps=500, seed=7) == S.aggregate_estimates(scores, reps=500, seed=7)


# --------------------------------------------------------------------------------------------
# normalisation


def test_normalisation_table_maps_random_to_0_and_reference_to_1():
    table = normalisation.normalisation_table()
    assert {e for e, _ in table} == {"mpe", "jax_mpe"}  # declared by the MPE families' own files
    for (env, task), b in table.items():
        assert b.reference > b.random and b.scale == "team_sum" and b.episode_limit == 25
        np.testing.assert_allclose(normalisation.normalise([b.random, b.reference], env, task), [0.0, 1.0])
        assert b.random_source and b.reference_source
    assert -95 < table[("jax_mpe", "simple_spread")].random < -65  # a uniform-random policy scores about -80
    np.testing.assert_array_equal(normalisation.normalise([0.25, 1.0], "smax", "3m"), [0.25, 1.0])  # win rate as is
    assert math.isnan(float(normalisation.normalise(-10.0, "jax_mpe", "no_such_task")))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["simple_spread", "simple_reference", "simple_speaker_listener"])
def test_normalisation_table_is_what_measure_bounds_measures(task):
    got = measure_bounds("jax_mpe", task)
    b = normalisation.task_bounds("jax_mpe", task)
    assert abs(got["random"] - b.random) < 3 * got["random_sem"] + 0.05, got
    assert abs(got["reference"] - b.reference) < 3 * got["reference_sem"] + 0.05, got


# --------------------------------------------------------------------------------------------
# loading a study


def test_load_scores_lists_every_unused_run_with_a_reason(tmp_path):
    study = tmp_path / "s"
    write_synthetic_study(study, ["marpo", "mappo"], [("jax_mpe", "simple_spread"), ("smax", "3m")], seeds=3)
    # a run on another reward scale, and a duplicate seed with a shorter budget
    for spec, extra in ((RunSpec("mappo", "jax_mpe", "simple_spread", 7, 200_000), {"reward_scale": "agent_mean"}),
                        (RunSpec("mappo", "jax_mpe", "simple_spread", 0, 100_000), {})):
        path = store.run_dir(tmp_path, "s", spec.run_id)
        store.write_metrics(path, _rows(spec, np.random.default_rng(0)))
        store.write_run_json(path, _record(spec, **extra))
    data = load_scores(study, last_k=2)
    reasons = {(e.algo, e.seed, e.status): e.reason for e in data.excluded}
    assert "reward scale agent_mean differs from team_sum" in reasons[("mappo", 7, "complete")]
    assert "duplicate of seed 0" in reasons[("mappo", 0, "complete")]
    assert any(s == "failed" for _, _, s in reasons) and any(s == "interrupted" for _, _, s in reasons)
    assert data.algos == ["marpo", "mappo"] and data.agg_tasks == ["jax_mpe:simple_spread", "smax:3m"]
    spread = data.task("jax_mpe:simple_spread")
    assert [r.seed for r in spread.runs["mappo"]] == [0, 1, 2] and spread.budget == 200_000
    r = spread.runs["mappo"][1]
    assert r.final_raw == pytest.approx(r.raw[-2:].mean())  # last K = 2 evaluation points
    assert len(data.clipped()) == 1 and data.clipped()[0].final_score > 1
    assert all(0 <= v <= 1 for arrs in data.final_scores().values() for a in arrs for v in a)


def test_runs_with_different_overrides_on_one_task_are_separate_variants(tmp_path):
    study = tmp_path / "s"
    write_synthetic_study(study, ["marpo"], [("jax_mpe", "simple_spread")], seeds=2, incomplete=False)
    spec = RunSpec("marpo", "jax_mpe", "simple_spread", 0, 200_000, (("clip", "0.1"),))
    path = store.run_dir(tmp_path, "s", spec.run_id)
    store.write_metrics(path, _rows(spec, np.random.default_rng(0)))
    store.write_run_json(path, _record(spec, overrides=[["clip", "0.1"]]))
    data = load_scores(study)
    assert data.algos == ["marpo", "marpo[clip=0.1]"]
    assert not data.excluded


def test_analyse_end_to_end_small(tmp_path):
    study = tmp_path / "s"
    write_synthetic_study(study, ["marpo", "mappo", "qmix"], [("jax_mpe", "simple_spread"), ("smax", "3m")], seeds=4)
    res = analyse(study, reps=500, baseline="mappo")
    assert res.data.algos == ["marpo", "qmix", "mappo"]
    assert res.poi_pairs == [("marpo", "mappo"), ("qmix", "mappo"), ("marpo", "qmix")]
    assert res.aggregates["marpo"]["IQM"].point > res.aggregates["qmix"]["IQM"].point  # synthetic skills
    assert res.poi[("marpo", "qmix")].point > 0.5
    assert set(res.task_curves) == {"jax_mpe:simple_spread", "smax:3m"}
    assert res.curve["marpo"].point.shape == (21,) and res.curve["marpo"].x[-1] == 200_000
    assert len(res.summary) == 6 and all(len(s.seeds) == 4 for s in res.summary)
    again = analyse(study, reps=500, baseline="mappo")
    assert again.aggregates == res.aggregates and again.poi == res.poi  # same seed, same CIs
    scores = {a: np.stack(v, axis=1) for a, v in res.data.final_scores(clip=True).items()}
    ref = oracle.rliable_aggregate_estimates(scores, reps=50)  # rliable itself on the same scores: same points
    for a in res.data.algos:
        for m in S.METRIC_NAMES:
            assert ref[a][m].point == pytest.approx(res.aggregates[a][m].point)
    for (a, b), e in res.poi.items():
        assert oracle.rliable_probability_of_improvement(scores[a], scores[b], reps=50).point == pytest.approx(e.point)


def test_first_crossing_interpolates_between_grid_points_and_says_never():
    x = np.array([0.0, 100.0, 200.0, 300.0])
    y = np.array([0.0, 0.2, 0.6, 0.7])
    assert S.first_crossing(x, y, 0.4) == pytest.approx(150.0)  # halfway from 0.2 to 0.6
    assert S.first_crossing(x, y, 0.0) == 0.0
    assert S.first_crossing(x, y, 0.7) == pytest.approx(300.0)
    assert math.isnan(S.first_crossing(x, y, 0.71))


def test_reach_baseline_reads_the_bands_and_gives_the_sample_ratio():
    x = np.linspace(0, 1000, 11)
    base = S.Band(x, np.linspace(0, 0.5, 11), np.linspace(0, 0.45, 11), np.linspace(0, 0.55, 11))
    fast = S.Band(x, np.linspace(0, 1.0, 11), np.linspace(0, 0.8, 11), np.linspace(0, 1.25, 11))
    r = S.reach_baseline({"mappo": base, "marpo": fast}, "mappo", seconds_per_step={"mappo": 0.01, "marpo": 0.03})
    assert r["mappo"].steps == pytest.approx(1000) and r["mappo"].steps_ratio == pytest.approx(1.0)
    assert r["marpo"].target == pytest.approx(0.5) and r["marpo"].steps == pytest.approx(500)
    assert r["marpo"].steps_ratio == pytest.approx(0.5)  # "needs 0.5x mappo's env steps"
    assert r["marpo"].early == pytest.approx(400) and r["marpo"].late == pytest.approx(625)
    assert r["marpo"].seconds == pytest.approx(15.0) and r["marpo"].seconds_ratio == pytest.approx(1.5)  # 3x slower


def test_reach_targets_the_baselines_final_iqm_not_its_curves_last_point():
    x = np.linspace(0, 1000, 11)
    base = S.Band(x, np.linspace(0, 0.5, 11), np.linspace(0, 0.45, 11), np.linspace(0, 0.55, 11))
    fast = S.Band(x, np.linspace(0, 1.0, 11), np.linspace(0, 0.8, 11), np.linspace(0, 1.25, 11))
    r = S.reach_baseline({"mappo": base, "marpo": fast}, "mappo", target=0.4)  # the aggregate table's IQM
    assert r["mappo"].baseline_steps == pytest.approx(800) and r["marpo"].steps == pytest.approx(400)
    assert r["marpo"].steps_ratio == pytest.approx(0.5)
    never = S.reach_baseline({"mappo": base, "marpo": fast}, "mappo", target=0.6)  # above mappo's curve
    assert never["mappo"].baseline_steps == 1000 and math.isnan(never["mappo"].steps)



def test_a_baseline_at_its_final_iqm_from_step_zero_gives_no_ratio_rather_than_a_division_by_zero():
    x = np.linspace(0, 1000, 11)
    flat = S.Band(x, np.zeros(11), np.zeros(11), np.zeros(11))  # e.g. a win rate stuck at 0
    r = S.reach_baseline({"mappo": flat, "qmix": flat}, "mappo", seconds_per_step={"mappo": 0.01, "qmix": 0.02})
    assert r["qmix"].baseline_steps == 0 and r["qmix"].steps == 0
    assert math.isnan(r["qmix"].steps_ratio) and math.isnan(r["qmix"].seconds_ratio)

def _coarse_study(path: Path, mappo_interval: int) -> None:
    """mappo trained to 20M, evaluated every ``mappo_interval``; marpo to 2M, every 100k: compared at
    2M, the common budget (5 seeds each, on jax_mpe simple_spread)."""
    rng = np.random.default_rng(0)
    bounds = normalisation.task_bounds("jax_mpe", "simple_spread")
    for algo, budget, interval in (("mappo", 20_000_000, mappo_interval), ("marpo", 2_000_000, 100_000)):
        for seed in range(5):
            spec = RunSpec(algo, "jax_mpe", "simple_spread", seed, budget)
            run = path / "runs" / spec.run_id
            run.mkdir(parents=True)
            rows = []
            for st in range(0, budget + 1, interval):
                progress = min(st / 1_000_000, 1.0)  # random at 0, learned from 1M on
                rows.append({"env_steps": st, "wall_seconds": st / 1e4, "eval_episodes": 32,
                             "eval_return_mean": bounds.random + (bounds.reference - bounds.random)
                             * (0.7 * progress + rng.normal(0, 0.01))})
            store.write_metrics(run, rows)
            store.write_run_json(run, _record(spec))


def test_a_coarsely_evaluated_long_run_cut_to_a_common_budget_uses_only_points_near_its_end(tmp_path):
    """Every 1M of a 20M run, compared at 2M: its points at or before 2M are 0, 1M, 2M. The final
    score is the 2M point alone (the window is the last 10% of the budget), never a mean reaching
    back to the random policy at step 0."""
    study = tmp_path / "coarse"
    _coarse_study(study, 1_000_000)
    res = analyse(study, reps=500)
    td = res.data.task("jax_mpe:simple_spread")
    assert td.budget == 2_000_000
    for r in td.runs["mappo"]:
        assert r.final_raw == pytest.approx(float(r.raw[r.steps == 2_000_000][0]))
    mappo = float(np.mean([r.final_score for r in td.runs["mappo"]]))
    assert mappo == pytest.approx(0.7, abs=0.02)  # the old rule (mean of 0, 1M, 2M) read about 0.47
    assert any("only 1 evaluation point(s) in the last 10%" in n and "mappo" in n for n in res.notes)
    # at 25% of the budget (500k) mappo has no evaluation in the window before it: no P there, and why
    assert ("mappo" not in {a for p in res.poi_at[0.25] for a in p}) and any("at 25% of the budget" in n
                                                                              for n in res.notes)


def test_a_long_run_with_no_evaluation_near_the_common_budget_is_refused_with_the_reason(tmp_path):
    """Every 3M of a 20M run: nothing between 0 and 3M, so at 2M it has no final score."""
    study = tmp_path / "coarser"
    _coarse_study(study, 3_000_000)
    res = analyse(study, reps=500)
    assert "mappo" not in res.data.task("jax_mpe:simple_spread").runs
    reasons = {e.reason for e in res.data.excluded if e.algo == "mappo"}
    assert len(reasons) == 1 and "no evaluation in the last 10% of the common budget 2,000,000" in reasons.pop()


# --------------------------------------------------------------------------------------------
# each comparison at the budget both of its algorithms ran


def _hand_runs(path: Path, algo: str, task: str, budget: int, steps: list[int], level: float, seeds: int = 5) -> None:
    """``seeds`` runs of ``algo`` on jax_mpe ``task`` to ``budget``, evaluated at ``steps``, their
    normalised score rising linearly to ``level`` at 3M env steps (then flat)."""
    rng = np.random.default_rng(len(algo) + budget)
    bounds = normalisation.task_bounds("jax_mpe", task)
    for seed in range(seeds):
        spec = RunSpec(algo, "jax_mpe", task, seed, budget)
        run = path / "runs" / spec.run_id
        run.mkdir(parents=True)
        rows = [{"env_steps": st, "wall_seconds": st / 1e4, "eval_episodes": 32,
                 "eval_return_mean": bounds.random + (bounds.reference - bounds.random)
                 * (level * min(st / 3_000_000, 1.0) + rng.normal(0, 0.01))} for st in steps]
        store.write_metrics(run, rows)
        store.write_run_json(run, _record(spec))


def test_each_comparison_uses_the_budget_both_its_algorithms_ran_not_the_tasks_smallest(tmp_path):
    """MARPO and MAPPO to 3M, QMix to 2M on one task: the aggregate table is cut to 2M (every
    algorithm), MARPO vs MAPPO is compared at 3M, QMix vs MAPPO at 2M with MAPPO's runs scored by
    the window before 2M, and the page says so."""
    study = tmp_path / "budgets"
    for algo, level in (("marpo", 0.8), ("mappo", 0.6)):
        _hand_runs(study, algo, "simple_spread", 3_000_000, list(range(0, 3_000_001, 150_000)), level)
    _hand_runs(study, "qmix", "simple_spread", 2_000_000, list(range(0, 2_000_001, 100_000)), 0.5)
    res = analyse(study, reps=500)
    key = "jax_mpe:simple_spread"
    assert res.data.task(key).budget == 2_000_000
    assert any("each comparison of two algorithms, the budget both ran" in n for n in res.notes)
    by = {c.algo: c for c in res.comparisons if c.group == "all"}
    marpo, qmix = by["marpo"], by["qmix"]
    assert marpo.budgets == {key: 3_000_000} and not marpo.cut and not marpo.left_out
    # the window before 3M holds 2.7M, 2.85M and 3M: 0.95 of each level on average
    assert marpo.iqm.point == pytest.approx(0.76, abs=0.02)
    assert marpo.iqm_baseline.point == pytest.approx(0.57, abs=0.02)
    assert qmix.budgets == {key: 2_000_000}  # before 2M, mappo's 1.8M and 1.95M points: 0.625 of its 0.6
    assert qmix.iqm_baseline.point == pytest.approx(0.375, abs=0.02)
    assert qmix.cut == {key: "mappo's runs trained to 3,000,000 and are scored on their evaluations in the last 10% "
                             "before 2,000,000"}
    from marpo_bench.report.verdict import headline, notes, table

    assert headline(res).startswith(f"marpo vs mappo, aggregated over 1 task ({key}) at 3,000,000 env steps")
    assert [(r.comparison, r.budget) for r in table(res)] == [("qmix vs mappo", "2M")]
    assert any(n.startswith(f"qmix vs mappo: {key}: mappo's runs trained to 3,000,000") for n in notes(res))


def test_a_task_without_evaluations_near_the_budget_both_ran_is_left_out_of_that_comparison_with_the_reason(tmp_path):
    """MAPPO to 6M evaluated every 1.5M after 1.5M: QMix (1M) is compared with it on spread, but
    MARPO (2M) is not (nothing of MAPPO's between 1.7M and 2M), and MARPO vs MAPPO says so while
    keeping the task both ran normally."""
    study = tmp_path / "coarse-pairs"
    _hand_runs(study, "mappo", "simple_spread", 6_000_000, [0, 500_000, 1_000_000, 1_500_000, 3_000_000,
                                                            4_500_000, 6_000_000], 0.6)
    _hand_runs(study, "marpo", "simple_spread", 2_000_000, list(range(0, 2_000_001, 100_000)), 0.8)
    _hand_runs(study, "qmix", "simple_spread", 1_000_000, list(range(0, 1_000_001, 50_000)), 0.5)
    for algo, level in (("marpo", 0.8), ("mappo", 0.6)):
        _hand_runs(study, algo, "simple_reference", 2_000_000, list(range(0, 2_000_001, 100_000)), level)
    res = analyse(study, reps=500)
    by = {c.algo: c for c in res.comparisons if c.group == "all"}
    why = "mappo has runs with no evaluation in the last 10% of 2,000,000 env steps, the budget both ran"
    assert by["marpo"].tasks == ["jax_mpe:simple_reference"]
    assert by["marpo"].left_out == {"jax_mpe:simple_spread": why}
    assert by["qmix"].tasks == ["jax_mpe:simple_spread"] and by["qmix"].budgets == {"jax_mpe:simple_spread": 1_000_000}
    from marpo_bench.report.verdict import headline

    line = headline(res)
    assert line.startswith("marpo vs mappo, aggregated over 1 task (jax_mpe:simple_reference) at 2,000,000 env steps")
    assert f"jax_mpe:simple_spread left out: {why}" in line
