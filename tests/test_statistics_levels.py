"""Bootstrap statistics whose answers are known: the confidence level of an interval is the one asked
for, and resampling is stratified by task (runs are redrawn within their task, never across)."""

from __future__ import annotations

import numpy as np
import pytest

from marpo_bench import stats as S

# 200 runs of one task, evenly spread on [0, 1]: the bootstrap distribution of their mean is normal
# to within Monte-Carlo error, with standard error sigma / sqrt(n) (sigma: the population std).
X = np.linspace(0.0, 1.0, 200)
SE = X.std() / np.sqrt(X.size)


@pytest.mark.parametrize(("confidence", "z"), [(None, 1.959964), (0.95, 1.959964), (0.90, 1.644854)])
def test_aggregate_interval_has_the_requested_level(confidence, z):
    kwargs = {} if confidence is None else {"confidence": confidence}  # None: the default, 95%
    est = S.aggregate_estimates({"a": [X]}, reps=20_000, seed=0, **kwargs)["a"]["Mean"]
    assert est.point == pytest.approx(0.5)
    # each end lies z standard errors from the mean: 1.96 at 95%, 1.645 at 90% (20,000 resamples:
    # the ends' Monte-Carlo error is ~0.02 s.e.; 90% and 95% ends are 0.32 s.e. apart)
    assert (est.hi - est.point) / SE == pytest.approx(z, abs=0.06)
    assert (est.point - est.lo) / SE == pytest.approx(z, abs=0.06)


@pytest.mark.parametrize(("confidence", "z"), [(0.95, 1.959964), (0.90, 1.644854)])
def test_mean_band_has_the_requested_level(confidence, z):
    band = S.mean_band(X[:, None], np.zeros(1), 20_000, confidence, np.random.default_rng(1))
    assert (band.hi[0] - band.point[0]) / SE == pytest.approx(z, abs=0.06)
    assert (band.point[0] - band.lo[0]) / SE == pytest.approx(z, abs=0.06)


# Two tasks: 3 runs scoring 0 on the first, 5 runs scoring 1 on the second. Resampled within each
# task, every resample is again three 0s and five 1s: IQM = mean of the middle four of
# [0, 0, 0, 1, 1, 1, 1, 1] = (0 + 1 + 1 + 1) / 4 = 0.75, with no spread at all. Resampled across
# tasks, the number of 0s varies and so does the IQM.
TASKS = [np.zeros(3), np.ones(5)]


def test_iqm_curve_bands_resample_runs_within_each_task():
    curves = [np.zeros((3, 4)), np.ones((5, 4))]  # 4 curve points, the same at each
    band = S.iqm_curves({"a": curves}, np.arange(4), reps=2_000)["a"]
    np.testing.assert_allclose(band.point, 0.75)
    np.testing.assert_allclose(band.lo, 0.75)
    np.testing.assert_allclose(band.hi, 0.75)


def test_aggregate_intervals_resample_runs_within_each_task():
    est = S.aggregate_estimates({"a": TASKS}, reps=2_000)["a"]
    assert (est["IQM"].point, est["IQM"].lo, est["IQM"].hi) == pytest.approx((0.75, 0.75, 0.75))
    # Mean = mean of task means (0 + 1) / 2 = 0.5 in every resample
    assert (est["Mean"].point, est["Mean"].lo, est["Mean"].hi) == pytest.approx((0.5, 0.5, 0.5))


def test_performance_profile_bands_resample_runs_within_each_task():
    prof = S.performance_profiles({"a": TASKS}, np.array([0.5]), reps=2_000)["a"]
    # fraction of runs above 0.5: 5 / 8 in every stratified resample
    assert (prof.point[0], prof.lo[0], prof.hi[0]) == pytest.approx((5 / 8, 5 / 8, 5 / 8))
