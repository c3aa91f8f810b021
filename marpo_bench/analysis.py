"""Analysis of a study: per-task normalised scores and rliable-style statistics with bootstrap CIs.

The pipeline (``docs/algorithms.md``, "Comparison pitfalls")::

    store.load_study -> load_scores: complete runs only (the rest are listed, never dropped silently),
                        one task = (env family, task), common budget, final score = mean of the
                        last K evaluation points, scores normalised with the family's bounds
                     -> analyse: IQM / mean / median / optimality gap with stratified-bootstrap CIs,
                        probability of improvement, performance profiles, sample-efficiency curves

Statistics have two implementations with one small API each, shaped like rliable's:

- the fast path (:func:`aggregate_estimates`, :func:`probability_of_improvement`,
  :func:`performance_profiles`, :func:`iqm_curves`) draws every bootstrap resample at once as a
  matrix of resampling *counts* (reps x runs, stratified by task) from its own
  ``numpy.random.Generator``, and evaluates each statistic for all resamples with a few array
  operations: the IQM as a count-weighted trimmed mean over the sorted scores, the probability of
  improvement as the Mann-Whitney statistic ``w_x^T C w_y`` with ``C[i, k] = [x_i > y_k] +
  [x_i == y_k] / 2``. Same estimators, same percentile intervals as rliable, ~1000x faster.
- the reference path (:func:`rliable_aggregate_estimates`, :func:`rliable_probability_of_improvement`)
  calls rliable 1.2.0 itself. rliable ignores ``random_state`` (its stratified bootstrap draws from
  the global ``np.random``), so these functions seed the global generator and restore its state
  afterwards (:func:`seeded_global_numpy`). The tests check that both paths agree within
  Monte-Carlo error.

Scores are given per algorithm either as a ``(runs, tasks)`` array (rliable's layout) or as a list
of one 1-D array per task (tasks may then have different numbers of runs; the fast path only).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marpo_bench import registry, store
from marpo_bench.envs.base import TaskBounds
from marpo_bench.envs.mpe import ORACLE_STRATEGIES
from marpo_bench.normalisation import study_bounds

# --------------------------------------------------------------------------------------------
# score normalisation


def _family(env: str) -> Any:
    """The registered env family ``env`` (None for a family not installed here, e.g. a plugin's
    runs read on another machine: scored as raw returns)."""
    return registry.env_families().get(env)


def score_kind(env: str) -> str:
    """How a family's runs are scored: ``"win_rate"`` or ``"return"`` (its ``EnvFamily.score``)."""
    fam = _family(env)
    return fam.score if fam is not None else "return"


def task_bounds(env: str, task: str) -> TaskBounds | None:
    """The normalisation bounds of a return-scored task, from its family's declaration (or None)."""
    fam = _family(env)
    return fam.bounds.get(task) if fam is not None and fam.score == "return" else None


def normalisation_table() -> dict[tuple[str, str], TaskBounds]:
    """Every registered task's bounds, keyed by ``(env family, task)``. A task is identified by its
    family too: two implementations of one game (mpe and jax_mpe) are measured separately."""
    return {(name, task): b for name, fam in registry.env_families().items() if fam.score == "return"
            for task, b in fam.bounds.items()}


def bounds_measurements() -> dict[str, str]:
    """How each family's bounds were obtained (``EnvFamily.measurement``), one text per distinct text."""
    out: dict[str, str] = {}
    for name, fam in registry.env_families().items():
        if fam.bounds and fam.measurement:
            out.setdefault(fam.measurement, name)
    return {text: name for text, name in out.items()}


def win_rate_families() -> tuple[str, ...]:
    """The registered families scored by evaluation win rate (already in [0, 1])."""
    return tuple(name for name, fam in registry.env_families().items() if fam.score == "win_rate")


def normalise(values: np.ndarray | float, env: str, task: str, bounds: TaskBounds | None = None) -> np.ndarray:
    """Raw final values -> normalised scores (unclipped). Win rates pass through; a return task is
    normalised with ``bounds`` (default: its family's, :func:`task_bounds`) and gives NaN without
    any (the task is then left out of aggregates)."""
    v = np.asarray(values, dtype=np.float64)
    if score_kind(env) == "win_rate":
        return v.copy()
    b = bounds or task_bounds(env, task)
    if b is None:
        return np.full_like(v, np.nan)
    return (v - b.random) / (b.reference - b.random)


# --------------------------------------------------------------------------------------------
# the policies behind the table (measurement only; torch and the envs are imported lazily)


class UniformRandomPolicy:
    """Uniform over each agent's available actions: the table's random-policy score."""

    def __init__(self, seed: int) -> None:
        import torch

        self.gen = torch.Generator().manual_seed(seed)

    def initial_act_state(self, num_envs: int) -> None:
        return None

    def act(self, ts: Any, act_state: Any, deterministic: bool) -> tuple[Any, Any]:
        import torch

        u = torch.rand(ts.avail_actions.shape, generator=self.gen).masked_fill(~ts.avail_actions, -1.0)
        return u.argmax(-1), act_state


# MPE's discrete moves: 0 no-op, 1 -x, 2 +x, 3 -y, 4 +y (PettingZoo's and JaxMARL's encoding).
_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float64)


def _steer(vel: np.ndarray, rel: np.ndarray, coast: float = 0.15) -> np.ndarray:
    """The move whose predicted stopping point is nearest the target (``rel`` = target - position).

    MPE dynamics: ``v' = 0.75 v + 0.5 u`` (damping 0.25, accel 5, dt 0.1); the stopping point is
    approximated by ``0.1 v + coast * v'``; ``coast = 0.15`` was the best of {0, 0.05, ..., 0.6}.
    """
    v1 = vel[..., None, :] * 0.75 + 0.5 * _MOVES
    stop = vel[..., None, :] * 0.1 + coast * v1
    return np.linalg.norm(stop - rel[..., None, :], axis=-1).argmin(-1)


