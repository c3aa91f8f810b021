"""Test-only: rliable 1.2.0 itself, the oracle the statistics engine (``marpo_bench.stats``) is
checked against. rliable ignores ``random_state`` (its stratified bootstrap draws from the global
``np.random``), so these functions seed the global generator and restore its state afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import numpy as np

from marpo_bench.stats import METRIC_NAMES, Estimate


@contextlib.contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed the global ``np.random`` for the duration, then restore its previous state: rliable's
    bootstrap draws from the global generator whatever ``random_state`` says (docs/algorithms.md, pitfalls)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _rliable_all_metrics(scores: np.ndarray) -> np.ndarray:
    from rliable import metrics

    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_median(scores),
                     metrics.aggregate_mean(scores), metrics.aggregate_optimality_gap(scores)])


def rliable_aggregate_estimates(
    score_dict: Mapping[str, np.ndarray], reps: int = 50_000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, dict[str, Estimate]]:
    """:func:`aggregate_estimates` computed by rliable's ``get_interval_estimates`` (slow; the
    reference). Scores must be ``(runs, tasks)`` arrays."""
    from rliable import library

    with seeded_global_numpy(seed):
        points, cis = library.get_interval_estimates(
            {k: np.asarray(v, dtype=np.float64) for k, v in score_dict.items()}, _rliable_all_metrics,
            reps=reps, confidence_interval_size=confidence)
    return {k: {m: Estimate(float(points[k][i]), float(cis[k][0, i]), float(cis[k][1, i]))
                for i, m in enumerate(METRIC_NAMES)} for k in points}


def rliable_probability_of_improvement(
    scores_x: np.ndarray, scores_y: np.ndarray, reps: int = 50_000, confidence: float = 0.95, seed: int = 0,
) -> Estimate:
    """:func:`probability_of_improvement` computed by rliable (about 4 s per 2,000 reps here)."""
    from rliable import library, metrics

    with seeded_global_numpy(seed):
        points, cis = library.get_interval_estimates(
            {"pair": [np.asarray(scores_x, np.float64), np.asarray(scores_y, np.float64)]},
            metrics.probability_of_improvement, reps=reps, confidence_interval_size=confidence)
    return Estimate(float(points["pair"]), float(np.ravel(cis["pair"])[0]), float(np.ravel(cis["pair"])[1]))
