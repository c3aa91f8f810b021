"""The two comparisons of a regression check, on studies read once: bit for bit (exact) and by
the report's statistics (stat). The rules are in the package doc."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marpo_bench import store
from marpo_bench.config import RunConfig, with_new_settings
from marpo_bench.regress.suites import RegressError, Suite

DEFAULT_TOLERANCE = 0.10
"""Normalised-score units (0 = random policy / no wins, 1 = the scripted oracle / all wins): an
IQM drop larger than this, together with a probability of improvement whose CI lies below 1/2,
is a regression. Calibrated against a re-seeded smoke suite (package doc: largest |Δ| 0.032)."""

LAST_K = 3  # final score = mean of the last K evaluation points (the report's default)
REPS = 20_000  # bootstrap resamples for every CI here
CONFIDENCE = 0.95
BOOT_SEED = 0
IGNORED_COLUMNS = frozenset({"wall_seconds"})  # timing: never reproducible
IGNORED_CONFIG_KEYS = frozenset({"device"})

RunFiles = tuple[dict, "pd.DataFrame | None"]  # a run's record and metrics


@dataclass
class Study:
    """A study read once (``store.read_study``): run_id -> (record, metrics or None)."""

    path: Path
    runs: dict[str, RunFiles]

    @classmethod
    def read(cls, path: Path, *, missing_ok: bool = False) -> Study:
        """Read every run of ``path`` (an absent directory is an empty study when ``missing_ok``)."""
        path = Path(path)
        if missing_ok and not path.is_dir():
            return cls(path, {})
        return cls(path, {record["run_id"]: (record, frame) for record, frame in store.read_study(path)})

    @property
    def records(self) -> list[dict]:
        return [record for record, _ in self.runs.values()]


# --------------------------------------------------------------------------------------------
# exact comparison


@dataclass
class Difference:
    """The first difference of one run between the reference and the re-run."""

    run_id: str
    kind: str  # "metric" | "rows" | "config" | "missing" | "failed"
    metric: str = ""
    env_steps: int | None = None
    reference: Any = None
    candidate: Any = None
    ulps: int | None = None

    def describe(self) -> str:
        if self.kind == "missing":
            return f"run {self.run_id}: not in the re-run"
        if self.kind == "failed":
            return f"run {self.run_id}: the re-run {self.candidate}"
        if self.kind == "config":
            return (f"run {self.run_id}: resolved config {self.metric} differs: reference {self.reference!r}, "
                    f"now {self.candidate!r}")
        if self.kind == "rows":
            return (f"run {self.run_id}: evaluation points differ at row {self.metric}: reference env_steps "
                    f"{self.reference}, now {self.candidate}")
        ulps = f", {self.ulps:,} ulp{'s' if self.ulps != 1 else ''} apart" if self.ulps is not None else ""
        return (f"run {self.run_id}, metric {self.metric}, env step {self.env_steps:,}: reference "
                f"{_fmt_exact(self.reference)}, now {_fmt_exact(self.candidate)}{ulps}")


def _fmt_exact(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return "missing" if v is None or v is pd.NA else str(v)


def _ordered(x: float) -> int:
    """float64 -> integer with the same order, so adjacent floats differ by 1 (ulp distance)."""
    i = int(np.array(x, dtype=np.float64).view(np.int64))
    return i if i >= 0 else -(1 << 63) - i


def _float_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise equality of float64 arrays, NaN equal to NaN."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return (a.view(np.uint64) == b.view(np.uint64)) | (np.isnan(a) & np.isnan(b))


def _column_equal(a: pd.Series, b: pd.Series) -> np.ndarray:
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return _float_equal(a.to_numpy(np.float64, na_value=np.nan), b.to_numpy(np.float64, na_value=np.nan))
    na, nb = a.isna().to_numpy(), b.isna().to_numpy()
    same = (a.astype(object).to_numpy() == b.astype(object).to_numpy())
    return np.where(na | nb, na & nb, same).astype(bool)


def _scalar(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def _config_difference(ref: dict, cand: dict, prefix: str = "") -> tuple[str, Any, Any] | None:
    for key in sorted(set(ref) | set(cand)):
        if key in IGNORED_CONFIG_KEYS:
            continue
        a, b = ref.get(key), cand.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _config_difference(a, b, f"{prefix}{key}.")
            if sub:
                return sub
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


def _as_read_now(record: dict) -> dict:
    """The reference's resolved config with the settings its algorithm and the run settings gained
    since it was recorded, at the values such runs ran with (``config.with_new_settings``), as
    run.json stores them: a new switch whose default keeps the old behaviour is no change. Settings
    since removed still differ."""
    from marpo_bench.algos import get_algorithm

    stored = with_new_settings(RunConfig, record.get("config") or {})
    try:
        stored = with_new_settings(get_algorithm(record["algo"]).Config, stored)
    except (KeyError, ValueError, ImportError):
        pass  # the algorithm is not installed here: its settings compare as stored
    return store.as_stored(stored)


def first_difference(ref: RunFiles, cand: RunFiles) -> Difference | None:
    """The first difference between two stored runs, each ``(record, metrics)`` (None when
    identical): resolved config, then evaluation points, then metrics row by row (env steps
    ascending), columns in schema order. ``wall_seconds`` is ignored; floats are compared bit for
    bit (NaN equals NaN)."""
    (ref_rec, a), (cand_rec, b) = ref, cand
    run_id = ref_rec["run_id"]
    if cand_rec["status"] != "complete":
        return Difference(run_id, "failed", candidate=f"is {cand_rec['status']}"
                          + (f" ({cand_rec['message']})" if cand_rec.get("message") else ""))
    cfg = _config_difference(_as_read_now(ref_rec), cand_rec.get("config") or {})
    if cfg:
        return Difference(run_id, "config", cfg[0], reference=cfg[1], candidate=cfg[2])
    if a is None or b is None:
        return Difference(run_id, "metric", "metrics.parquet", None, "present" if a is not None else "absent",
                          "present" if b is not None else "absent")
    sa, sb = a["env_steps"].to_numpy(), b["env_steps"].to_numpy()
    n = min(len(sa), len(sb))
    bad_rows = np.flatnonzero(sa[:n] != sb[:n])
    if bad_rows.size or len(sa) != len(sb):
        row = int(bad_rows[0]) if bad_rows.size else n
        return Difference(run_id, "rows", str(row), reference=int(sa[row]) if row < len(sa) else "none",
                          candidate=int(sb[row]) if row < len(sb) else "none")
    extras = sorted((set(a.columns) | set(b.columns)) - set(store.METRIC_COLUMNS))
    cols = [c for c in [*store.METRIC_COLUMNS, *extras] if c not in IGNORED_COLUMNS and c != "env_steps"]
    best: tuple[int, int] | None = None  # (row, column index)
    for j, col in enumerate(cols):
        if col not in a.columns or col not in b.columns:
            return Difference(run_id, "metric", col, int(sa[0]) if len(sa) else 0,
                              "present" if col in a.columns else "absent",
                              "present" if col in b.columns else "absent")
        eq = _column_equal(a[col], b[col])
        rows = np.flatnonzero(~eq)
        if rows.size and (best is None or (int(rows[0]), j) < best):
            best = (int(rows[0]), j)
    if best is None:
        return None
    row, j = best
    col = cols[j]
    va, vb = _scalar(a[col].iloc[row]), _scalar(b[col].iloc[row])
    ulps = None
    if isinstance(va, float) and isinstance(vb, float) and math.isfinite(va) and math.isfinite(vb):
        ulps = abs(_ordered(va) - _ordered(vb))
    return Difference(run_id, "metric", col, int(sa[row]), va, vb, ulps)


def compare_exact(ref: Study, cand: Study, run_ids: Sequence[str]) -> list[Difference]:
    """The first difference of each run in ``run_ids`` (identical runs are left out)."""
    out = []
    for rid in sorted(run_ids):
        if rid not in cand.runs:
            out.append(Difference(rid, "missing"))
            continue
        diff = first_difference(ref.runs[rid], cand.runs[rid])
        if diff is not None:
            out.append(diff)
    return out


def identical(ref: Study, cand: Study, suite: Suite) -> dict[str, str]:
    """Per algorithm: whether the candidate's runs of the suite equal the reference's bit for bit
    (``n/a`` when the candidate has other runs, e.g. other seeds)."""
    out = {}
    for algo in suite.algos:
        ids = [s.run_id for s in suite.specs() if s.algo == algo]
        shared = [i for i in ids if i in cand.runs]
        if not shared:
            out[algo] = "n/a"
            continue
        diffs = compare_exact(ref, cand, shared)
        out[algo] = "yes" if not diffs and len(shared) == len(ids) else ("no" if diffs else "partly")
    return out


def check_budgets(ref: ScoreData, cand: ScoreData, suite: Suite) -> None:
    """The candidate's budgets must be the reference's (RegressError)."""
    for key, budget in ref.budgets.items():
        have = cand.budgets.get(key)
        if have is not None and have != budget:
            raise RegressError(f"the candidate's budget on {key} is {have:,} env steps, the reference's "
                               f"{budget:,}; compare studies of the same suite {suite.name!r}")


# --------------------------------------------------------------------------------------------
# statistical comparison


SCORE_KINDS = ("final", "auc")


@dataclass
class ScoreData:
    """Per algorithm and score kind, one array of normalised (clipped) scores per task."""

    scores: dict[str, dict[str, list[np.ndarray]]]
    seeds: dict[str, dict[str, list[int]]]  # algo -> task -> seeds used
    budgets: dict[str, int]  # task -> common budget
    failed: dict[str, list[str]]  # algo -> run ids that did not complete
    notes: list[str]


def auc_score(steps: np.ndarray, raw: np.ndarray, env: str, task: str) -> float:
    """Area under the clipped normalised learning curve, divided by its env-step span: the mean
    score over training (piecewise linear between evaluation points, as the report draws it)."""
    from marpo_bench.normalisation import normalise

    y = np.clip(normalise(raw, env, task), 0.0, 1.0)
    x = steps.astype(np.float64)
    if x.size < 2 or x[-1] <= x[0]:
        return float(y[-1])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def study_scores(study: Study, suite: Suite, *, require_all: bool) -> ScoreData:
    """Final and AUC scores of every (algorithm, task) of ``suite`` in ``study``.

    Runs that did not complete are listed in ``failed``. An (algorithm, task) with no run at all
    is bad input when ``require_all`` (a ``--candidate`` that is not this suite), else a failure.
    """
    from marpo_bench.analysis.load import load_scores
    from marpo_bench.analysis.scores import AnalysisError

    records = study.records
    failed: dict[str, list[str]] = {}
    present = {(r["algo"], f"{r['env']}:{r['task']}") for r in records}
    for r in records:
        if r["status"] != "complete" and r["algo"] in suite.algos:
            failed.setdefault(r["algo"], []).append(r["run_id"])
    for algo in suite.algos:
        for key in suite.task_keys():
            if (algo, key) not in present:
                if require_all:
                    raise RegressError(f"study {store.show_path(study.path)} has no run of {algo} on {key}; a "
                                       f"candidate needs every algorithm x task of suite {suite.name!r}")
                failed.setdefault(algo, []).append(f"{algo} on {key} (no run)")
    try:
        data = load_scores(study.path, LAST_K, study_runs=list(study.runs.values()))
    except AnalysisError as exc:
        if any(failed.values()):
            return ScoreData({}, {}, {}, failed, [str(exc)])
        raise RegressError(f"study {store.show_path(study.path)}: {exc}") from None
    scores: dict[str, dict[str, list[np.ndarray]]] = {}
    seeds: dict[str, dict[str, list[int]]] = {}
    budgets: dict[str, int] = {}
    tasks = {t.key: t for t in data.tasks}
    for key in suite.task_keys():
        if key in tasks:
            budgets[key] = tasks[key].budget
    for algo in suite.algos:
        finals, aucs, used = [], [], {}
        for key in suite.task_keys():
            runs = tasks[key].runs.get(algo, []) if key in tasks else []
            if not runs:
                if not any(f.startswith(f"{algo} on {key}") for f in failed.get(algo, [])):
                    failed.setdefault(algo, []).append(f"{algo} on {key} (no usable run)")
                continue
            finals.append(np.clip(np.array([r.final_score for r in runs]), 0.0, 1.0))
            aucs.append(np.array([auc_score(r.steps, r.raw, r.env, r.task) for r in runs]))
            used[key] = [int(r.seed) for r in runs]
        if len(finals) == len(suite.tasks):
            scores[algo] = {"final": finals, "auc": aucs}
            seeds[algo] = used
    notes = [n for n in data.notes if "confidence intervals are unreliable" not in n]
    return ScoreData(scores, seeds, budgets, failed, notes)


@dataclass
class Comparison:
    """One algorithm x score kind: reference vs candidate."""

    algo: str
    kind: str
    ref_iqm: Any  # analysis.Estimate
    cand_iqm: Any
    poi: Any  # P(candidate > reference)
    delta: float
    verdict: str
    ref_task_means: list[float] = field(default_factory=list)
    cand_task_means: list[float] = field(default_factory=list)


def judge(delta: float, poi_lo: float, poi_hi: float, tolerance: float) -> str:
    """The stat-mode rule (module doc): worse / better need both a drop (rise) beyond the tolerance
    and a probability of improvement whose CI excludes 1/2."""
    if delta < -tolerance and poi_hi < 0.5:
        return "worse"
    if delta > tolerance and poi_lo > 0.5:
        return "better"
    return "same"


def compare_scores(ref: ScoreData, cand: ScoreData, algos: Sequence[str], tolerance: float,
                   reps: int = REPS) -> list[Comparison]:
    """IQM (with CIs) of both, their difference and P(candidate > reference) for each algorithm
    present in both, per score kind."""
    from marpo_bench.stats import aggregate_estimates, probability_of_improvement

    out = []
    for algo in algos:
        if algo not in cand.scores or algo not in ref.scores:
            continue
        for kind in SCORE_KINDS:
            r, c = ref.scores[algo][kind], cand.scores[algo][kind]
            ref_iqm = aggregate_estimates({algo: r}, reps, CONFIDENCE, BOOT_SEED)[algo]["IQM"]
            cand_iqm = aggregate_estimates({algo: c}, reps, CONFIDENCE, BOOT_SEED)[algo]["IQM"]
            poi = probability_of_improvement(c, r, reps, CONFIDENCE, BOOT_SEED, key=f"regress:{algo}:{kind}")
            delta = cand_iqm.point - ref_iqm.point
            out.append(Comparison(algo, kind, ref_iqm, cand_iqm, poi, delta, judge(delta, poi.lo, poi.hi, tolerance),
                                  [float(x.mean()) for x in r], [float(x.mean()) for x in c]))
    return out