class MPEOracle:
    """A scripted MPE policy that reads everything it needs from the agents' observations (layouts
    of mpe2 / JaxMARL, identical here): the table's reference score. Centralised: it sees all
    agents' observations at once, so the spread assignment is the same for every agent."""

    def __init__(self, task: str) -> None:
        if task not in ORACLE_STRATEGIES:
            raise ValueError(f"no oracle for MPE task {task!r}; valid: {', '.join(ORACLE_STRATEGIES)}")
        self.task = task

    def initial_act_state(self, num_envs: int) -> None:
        return None

    def act(self, ts: Any, act_state: Any, deterministic: bool) -> tuple[Any, Any]:
        import torch

        o = ts.obs.cpu().numpy().astype(np.float64)
        E, N = o.shape[:2]
        rows = np.arange(E)
        if self.task == "simple_spread":  # [vel 2, pos 2, landmarks rel 3x2, others rel 2x2, comm]
            vel, pos = o[:, :, 0:2], o[:, :, 2:4]
            landmarks = o[:, 0, 4:10].reshape(E, 3, 2) + pos[:, 0:1]
            dist = np.linalg.norm(pos[:, :, None] - landmarks[:, None], axis=-1)  # [E, agent, landmark]
            perms = np.array(list(itertools.permutations(range(3))))
            best = perms[dist[:, np.arange(3)[None], perms].sum(-1).argmin(-1)]  # [E, agent] -> landmark
            target = np.take_along_axis(landmarks, best[..., None], 1)
            actions = _steer(vel, target - pos)
        elif self.task == "simple_speaker_listener":  # speaker [goal colour 3]; listener [vel, lm 3x2, comm 3]
            actions = np.zeros((E, N), dtype=np.int64)
            actions[:, 0] = o[:, 0, 0:3].argmax(-1)
            vel, landmarks, comm = o[:, 1, 0:2], o[:, 1, 2:8].reshape(E, 3, 2), o[:, 1, 8:11]
            heard = comm.max(-1) > 0.5
            target = np.where(heard[:, None], landmarks[rows, comm.argmax(-1)], landmarks.mean(1))
            actions[:, 1] = _steer(vel, target)
        else:  # simple_reference: [vel 2, landmarks rel 3x2, other's goal colour 3, other's comm 10]
            vel, landmarks = o[:, :, 0:2], o[:, :, 2:8].reshape(E, N, 3, 2)
            say, comm = o[:, :, 8:11].argmax(-1), o[:, :, 11:21]
            heard = comm.max(-1) > 0.5
            goal = comm.argmax(-1).clip(0, 2)
            target = np.where(heard[..., None], landmarks[rows[:, None], np.arange(N)[None], goal],
                              landmarks.mean(2))
            actions = 5 * say + _steer(vel, target)
        return torch.as_tensor(actions, dtype=torch.long), act_state


def measure_bounds(env: str, task: str, episodes: int = 512, seed: int = 123) -> dict[str, float]:
    """Re-measure a row of the MPE families' bounds with the suite's own evaluation: the uniform-random
    policy (sampled) and the scripted oracle (deterministic), one episode per parallel env.
    Returns mean and standard error of both. Needs the env backend (slow: seconds per task)."""
    from marpo_bench.envs import make_env
    from marpo_bench.train import evaluate

    vec = make_env(env, task, episodes)
    out: dict[str, float] = {}
    for name, policy, det in (("random", UniformRandomPolicy(0), False), ("reference", MPEOracle(task), True)):
        res = evaluate(policy, vec, seed=seed, deterministic=det)
        out[name] = res["eval_return_mean"]
        out[f"{name}_sem"] = res["eval_return_std"] / math.sqrt(res["eval_episodes"])
    return out


# --------------------------------------------------------------------------------------------
# statistics: shared helpers

METRIC_NAMES: tuple[str, ...] = ("IQM", "Median", "Mean", "Optimality gap")
"""Aggregate metrics, in rliable's order of presentation."""

Scores = np.ndarray | Sequence[np.ndarray]
"""One algorithm's scores: ``(runs, tasks)`` array, or one 1-D array of runs per task."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval ``[lo, hi]``."""

    point: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.point:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


@dataclass(frozen=True)
class Band:
    """A curve (one value per x) with pointwise bootstrap confidence bands."""

    x: np.ndarray
    point: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _tasks(scores: Scores) -> list[np.ndarray]:
    """Scores in either layout -> list of per-task 1-D float arrays (each non-empty, finite)."""
    if isinstance(scores, np.ndarray):
        if scores.ndim != 2:
            raise ValueError(f"scores must be a (runs, tasks) array, got shape {scores.shape}")
        cols = [scores[:, j] for j in range(scores.shape[1])]
    else:
        cols = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    cols = [np.asarray(c, dtype=np.float64) for c in cols]
    if not cols or any(c.size == 0 for c in cols):
        raise ValueError("scores need at least one task with at least one run each")
    if any(not np.isfinite(c).all() for c in cols):
        raise ValueError("scores must be finite (drop or fix NaN runs first)")
    return cols


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for one statistic of one algorithm (or pair): reproducible, and independent of
    which other algorithms are in the study (keys are names, not positions)."""
    return np.random.default_rng(np.random.SeedSequence([seed, *(zlib.crc32(k.encode()) for k in keys)]))


def stratified_counts(rng: np.random.Generator, sizes: Sequence[int], reps: int) -> np.ndarray:
    """``(reps, sum(sizes))`` resampling counts: for each task independently, how often each of its
    runs is drawn when its ``n`` runs are resampled ``n`` times with replacement (rliable's
    stratified bootstrap over runs). Float64, so it feeds straight into matrix products."""
    blocks = []
    for n in sizes:
        idx = rng.integers(0, n, size=(reps, n)) + (np.arange(reps)[:, None] * n)
        blocks.append(np.bincount(idx.ravel(), minlength=reps * n).reshape(reps, n))
    return np.concatenate(blocks, axis=1).astype(np.float64)


def _percentile_ci(boot: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, as arch's ``conf_int(method="percentile")`` (rliable)."""
    alpha = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(boot, [alpha, 100.0 - alpha], axis=0)
    return lo, hi


def _weighted_trimmed_mean(x: np.ndarray, weights: np.ndarray, cut: float = 0.25,
                           dtype: type = np.float64, budget: int = 2_000_000) -> np.ndarray:
    """scipy's ``trim_mean(sample, cut, axis=None)`` of every resample at once.

    ``x`` is ``(n,)`` or ``(n, G)`` (G curves' points, each trimmed separately); row ``r`` of
    ``weights`` (``(reps, n)``, rows summing to ``n``) counts how often each of the ``n`` elements
    appears in resample ``r``. Sorted once per column; each element keeps the part of its run of
    copies that falls inside the kept sorted positions ``[int(cut * n), n - int(cut * n))``.
    Works in row chunks of about ``budget`` elements (cache-sized); ``dtype=np.float32`` halves the
    memory traffic for bootstrap resamples (error ~1e-7), point estimates use float64.
    Returns ``(reps,)`` or ``(reps, G)``.
    """
    x2 = np.asarray(x, dtype=np.float64)
    x2 = x2[:, None] if x2.ndim == 1 else x2
    n, g = x2.shape
    lo = int(cut * n)
    hi = n - lo
    order = np.argsort(x2, axis=0, kind="stable")
    xs = np.take_along_axis(x2, order, 0).astype(dtype)
    w_all = weights.astype(dtype, copy=False)
    out = np.empty((weights.shape[0], g))
    chunk = max(1, budget // (n * g))
    for s in range(0, weights.shape[0], chunk):
        w = w_all[s:s + chunk][:, order]  # (rows, n, G)
        end = np.cumsum(w, axis=1)
        start = end - w
        np.minimum(end, hi, out=end)
        np.maximum(start, lo, out=start)
        end -= start
        np.maximum(end, 0, out=end)
        out[s:s + chunk] = np.einsum("rng,ng->rg", end, xs)
    out /= hi - lo
    return out[:, 0] if np.ndim(x) == 1 else out


def _aggregates(x: np.ndarray, sizes: Sequence[int], weights: np.ndarray) -> np.ndarray:
    """``(rows, 4)`` IQM, median, mean, optimality gap for each row of resampling counts over the
    concatenated per-task runs ``x``: rliable's definitions (median and mean of per-task means;
    IQM and optimality gap over all runs pooled; gap threshold 1)."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    task_means = np.add.reduceat(weights * x, starts, axis=1) / np.asarray(sizes, dtype=np.float64)
    return np.stack([
        _weighted_trimmed_mean(x, weights, dtype=np.float64 if weights.shape[0] == 1 else np.float32),
        np.median(task_means, axis=1),
        task_means.mean(axis=1),
        1.0 - weights @ np.minimum(x, 1.0) / x.size,
    ], axis=1)


# --------------------------------------------------------------------------------------------
# statistics: the fast path


def aggregate_estimates(
    score_dict: Mapping[str, Scores], reps: int = 50_000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, dict[str, Estimate]]:
    """IQM, median, mean and optimality gap of each algorithm with stratified-bootstrap percentile
    CIs: rliable's ``get_interval_estimates`` with those four metrics, vectorised."""
    out: dict[str, dict[str, Estimate]] = {}
    for name, scores in score_dict.items():
        tasks = _tasks(scores)
        sizes = [t.size for t in tasks]
        x = np.concatenate(tasks)
        point = _aggregates(x, sizes, np.ones((1, x.size)))[0]
        boot = _aggregates(x, sizes, stratified_counts(_rng(seed, "aggregate", name), sizes, reps))
        lo, hi = _percentile_ci(boot, confidence)
        out[name] = {m: Estimate(float(point[i]), float(lo[i]), float(hi[i])) for i, m in enumerate(METRIC_NAMES)}
    return out


def _poi_terms(xt: list[np.ndarray], yt: list[np.ndarray]) -> list[np.ndarray]:
    """Per task, ``C[i, k] = [x_i > y_k] + [x_i == y_k] / 2`` (Mann-Whitney U kernel)."""
    if len(xt) != len(yt):
        raise ValueError(f"probability of improvement needs the same tasks: {len(xt)} vs {len(yt)}")
    return [(x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :]) for x, y in zip(xt, yt, strict=True)]


def probability_of_improvement(
    scores_x: Scores, scores_y: Scores, reps: int = 50_000, confidence: float = 0.95, seed: int = 0,
    key: str = "",
) -> Estimate:
    """P(X > Y): the probability that a run of X beats a run of Y on a task, averaged over tasks,
    with stratified independent bootstrap CIs (rliable's ``probability_of_improvement`` metric).
    ``key`` (e.g. ``"marpo>mappo"``) selects the random stream."""
    xt, yt = _tasks(scores_x), _tasks(scores_y)
    kernels = _poi_terms(xt, yt)
    point = float(np.mean([c.mean() for c in kernels]))
    wx = stratified_counts(_rng(seed, "poi-x", key), [x.size for x in xt], reps)
    wy = stratified_counts(_rng(seed, "poi-y", key), [y.size for y in yt], reps)
    boot = np.zeros(reps)
    i = j = 0
    for c in kernels:
        n, m = c.shape
        boot += np.einsum("ri,ri->r", wx[:, i:i + n] @ c, wy[:, j:j + m]) / (n * m)
        i, j = i + n, j + m
    boot /= len(kernels)
    lo, hi = _percentile_ci(boot, confidence)
    return Estimate(point, float(lo), float(hi))


def pairwise_poi(
    score_dict: Mapping[str, Scores], pairs: Sequence[tuple[str, str]], reps: int = 50_000,
    confidence: float = 0.95, seed: int = 0,
) -> dict[tuple[str, str], Estimate]:
    """:func:`probability_of_improvement` for each ``(x, y)`` in ``pairs``."""
    return {(a, b): probability_of_improvement(score_dict[a], score_dict[b], reps, confidence, seed, f"{a}>{b}")
            for a, b in pairs}


def performance_profiles(
    score_dict: Mapping[str, Scores], taus: np.ndarray, reps: int = 50_000, confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Band]:
    """Score distributions: the fraction of all runs (pooled over tasks) scoring above each
    threshold tau, with stratified-bootstrap bands (rliable's ``create_performance_profile``)."""
    taus = np.asarray(taus, dtype=np.float64)
    out: dict[str, Band] = {}
    for name, scores in score_dict.items():
        tasks = _tasks(scores)
        x = np.concatenate(tasks)
        above = (x[:, None] > taus[None, :]).astype(np.float64)
        w = stratified_counts(_rng(seed, "profile", name), [t.size for t in tasks], reps)
        lo, hi = _percentile_ci(w @ above / x.size, confidence)
        out[name] = Band(taus, above.mean(axis=0), lo, hi)
    return out


def iqm_curves(
    curve_dict: Mapping[str, Sequence[np.ndarray]], x: np.ndarray, reps: int = 50_000,
    confidence: float = 0.95, seed: int = 0, key: str = "",
) -> dict[str, Band]:
    """Sample-efficiency curves: IQM over all runs of all tasks at each x (env steps), with
    pointwise stratified-bootstrap bands. ``curve_dict[algo]`` holds one ``(runs, len(x))`` array
    per task. One resample of runs is used for the whole curve, so the bands are consistent."""
    out: dict[str, Band] = {}
    for name, per_task in curve_dict.items():
        arrs = [np.asarray(a, dtype=np.float64) for a in per_task]
        sizes = [a.shape[0] for a in arrs]
        allruns = np.concatenate(arrs, axis=0)  # (N, G)
        if not np.isfinite(allruns).all():
            raise ValueError(f"curves of {name} contain NaN")
        w = stratified_counts(_rng(seed, "curve", key, name), sizes, reps)
        point = _weighted_trimmed_mean(allruns, np.ones((1, allruns.shape[0])))[0]
        boot = _weighted_trimmed_mean(allruns, w, dtype=np.float32)
        lo, hi = _percentile_ci(boot, confidence)
        out[name] = Band(np.asarray(x), point, lo, hi)
    return out


def first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """The first x at which the curve ``y(x)`` reaches ``target``, linearly interpolated between
    grid points; NaN when it never does."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    hit = np.flatnonzero(y >= target - 1e-9 * max(1.0, abs(target)))  # a curve ending at its target reaches it
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))


@dataclass
class Reach:
    """Sample efficiency against the baseline: the env steps at which an algorithm's aggregate
    IQM curve first reaches the baseline's final IQM (``target``), and the same for the baseline's
    own curve (``baseline_steps``; the budget when its curve ends below its final IQM). ``early`` and
    ``late`` are where the curve's upper and lower CI band reach it (a band-crossing interval, not a
    bootstrap CI of the crossing). ``steps_ratio`` = steps / baseline_steps: "needs 1.10x the
    baseline's env steps" (below 1: fewer). Seconds: the steps at each algorithm's mean wall-clock
    seconds per env step (training and evaluation, from its runs' metrics)."""

    target: float
    steps: float
    early: float
    late: float
    budget: int
    baseline_steps: float
    seconds_per_step: float = math.nan
    baseline_seconds_per_step: float = math.nan

    @property
    def steps_ratio(self) -> float:
        return self.steps / self.baseline_steps if self.baseline_steps > 0 else math.nan

    @property
    def seconds(self) -> float:
        return self.steps * self.seconds_per_step

    @property
    def seconds_ratio(self) -> float:
        return self.seconds / (self.baseline_steps * self.baseline_seconds_per_step)


def reach_baseline(curves: Mapping[str, Band], baseline: str, target: float | None = None,
                   seconds_per_step: Mapping[str, float] | None = None) -> dict[str, Reach]:
    """:class:`Reach` of every algorithm's aggregate IQM curve against ``target``, the baseline's
    final IQM (default: its curve's last point)."""
    base = curves[baseline]
    budget = int(base.x[-1])
    target = float(base.point[-1]) if target is None else float(target)
    own = first_crossing(base.x, base.point, target)
    own = float(budget) if math.isnan(own) else own
    rate = dict(seconds_per_step or {})
    return {a: Reach(target, first_crossing(b.x, b.point, target), first_crossing(b.x, b.hi, target),
                     first_crossing(b.x, b.lo, target), budget, own, rate.get(a, math.nan),
                     rate.get(baseline, math.nan)) for a, b in curves.items()}


def mean_band(values: np.ndarray, x: np.ndarray, reps: int, confidence: float, rng: np.random.Generator) -> Band:
    """Mean over runs (rows of ``values``, one column per x) with bootstrap percentile bands."""
    values = np.asarray(values, dtype=np.float64)
    w = stratified_counts(rng, [values.shape[0]], reps)
    lo, hi = _percentile_ci(w @ values / values.shape[0], confidence)
    return Band(np.asarray(x), values.mean(axis=0), lo, hi)


# --------------------------------------------------------------------------------------------
# statistics: the reference path (rliable itself)


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


# --------------------------------------------------------------------------------------------
# loading a study


class AnalysisError(ValueError):
    """A one-line, user-facing reason why a study cannot be analysed."""


@dataclass
class RunScore:
    """One complete run as the statistics see it."""

    run_id: str
    algo: str  # the label (algo, or algo[overrides] when one task mixes override sets)
    env: str
    task: str
    seed: int
    final_raw: float  # mean of the last K eval points at the common budget (return or win rate)
    final_score: float  # normalised, unclipped (NaN when the task has no bounds)
    final_steps: int  # env steps of the last point used
    wall_seconds: float
    steps: np.ndarray  # env steps of the points kept (common prefix)
    raw: np.ndarray  # values at those points
    seconds_per_step: float = math.nan  # wall-clock seconds per env step over the whole run (training + evaluation)


@dataclass
class Excluded:
    """A run the statistics do not use, and why (shown in the report, never dropped silently)."""

    run_id: str
    algo: str
    env: str
    task: str
    seed: Any
    status: str
    reason: str
    env_steps: Any = None


@dataclass
class TaskData:
    """All used runs of one task, ``(env family, task)``."""

    env: str
    task: str
    kind: str  # "return" | "win_rate"
    bounds: TaskBounds | None
    budget: int  # common budget: the smallest budget of its runs
    budgets: list[int]  # distinct budgets of its runs
    runs: dict[str, list[RunScore]]  # algo -> runs sorted by seed

    @property
    def key(self) -> str:
        return f"{self.env}:{self.task}"

    @property
    def normalisable(self) -> bool:
        return self.kind == "win_rate" or self.bounds is not None


@dataclass
class StudyScores:
    """What :func:`load_scores` extracts from a study."""

    study: str
    path: Path
    records: list[dict]
    tasks: list[TaskData]
    algos: list[str]  # display order
    excluded: list[Excluded]
    notes: list[str]
    last_k: int
    agg_tasks: list[str]  # task keys in the aggregates (normalisable, every algorithm present, learned)
    unlearned: list[str] = field(default_factory=list)  # normalisable tasks no algorithm learns (shown apart)
    frames: dict[str, Any] = field(default_factory=dict)  # run_id -> its metrics rows (training metrics too)

    def task(self, key: str) -> TaskData:
        return next(t for t in self.tasks if t.key == key)

    def final_scores(self, clip: bool = True) -> dict[str, list[np.ndarray]]:
        """Per algorithm, one array of normalised final scores per aggregate task."""
        out: dict[str, list[np.ndarray]] = {}
        for a in self.algos:
            arrs = [np.array([r.final_score for r in self.task(k).runs[a]]) for k in self.agg_tasks]
            out[a] = [np.clip(v, 0.0, 1.0) for v in arrs] if clip else arrs
        return out

    def scores_at(self, fraction: float) -> dict[str, list[np.ndarray]]:
        """Like :meth:`final_scores` (clipped) at ``fraction`` of each task's common budget: the same
        "final" rule (the mean of the last K evaluation points) over the points at or before it."""
        out: dict[str, list[np.ndarray]] = {}
        for a in self.algos:
            out[a] = []
            for k in self.agg_tasks:
                td = self.task(k)
                raw = np.array([final_along(r, np.array([fraction * td.budget]), self.last_k)[0]
                                for r in td.runs[a]])
                out[a].append(np.clip(normalise(raw, td.env, td.task, td.bounds), 0.0, 1.0))
        return out

    def clipped(self) -> list[RunScore]:
        """Used runs whose normalised final score lies outside [0, 1] (clipped for aggregation)."""
        return [r for t in self.tasks for rs in t.runs.values() for r in rs
                if math.isfinite(r.final_score) and not 0.0 <= r.final_score <= 1.0]


BUDGET_SLACK = 0.05

LEARNED = 0.05
"""A task counts as learned when some algorithm's mean final score (normalised return, clipped to
[0, 1], or win rate) reaches this; a task no algorithm learns is shown apart from the aggregates."""


def _unlearned(t: TaskData) -> bool:
    means = [np.mean(np.clip([r.final_score for r in rs], 0.0, 1.0)) for rs in t.runs.values()]
    return bool(means) and max(means) < LEARNED
"""A run with a larger budget than the common one keeps its points up to ``(1 + slack) x`` the
common budget (evaluation points fall on rollout boundaries, not exactly on the budget)."""


def _display_order(algos: set[str], baseline: str | None) -> list[str]:
    """MARPO (the suite's subject) first, the baseline last, the others alphabetically between."""
    rest = sorted(a for a in algos if a not in ("marpo", baseline))
    return [a for a in ("marpo",) if a in algos] + rest + ([baseline] if baseline in algos and baseline != "marpo"
                                                            else [])


def _labels(records: list[dict]) -> dict[str, str]:
    """run_id -> algorithm label. Runs of one algorithm on one task with different ``--set``
    overrides are different variants: they get ``algo[k=v,...]`` labels instead of being pooled."""
    sets: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    ov = {r["run_id"]: ",".join(f"{k}={v}" for k, v in (r.get("overrides") or [])) for r in records}
    for r in records:
        sets[(r["algo"], r["env"], r["task"])].add(ov[r["run_id"]])
    split = {a for (a, _, _), s in sets.items() if len(s) > 1}
    return {r["run_id"]: (f"{r['algo']}[{ov[r['run_id']]}]" if r["algo"] in split and ov[r["run_id"]] else r["algo"])
            for r in records}


def _restrict(records: list[dict], algos: Sequence[str] | None, envs: Sequence[str] | None, study: str,
              notes: list[str]) -> list[dict]:
    """The records of the chosen algorithms and envs (all when both are None)."""
    said: list[str] = []
    if algos is not None:
        have = sorted({r["algo"] for r in records})
        missing = [a for a in algos if a not in have]
        if missing:
            raise AnalysisError(f"study {study} has no runs of {', '.join(missing)}; algorithms: {', '.join(have)}")
        keep = set(algos)
        records = [r for r in records if r["algo"] in keep]
        said.append(f"algorithms {', '.join(algos)}")
    if envs is not None:
        have = sorted({r["env"] for r in records} | {f"{r['env']}:{r['task']}" for r in records})
        missing = [e for e in envs if e not in have]
        if missing:
            raise AnalysisError(f"study {study} has no runs on {', '.join(missing)}; envs: {', '.join(have)}")
        keep = set(envs)
        records = [r for r in records if r["env"] in keep or f"{r['env']}:{r['task']}" in keep]
        said.append(f"envs {', '.join(envs)}")
    if said:
        notes.append("restricted to " + "; ".join(said))
    return records


def load_scores(study_path: Path, last_k: int = 3, baseline: str | None = None,
                algos: Sequence[str] | None = None, envs: Sequence[str] | None = None) -> StudyScores:
    """Read a study and extract the final score and learning curve of every complete run.

    ``algos`` / ``envs`` restrict the analysis to those algorithms and to those env families or
    ``family:task`` pairs (e.g. an ablation reported on the MPE tasks of a larger study); naming
    one the study does not have is an AnalysisError listing what it has.

    Runs that are not complete, complete without usable evaluations, duplicated seeds, or on a
    different reward scale / horizon than the task's normalisation table are listed in
    ``excluded`` with the reason. Raises :class:`store.StoreError` for unreadable stores (missing,
    empty, other schema versions) and :class:`AnalysisError` when nothing complete is left.
    """
    if last_k < 1:
        raise AnalysisError(f"--last-k must be at least 1, got {last_k}")
    study_path = Path(study_path)
    records, metrics = store.load_study(study_path)
    notes: list[str] = []
    records = _restrict(records, algos, envs, study_path.name, notes)
    labels = _labels(records)
    excluded: list[Excluded] = []
    by_run = {rid: df.sort_values("env_steps") for rid, df in metrics.groupby("run_id", sort=False)}

    def exclude(r: dict, reason: str) -> None:
        excluded.append(Excluded(r["run_id"], labels[r["run_id"]], r["env"], r["task"], r.get("seed"),
                                 r["status"], reason, r.get("env_steps")))

    # 1. complete runs with evaluations, grouped by task; others are listed
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] != "complete":
            exclude(r, r.get("message") or f"run is {r['status']}")
            continue
        df = by_run.get(r["run_id"])
        col = "eval_win_rate" if score_kind(r["env"]) == "win_rate" else "eval_return_mean"
        if df is None or not np.isfinite(df[col].to_numpy()).any():
            exclude(r, f"complete, but no finite {col} in its metrics")
            continue
        groups[(r["env"], r["task"])].append(r)
    if not groups:
        counts = Counter(r["status"] for r in records)
        raise AnalysisError(f"study {study_path.name} has no complete runs with evaluations "
                            f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); nothing to report")

    # 2. per task: scale / horizon checks, duplicate seeds, common budget, final scores
    tasks: list[TaskData] = []
    measured = study_bounds(study_path)  # tasks without stored bounds: measured for this study
    for (env, task), runs in sorted(groups.items()):
        kind = score_kind(env)
        bounds = task_bounds(env, task) or (measured.get((env, task)) if kind == "return" else None)
        if kind == "return":
            want_scale = bounds.scale if bounds else Counter(r.get("reward_scale") for r in runs).most_common(1)[0][0]
            want_limit = bounds.episode_limit if bounds else Counter(
                r.get("episode_limit") for r in runs).most_common(1)[0][0]
            kept = []
            for r in runs:
                if r.get("reward_scale") not in (None, want_scale):
                    exclude(r, f"reward scale {r['reward_scale']} differs from {want_scale} (never mixed)")
                elif r.get("episode_limit") not in (None, want_limit):
                    exclude(r, f"episode limit {r['episode_limit']} differs from {want_limit} (never mixed)")
                else:
                    kept.append(r)
            if any(r.get("reward_scale") is None for r in kept):
                notes.append(f"{env}:{task}: some runs do not record their reward scale; assumed {want_scale}")
            runs = kept
        seen: dict[tuple[str, Any], dict] = {}
        for r in sorted(runs, key=lambda r: (-int(by_run[r["run_id"]]["env_steps"].max()), r["run_id"])):
            k = (labels[r["run_id"]], r["seed"])
            if k in seen:
                exclude(r, f"duplicate of seed {r['seed']} (run {seen[k]['run_id']} is used)")
            else:
                seen[k] = r
        runs = list(seen.values())
        if not runs:
            continue
        ends = {r["run_id"]: int(by_run[r["run_id"]]["env_steps"].max()) for r in runs}
        budget_of = {r["run_id"]: int(r.get("budget") or ends[r["run_id"]]) for r in runs}
        budgets = sorted(set(budget_of.values()))
        common = budgets[0]
        if len(budgets) > 1:
            notes.append(f"{env}:{task}: runs have different budgets ({', '.join(f'{b:,}' for b in budgets)} env "
                         f"steps); statistics use the common prefix up to {common:,} env steps")
        per_algo: dict[str, list[RunScore]] = defaultdict(list)
        col = "eval_win_rate" if kind == "win_rate" else "eval_return_mean"
        for r in runs:
            df = by_run[r["run_id"]]
            steps = df["env_steps"].to_numpy(np.int64)
            vals = df[col].to_numpy(np.float64)
            keep = np.isfinite(vals)
            if budget_of[r["run_id"]] > common:
                keep &= steps <= common * (1 + BUDGET_SLACK)
            steps, vals = steps[keep], vals[keep]
            if steps.size == 0:
                exclude(r, f"no finite evaluation within the common budget {common:,}")
                continue
            final_raw = float(vals[-last_k:].mean())
            wall = float(r.get("wall_seconds") or df["wall_seconds"].max())
            total = float(df["env_steps"].max())
            rate = float(df["wall_seconds"].max()) / total if total > 0 else math.nan
            per_algo[labels[r["run_id"]]].append(RunScore(
                r["run_id"], labels[r["run_id"]], env, task, r["seed"], final_raw,
                float(normalise(final_raw, env, task, bounds)), int(steps[-1]), wall, steps, vals, rate))
        if per_algo:
            tasks.append(TaskData(env, task, kind, bounds, common, budgets,
                                  {a: sorted(v, key=lambda s: s.seed) for a, v in per_algo.items()}))
    if not tasks:
        raise AnalysisError(f"study {study_path.name}: no run is usable (see the excluded runs)")

    algos = _display_order({a for t in tasks for a in t.runs}, baseline)
    agg = [t.key for t in tasks if t.normalisable and all(a in t.runs for a in algos)]
    unlearned = [t.key for t in tasks if t.normalisable and _unlearned(t)]
    for k in unlearned:
        notes.append(f"{k}: no algorithm learns it (every algorithm's mean final score is below {LEARNED:g}); it is "
                     "shown in its own table and left out of the aggregates, which it would only dilute")
    agg = [k for k in agg if k not in unlearned]
    left = [t.key for t in tasks if t.key not in agg and t.key not in unlearned]
    for t in tasks:
        if t.key in left:
            why = (f"no normalisation bounds for its returns: `marpo-bench bounds {study_path} --reference "
                   f"{t.key}=SCORE` measures its random score and sets a reference" if not t.normalisable else
                   "not run by " + ", ".join(a for a in algos if a not in t.runs))
            notes.append(f"{t.key} is left out of the aggregate statistics ({why}); see its own table and curves")
    fams = sorted({t.env for t in tasks})
    for i, a in enumerate(fams):
        fam = _family(a)
        for b in fams[i + 1:]:
            if fam is not None and b in fam.not_comparable_with:
                notes.append(fam.not_comparable_with[b])
    if not agg:
        notes.append("no task is run by every algorithm with a normalised score: aggregate statistics skipped")
    for t in tasks:
        for a, rs in t.runs.items():
            if len(rs) < 3:
                notes.append(f"{t.key}: {a} has {len(rs)} seed(s); its confidence intervals are unreliable")
    used = {r.run_id for t in tasks for rs in t.runs.values() for r in rs}
    return StudyScores(study_path.name, study_path, records, tasks, algos, excluded, notes, last_k, agg, unlearned,
                       {rid: df for rid, df in by_run.items() if rid in used})


# --------------------------------------------------------------------------------------------
# the whole analysis of a study


@dataclass
class SummaryRow:
    """One line of the per-task summary table."""

    task: str
    algo: str
    kind: str
    mean: Estimate  # final return / win rate over seeds, bootstrap CI of the mean
    score: float  # mean normalised score (clipped), NaN without bounds
    seeds: list[int]
    budget: int
    final_steps: float  # mean env steps of the last point used
    wall_mean: float
    wall_min: float
    wall_max: float
    eval_modes: list[str]


@dataclass
class Group:
    """A set of aggregate tasks with its own statistics: all of them, one score kind, one family."""

    name: str  # "all" | "kind:return" | "kind:win_rate" | "family:<env family>"
    label: str  # e.g. "all 9 tasks", "win-rate tasks (smax, 3 tasks)"
    tasks: list[str]
    aggregates: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    poi: dict[tuple[str, str], Estimate] = field(default_factory=dict)  # (algo, baseline) -> P(algo > baseline)


_KIND_LABEL = {"return": "normalised-return tasks", "win_rate": "win-rate tasks"}


def group_tasks(data: StudyScores) -> list[tuple[str, str, list[str]]]:
    """(name, label, tasks) of every group worth its own statistics: all aggregate tasks, then each
    score kind and each env family when the study has more than one (a group that holds the same
    tasks as an earlier one is skipped)."""
    n = lambda ks: f"{len(ks)} task{'s' if len(ks) != 1 else ''}"  # noqa: E731
    out = [("all", f"all {n(data.agg_tasks)}", list(data.agg_tasks))]
    for kind in ("return", "win_rate"):
        ks = [k for k in data.agg_tasks if data.task(k).kind == kind]
        fams = sorted({data.task(k).env for k in ks})
        out.append((f"kind:{kind}", f"{_KIND_LABEL[kind]} ({', '.join(fams)}; {n(ks)})", ks))
    for fam in sorted({data.task(k).env for k in data.agg_tasks}):
        ks = [k for k in data.agg_tasks if data.task(k).env == fam]
        out.append((f"family:{fam}", f"{fam} ({n(ks)})", ks))
    seen: list[list[str]] = []
    kept = []
    for name, label, ks in out:
        if ks and ks not in seen:
            seen.append(ks)
            kept.append((name, label, ks))
    return kept


@dataclass(frozen=True)
class Cost:
    """What an algorithm's used runs cost: wall-clock hours, CPU-hours (wall-clock x torch threads)
    and seconds per env step (training and evaluation), summed or averaged over its runs."""

    algo: str
    runs: int
    run_hours: float
    cpu_hours: float
    seconds_per_step: float  # mean over its runs of the aggregate tasks (all its runs if none)
    threads: float  # mean torch threads per run


def costs(data: StudyScores) -> tuple[dict[str, Cost], list[str]]:
    """Cost per algorithm and the warnings that qualify it: runs timed on different machines, or
    on a machine busier than its CPU count when the run started (``run.json``'s host)."""
    rec = {r["run_id"]: r for r in data.records}
    out: dict[str, Cost] = {}
    used: list[dict] = []
    for a in data.algos:
        runs = [r for t in data.tasks for r in t.runs.get(a, [])]
        agg = [r for k in data.agg_tasks for r in data.task(k).runs.get(a, [])] or runs
        threads = [int(rec[r.run_id].get("torch_threads") or 1) for r in runs]
        out[a] = Cost(a, len(runs), sum(r.wall_seconds for r in runs) / 3600,
                      sum(r.wall_seconds * n for r, n in zip(runs, threads, strict=True)) / 3600,
                      float(np.nanmean([r.seconds_per_step for r in agg])) if agg else math.nan,
                      float(np.mean(threads)) if threads else math.nan)
        used += [rec[r.run_id] for r in runs]
    warnings = []
    def machine(r: dict) -> str:
        h = r.get("host") or {}
        gpu = f", {h['gpu']}" if h.get("gpu") else ""
        return f"{h.get('cpu_model') or h.get('processor') or '?'} ({h.get('cpus') or '?'} CPUs{gpu})"

    machines = Counter(machine(r) for r in used)
    if len(machines) > 1:
        warnings.append(f"the runs' timings come from {len(machines)} different machines "
                        f"({'; '.join(f'{n} runs on {m}' for m, n in machines.most_common())}): wall-clock and "
                        "CPU-hours compare algorithms fairly only where their runs shared a machine")
    busy = [r for r in used if (r.get("host") or {}).get("load_1min") is not None
            and r["host"]["load_1min"] > (r["host"].get("cpus") or math.inf)]
    if busy:
        warnings.append(f"{len(busy)} of {len(used)} runs started on a machine busier than its CPU count (1-minute "
                        "load average in run.json): their timings include waiting for a CPU")
    if not any((r.get("host") or {}).get("cpu_model") for r in used):
        warnings.append("the runs do not record their CPU model (run.json's host.cpu_model, recorded by runs trained "
                        "since it was added): runs timed on different CPUs cannot be told apart")
    if not any((r.get("host") or {}).get("load_1min") is not None for r in used):
        warnings.append("the runs do not record the machine's load (run.json's host.load_1min, recorded by runs "
                        "trained since it was added): timings from a shared machine may include waiting")
    return out, warnings


@dataclass
class Analysis:
    """Every number the report shows, computed by :func:`analyse`."""

    data: StudyScores
    reps: int
    seed: int
    confidence: float
    baseline: str | None
    engine: str
    aggregates: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    poi: dict[tuple[str, str], Estimate] = field(default_factory=dict)
    poi_pairs: list[tuple[str, str]] = field(default_factory=list)
    # fraction of the budget -> P(algo > baseline) at that point
    poi_at: dict[float, dict[tuple[str, str], Estimate]] = field(default_factory=dict)
    profiles: dict[str, Band] = field(default_factory=dict)
    curve: dict[str, Band] = field(default_factory=dict)  # aggregate IQM vs env steps
    reach: dict[str, Reach] = field(default_factory=dict)  # algo -> steps to the baseline's final IQM
    task_curves: dict[str, dict[str, Band]] = field(default_factory=dict)  # task -> algo -> IQM band
    raw_curves: dict[str, dict[str, tuple[Band, np.ndarray]]] = field(default_factory=dict)  # mean band, per seed
    summary: list[SummaryRow] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)  # "all" first; aggregates and P vs the baseline per group
    # MARPO's diagnostics: env family -> metric -> algo -> mean band over its runs vs env steps
    diagnostics: dict[str, dict[str, dict[str, Band]]] = field(default_factory=dict)
    cost: dict[str, Cost] = field(default_factory=dict)
    cost_warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def poi_pairs(algos: Sequence[str], baseline: str | None) -> list[tuple[str, str]]:
    """The ``(x, y)`` pairs shown: every algorithm against the baseline first, then every other
    pair once, oriented by display order (MARPO first). P(y > x) is ``1 - P(x > y)``."""
    pairs = [(a, baseline) for a in algos if baseline in algos and a != baseline]
    rest = [a for a in algos if a != baseline]
    pairs += [(a, b) for i, a in enumerate(rest) for b in rest[i + 1:]]
    return pairs


def final_along(run: RunScore, x: np.ndarray, last_k: int) -> np.ndarray:
    """The run's "final" raw score had it stopped at each ``x``: the mean of its last ``last_k``
    evaluation points at or before ``x`` (with the budget slack), the rule of the aggregate table,
    so a sample-efficiency curve ends exactly at the final IQM."""
    n = np.searchsorted(run.steps, np.asarray(x, dtype=np.float64) * (1 + BUDGET_SLACK), side="right")
    # the same mean of the same slice as the final score (bit for bit); the step-0 evaluation always exists
    return np.array([run.raw[max(m - last_k, 0):m].mean() for m in np.maximum(n, 1)])


def _interp(run: RunScore, x: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.interp(x, run.steps.astype(np.float64), values)


DIAGNOSTICS: dict[str, str] = {
    "kl_delta": "δ (KL budget)",
    "clip_low_p5": "lower bound x1, 5th percentile",
    "clip_high_p95": "upper bound x2, 95th percentile",
    "clip_fraction": "clip fraction",
    "reflection_term": "reflection term α·L1",
}
"""MARPO's training diagnostics (docs/algorithms.md §4) the report draws when a study has them."""


def diagnostics(data: StudyScores, reps: int, confidence: float, seed: int,
                grid_points: int = 21) -> dict[str, dict[str, dict[str, Band]]]:
    """Per env family, per diagnostic, per algorithm that logs it: the mean over its runs (all the
    family's tasks) against env steps, with bootstrap bands; {} when no run logs ``kl_delta``."""
    out: dict[str, dict[str, dict[str, Band]]] = {}
    for fam in sorted({t.env for t in data.tasks}):
        tasks = [t for t in data.tasks if t.env == fam]
        grid = np.linspace(0, min(t.budget for t in tasks), grid_points)
        for metric in DIAGNOSTICS:
            for a in data.algos:
                rows = []
                for t in tasks:
                    for r in t.runs.get(a, []):
                        df = data.frames.get(r.run_id)
                        if df is None or metric not in df:
                            continue
                        ok = df[metric].notna().to_numpy()
                        if ok.sum() >= 2:
                            rows.append(np.interp(grid, df["env_steps"].to_numpy(np.float64)[ok],
                                                  df[metric].to_numpy(np.float64)[ok]))
                if rows:
                    out.setdefault(fam, {}).setdefault(metric, {})[a] = mean_band(
                        np.stack(rows), grid, reps, confidence, _rng(seed, "diagnostics", fam, metric, a))
    return {fam: d for fam, d in out.items() if "kl_delta" in d}


DEFAULT_BASELINE = "mappo"
POI_FRACTIONS = (0.25, 0.5, 1.0)
"""Fractions of the budget at which the probability of improvement over the baseline is given."""


def analyse(
    study_path: Path, *, reps: int = 50_000, seed: int = 0, baseline: str | None = None, last_k: int = 3,
    confidence: float = 0.95, grid_points: int = 21, engine: str = "fast",
    algos: Sequence[str] | None = None, envs: Sequence[str] | None = None,
) -> Analysis:
    """Load a study and compute everything the report shows.

    ``baseline=None`` picks MAPPO when the study has it; a named baseline must be in the study
    (unless the study has a single algorithm). ``engine="fast"`` uses the vectorised statistics;
    ``"rliable"`` computes the aggregate metrics and probabilities of improvement with rliable
    itself (minutes at 50,000 reps; needs the same number of seeds on every task). Curves and
    profiles always use the fast path. ``algos`` / ``envs`` restrict the study (``load_scores``).
    """
    if reps < 1:
        raise AnalysisError(f"--reps must be positive, got {reps}")
    if engine not in ("fast", "rliable"):
        raise AnalysisError(f"unknown engine {engine!r}; valid: fast, rliable")
    t0 = time.perf_counter()
    data = load_scores(study_path, last_k, baseline or DEFAULT_BASELINE, algos=algos, envs=envs)
    if baseline is None:  # automatic: MAPPO when the study has it, else no baseline
        baseline = DEFAULT_BASELINE if DEFAULT_BASELINE in data.algos else None
    elif baseline not in data.algos:
        if len(data.algos) > 1:
            raise AnalysisError(f"baseline {baseline!r} is not in study {data.study}; algorithms: "
                                f"{', '.join(data.algos)}")
        baseline = None
    res = Analysis(data, reps, seed, confidence, baseline, engine, notes=list(data.notes))
    res.timings["load"] = time.perf_counter() - t0

    # summary table and per-task raw curves
    t = time.perf_counter()
    for td in data.tasks:
        grid = np.linspace(0, td.budget, grid_points)
        res.raw_curves[td.key] = {}
        for a in data.algos:
            rs = td.runs.get(a)
            if not rs:
                continue
            raw = np.array([r.final_raw for r in rs])
            band = mean_band(raw[:, None], np.zeros(1), reps, confidence, _rng(seed, "summary", td.key, a))
            modes = sorted({str(next((rec.get("eval_mode") for rec in data.records if rec["run_id"] == r.run_id),
                                     None)) for r in rs})
            walls = np.array([r.wall_seconds for r in rs])
            scores = np.array([r.final_score for r in rs])
            res.summary.append(SummaryRow(
                td.key, a, td.kind, Estimate(float(raw.mean()), float(band.lo[0]), float(band.hi[0])),
                float(np.clip(scores, 0, 1).mean()) if np.isfinite(scores).all() else math.nan,
                [int(r.seed) for r in rs], td.budget, float(np.mean([r.final_steps for r in rs])),
                float(walls.mean()), float(walls.min()), float(walls.max()), modes))
            per_seed = np.stack([_interp(r, grid, r.raw) for r in rs])
            res.raw_curves[td.key][a] = (
                mean_band(per_seed, grid, reps, confidence, _rng(seed, "raw-curve", td.key, a)), per_seed)
    res.timings["summary"] = time.perf_counter() - t
    res.cost, res.cost_warnings = costs(data)
    t = time.perf_counter()
    res.diagnostics = diagnostics(data, min(reps, 2000), confidence, seed)
    res.timings["diagnostics"] = time.perf_counter() - t

    if not data.agg_tasks:
        return res
    scores = data.final_scores(clip=True)
    t = time.perf_counter()
    if engine == "rliable":
        sizes = {len(v) for arrs in scores.values() for v in arrs}
        if len(sizes) != 1:
            raise AnalysisError("engine rliable needs the same number of seeds for every algorithm and task; "
                                "use the fast engine")
        rect = {a: np.stack(v, axis=1) for a, v in scores.items()}
        res.aggregates = rliable_aggregate_estimates(rect, reps, confidence, seed)
    else:
        res.aggregates = aggregate_estimates(scores, reps, confidence, seed)
    res.timings["aggregates"] = time.perf_counter() - t

    t = time.perf_counter()
    if len(data.algos) >= 2:
        res.poi_pairs = poi_pairs(data.algos, baseline)
        if engine == "rliable":
            res.poi = {(a, b): rliable_probability_of_improvement(np.stack(scores[a], 1), np.stack(scores[b], 1),
                                                                   reps, confidence, seed) for a, b in res.poi_pairs}
        else:
            res.poi = pairwise_poi(scores, res.poi_pairs, reps, confidence, seed)
    else:
        res.notes.append(f"only one algorithm ({data.algos[0]}) in the study: probability of improvement and other "
                         f"pairwise statistics are skipped")
    if baseline is not None and len(data.algos) >= 2:
        vs_base = [(a, baseline) for a in data.algos if a != baseline]
        for frac in POI_FRACTIONS:
            res.poi_at[frac] = ({p: res.poi[p] for p in vs_base} if frac == 1.0 else
                                pairwise_poi(data.scores_at(frac), vs_base, reps, confidence, seed))
    res.timings["poi"] = time.perf_counter() - t

    t = time.perf_counter()
    for name, label, keys in group_tasks(data):
        g = Group(name, label, keys)
        if keys == data.agg_tasks:
            g.aggregates, g.poi = res.aggregates, {p: e for p, e in res.poi.items() if p[1] == baseline}
        else:
            idx = [data.agg_tasks.index(k) for k in keys]
            sub_scores = {a: [v[i] for i in idx] for a, v in scores.items()}
            g.aggregates = aggregate_estimates(sub_scores, reps, confidence, seed)
            if baseline is not None and len(data.algos) >= 2:
                g.poi = pairwise_poi(sub_scores, [(a, baseline) for a in data.algos if a != baseline], reps,
                                     confidence, seed)
        res.groups.append(g)
    res.timings["groups"] = time.perf_counter() - t

    t = time.perf_counter()
    res.profiles = performance_profiles(scores, np.linspace(0.0, 1.0, 101), reps, confidence, seed)
    res.timings["profiles"] = time.perf_counter() - t

    t = time.perf_counter()
    common = min(data.task(k).budget for k in data.agg_tasks)
    if len({data.task(k).budget for k in data.agg_tasks}) > 1:
        res.notes.append(f"tasks have different budgets: the aggregate sample-efficiency curve stops at "
                         f"{common:,} env steps, the smallest; per-task curves go to each task's budget")
    grid = np.linspace(0, common, grid_points)
    curves: dict[str, list[np.ndarray]] = {}
    for a in data.algos:
        curves[a] = []
        for k in data.agg_tasks:
            td = data.task(k)
            curves[a].append(np.stack([np.clip(normalise(final_along(r, grid, data.last_k), td.env, td.task,
                                                         td.bounds), 0, 1)
                                       for r in td.runs[a]]))
    res.curve = iqm_curves(curves, grid, reps, confidence, seed, key="aggregate")
    if baseline is not None and baseline in res.curve:
        rates = {a: float(np.nanmean([r.seconds_per_step for k in data.agg_tasks for r in data.task(k).runs[a]]))
                 for a in data.algos}
        res.reach = reach_baseline(res.curve, baseline, res.aggregates[baseline]["IQM"].point, rates)
    for k in data.agg_tasks:
        td = data.task(k)
        tgrid = np.linspace(0, td.budget, grid_points)
        per = {a: [np.stack([np.clip(normalise(final_along(r, tgrid, data.last_k), td.env, td.task, td.bounds), 0, 1)
                             for r in td.runs[a]])] for a in data.algos}
        res.task_curves[k] = iqm_curves(per, tgrid, reps, confidence, seed, key=k)
    res.timings["curves"] = time.perf_counter() - t
    return res


def to_jsonable(res: Analysis) -> dict[str, Any]:
    """The headline numbers as plain JSON (for scripts and regressions)."""
    def est(e: Estimate) -> list[float]:
        return [e.point, e.lo, e.hi]

    return {
        "study": res.data.study, "reps": res.reps, "seed": res.seed, "confidence": res.confidence,
        "engine": res.engine, "last_k": res.data.last_k, "tasks": res.data.agg_tasks, "algos": res.data.algos,
        "aggregates": {a: {m: est(e) for m, e in d.items()} for a, d in res.aggregates.items()},
        "probability_of_improvement": {f"{a}>{b}": est(e) for (a, b), e in res.poi.items()},
        "groups": {g.name: {"label": g.label, "tasks": g.tasks,
                            "aggregates": {a: {m: est(e) for m, e in d.items()} for a, d in g.aggregates.items()},
                            "probability_of_improvement": {f"{a}>{b}": est(e) for (a, b), e in g.poi.items()}}
                   for g in res.groups},
        "unlearned_tasks": res.data.unlearned,
        "cost": {a: c.__dict__ for a, c in res.cost.items()}, "cost_warnings": res.cost_warnings,
        "probability_of_improvement_at_budget_fraction": {
            str(f): {f"{a}>{b}": est(e) for (a, b), e in d.items()} for f, d in res.poi_at.items()},
        "steps_to_baseline_final_iqm": {a: {"target": r.target, "steps": r.steps, "early": r.early, "late": r.late,
                                            "budget": r.budget, "baseline_steps": r.baseline_steps,
                                            "steps_ratio": r.steps_ratio, "seconds": r.seconds,
                                            "seconds_ratio": r.seconds_ratio} for a, r in res.reach.items()},
        "summary": [{"task": s.task, "algo": s.algo, "final": est(s.mean), "score": s.score, "seeds": s.seeds,
                     "budget": s.budget} for s in res.summary],
        "excluded": [e.__dict__ for e in res.data.excluded],
        "configs": {r["run_id"]: {"config": r.get("config"), "overrides": r.get("overrides") or []}
                    for r in res.data.records
                    if any(r["run_id"] == s.run_id for t in res.data.tasks for rs in t.runs.values() for s in rs)},
        "notes": res.notes,
    }


def dumps(res: Analysis) -> str:
    """:func:`to_jsonable` as text (NaN written as null)."""
    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(to_jsonable(res)), indent=2, default=str) + "\n"
