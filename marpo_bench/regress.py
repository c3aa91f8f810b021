"""Regression check against a stored reference: did a code change alter behaviour, or make it worse?

A *reference* (committed under ``results/reference/``) holds real runs of a small, fixed *suite*
(:data:`SUITES`), produced by ``marpo-bench regress --update`` on the project's CI machine kind::

    <reference>/reference.json         manifest: suite + its definition, schema version, machine, history
    <reference>/README.md              how it was produced (the exact command), machine kind, history
    <reference>/suite/runs/<run_id>/   the suite's runs (run.json + metrics.parquet; no checkpoint.pt)
    <reference>/exact/runs/<run_id>/   the exact slice's runs

Two checks, two questions (``--mode exact|stat|both``):

- **exact** ("did behaviour change?"): re-trains the suite's short *exact slice* (one seed per
  algorithm on one task, a few thousand env steps) on CPU with one torch thread and
  ``torch.use_deterministic_algorithms(True)``, and compares every stored metric bit for bit
  (``wall_seconds`` aside) and the resolved config. Any difference is reported as the first
  differing run, metric and env step (with the distance in ulps). A change is not a verdict on
  quality: an intended change is recorded with ``--update --reason``. Bits are only comparable on
  the reference's CPU kind (:func:`cpu_kind`: model and vector-ISA flags) with the same package
  versions: the same code and versions on two AVX-512 hosts of the CI machine kind differed at the
  1e-7 level (2026-12). On another
  machine kind, or against a reference that does not record its CPU, differences are shown but do
  not set the exit code (:func:`exact_is_binding`); the stat check still decides.
- **stat** ("did it get worse?"): re-trains the whole suite (same seeds; or reads ``--candidate
  STUDY``) and compares, per algorithm, the normalised *final* score (mean of the last K evaluation
  points, as in the report) and the normalised *area under the learning curve* (AUC: the mean of
  the clipped normalised curve over the budget) with the reference's, using the report's
  statistics (:mod:`marpo_bench.analysis`): IQM with stratified-bootstrap CIs and the probability
  of improvement P(candidate > reference). The rule (per algorithm and score):

      worse  if  IQM(cand) - IQM(ref) < -tolerance  and  the CI of P(cand > ref) lies below 1/2
      better if  IQM(cand) - IQM(ref) > +tolerance  and  the CI of P(cand > ref) lies above 1/2
      same   otherwise

  An algorithm is *worse* when its final or its AUC score is worse, or when any of its runs
  failed. Re-running the suite's own seeds on the reference's machine kind reproduces the
  reference bit for bit on its CPU kind (the table says so), so the unmodified code passes there with
  Δ = 0 and P = 1/2;
  the tolerance (:data:`DEFAULT_TOLERANCE`) only has to absorb seed-to-seed noise for candidates
  run with other seeds or on other machines, and both conditions must hold, so noise alone
  rarely trips it while a broken learner (P near 0) does.

  Calibration (smoke suite, when its reference was first made): the suite re-trained with seeds
  3-5 instead of 0-2 gave |Δ IQM| <= 0.032 for every algorithm and score (final and AUC) and
  P(cand > ref) CIs that all contain 1/2: "same" everywhere, the tolerance being 3x the largest
  re-seeding difference. MAPPO with the sign of its advantages flipped (tests/test_regress.py,
  tiny suite) scores 0.000 against 0.190 (final) with P = 0: "worse". A drop of 0.10 is about a
  quarter of the smoke suite's scores (0.22-0.49); smaller regressions are beyond what 3 seeds
  at short budgets resolve.

Exit codes: 0 pass, 1 worse (or a run failed), 2 bad input (one-line error), 3 behaviour changed
but nothing is worse. ``--update`` re-trains the suite and the slice and replaces the reference,
appending a dated entry with ``--reason`` to its history (manifest and README).

Runs train in this process (``workers=1``: monkeypatches in tests reach them) or in a pool of
spawned processes with the same deterministic settings; both give the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from marpo_bench import store
from marpo_bench.config import RunSpec

REFERENCE_FORMAT = 1
"""Layout of a reference directory and its manifest (the run files carry ``store.SCHEMA_VERSION``)."""

MANIFEST = "reference.json"
README = "README.md"
SUITE_STUDY = "suite"
EXACT_STUDY = "exact"
MODES = ("exact", "stat", "both")

EXIT_OK, EXIT_WORSE, EXIT_BAD_INPUT, EXIT_CHANGED = 0, 1, 2, 3

DEFAULT_TOLERANCE = 0.10
"""Normalised-score units (0 = random policy / no wins, 1 = the scripted oracle / all wins): an
IQM drop larger than this, together with a probability of improvement whose CI lies below 1/2,
is a regression. Calibrated against a re-seeded smoke suite (module doc: largest |Δ| 0.032)."""

LAST_K = 3  # final score = mean of the last K evaluation points (the report's default)
REPS = 20_000  # bootstrap resamples for every CI here
CONFIDENCE = 0.95
BOOT_SEED = 0
IGNORED_COLUMNS = frozenset({"wall_seconds"})  # timing: never reproducible
IGNORED_CONFIG_KEYS = frozenset({"device"})


class RegressError(ValueError):
    """Bad input for the regression check: a one-line message (exit code 2)."""


# --------------------------------------------------------------------------------------------
# suites


@dataclass(frozen=True)
class Suite:
    """A fixed set of runs to regress against: algorithms x tasks (each with its own env-step
    budget) x seeds, plus a short *exact slice* re-trained for the bit-for-bit check."""

    name: str
    description: str
    algos: tuple[str, ...]
    tasks: tuple[tuple[str, int], ...]  # ("family:task", env-step budget)
    seeds: tuple[int, ...]
    overrides: tuple[tuple[str, str], ...] = ()  # ``--set`` pairs applied to every run
    exact_algos: tuple[str, ...] = ()
    exact_task: str = "jax_mpe:simple_spread"
    exact_seed: int = 0
    exact_steps: int = 4_000
    exact_overrides: tuple[tuple[str, str], ...] = ()

    def specs(self) -> list[RunSpec]:
        """Every run of the suite, in a stable order."""
        out = []
        for algo in self.algos:
            for env_task, steps in self.tasks:
                family, task = env_task.split(":", 1)
                out += [RunSpec(algo, family, task, seed, steps, self.overrides) for seed in self.seeds]
        return out

    def exact_specs(self) -> list[RunSpec]:
        """The exact slice: one seed per algorithm on one task, a short budget."""
        family, task = self.exact_task.split(":", 1)
        return [RunSpec(a, family, task, self.exact_seed, self.exact_steps, self.exact_overrides)
                for a in self.exact_algos or self.algos]

    def task_keys(self) -> list[str]:
        return [t for t, _ in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        """JSON form of everything that determines the runs, as stored in the manifest and compared
        on every check (the description is prose: it may change without a new reference)."""
        d = dataclasses.asdict(self)
        d.pop("description")
        return json.loads(json.dumps(d))


SUITES: dict[str, Suite] = {
    "smoke": Suite(
        name="smoke",
        description="MARPO, MAPPO and QMix with their default configs on one MPE and one SMAX task, "
                    "3 seeds, short budgets (6-8 minutes with 2 workers on 2 cores)",
        algos=("marpo", "mappo", "qmix"),
        tasks=(("jax_mpe:simple_spread", 80_000), ("smax:3m", 48_000)),
        seeds=(0, 1, 2),
        exact_algos=("marpo", "mappo", "qmix"),
        exact_task="jax_mpe:simple_spread",
        exact_seed=0,
        exact_steps=6_400,
    ),
    "tiny": Suite(
        name="tiny",
        description="MAPPO and MARPO on simple_spread, 3 seeds x 12.8k env steps, small evaluations: "
                    "seconds; for the tests and quick local checks",
        algos=("marpo", "mappo"),
        tasks=(("jax_mpe:simple_spread", 12_800),),
        seeds=(0, 1, 2),
        overrides=(("eval_episodes", "16"),),
        exact_algos=("mappo",),
        exact_task="jax_mpe:simple_spread",
        exact_seed=0,
        exact_steps=6_400,
        exact_overrides=(("eval_episodes", "16"),),
    ),
}
"""Built-in suites. ``smoke`` is the one CI checks; changing its definition requires a new
reference (``--update``): a reference made for another definition is refused."""


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise RegressError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    return SUITES[name]


# --------------------------------------------------------------------------------------------
# deterministic training


def set_deterministic() -> None:
    """The settings every regression run trains under: one torch thread (reductions then do not
    depend on the core count) and deterministic torch algorithms (CPU kernels here have them)."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """:func:`set_deterministic` for the duration, then the previous settings (in-process runs)."""
    import torch

    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    set_deterministic()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn)


def _worker_init() -> None:
    set_deterministic()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _train_one(spec: RunSpec, results: str, study: str) -> tuple[str, str, str, float]:
    from marpo_bench.train import train_run

    t0 = time.perf_counter()
    res = train_run(spec, Path(results), study)
    return res.run_id, res.status, res.message, time.perf_counter() - t0


@dataclass
class TrainOutcome:
    """What happened to one run of a regression re-run."""

    run_id: str
    status: str
    message: str
    seconds: float


Job = tuple[RunSpec, str]  # a run and the study it goes to


def train_jobs(jobs: Sequence[Job], results: Path, workers: int, console: Console | None = None
               ) -> list[TrainOutcome]:
    """Train every ``(spec, study)`` into ``results/study`` under :func:`set_deterministic`: in this
    process (``workers <= 1``, in order) or in one pool of ``workers`` spawned processes, the most
    expensive runs first (each process compiles the JAX envs once for all its runs)."""
    say = (lambda msg: console.print(msg, highlight=False)) if console else (lambda msg: None)
    out: list[TrainOutcome] = []
    n = len(jobs)

    def done(o: TrainOutcome) -> None:
        out.append(o)
        extra = f": {o.message}" if o.message else ""
        say(f"  [{len(out)}/{n}] {o.run_id} {o.status} in {o.seconds:.1f} s{extra}")

    if workers <= 1:
        with deterministic_torch():
            for spec, study in jobs:
                done(TrainOutcome(*_train_one(spec, str(results), study)))
        return out

    import multiprocessing as mp

    order = sorted(jobs, key=lambda j: (-_cost(j[0]), j[1], j[0].run_id))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    futures: dict[Future, RunSpec] = {}
    try:
        for spec, study in order:
            futures[pool.submit(_train_one, spec, str(results), study)] = spec
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                spec = futures[fut]
                try:
                    done(TrainOutcome(*fut.result()))
                except Exception as exc:  # a worker died: the run counts as failed
                    done(TrainOutcome(spec.run_id, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0], 0.0))
    except BaseException:
        for p in list(getattr(pool, "_processes", {}).values()):  # private, but the only handle
            with contextlib.suppress(OSError):
                p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return out


def train_specs(specs: Sequence[RunSpec], results: Path, study: str, workers: int,
                console: Console | None = None) -> list[TrainOutcome]:
    """:func:`train_jobs` for runs of one study."""
    return train_jobs([(s, study) for s in specs], results, workers, console)


def _cost(spec: RunSpec) -> float:
    """Relative cost of a run (its family's ``cost`` hint per env step): orders the pool's queue,
    longest first."""
    from marpo_bench.registry import env_family

    return spec.steps * env_family(spec.env).cost.get(spec.algo, 1.0)


# --------------------------------------------------------------------------------------------
# the reference on disk


def _now() -> datetime:
    return datetime.now(UTC)


# Vector-ISA flags (Linux /proc/cpuinfo names) that select different float kernels in torch's BLAS
# and in XLA's host-compiled code; two CPUs that differ in any of them may round differently.
_ISA_PREFIXES = ("avx", "fma", "amx", "f16c", "sse4")


def cpu_kind() -> str:
    """The CPU model and its vector-ISA extensions: what bit-for-bit reproducibility depends on
    beyond the package versions (seen: the same code and versions on two AVX-512 hosts differed at
    the 1e-7 level within a few thousand env steps)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):  # Linux; elsewhere the platform's processor string
        for line in Path("/proc/cpuinfo").read_text("utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first CPU's lines
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = " ".join(sorted(f for f in fields.get("flags", "").split() if f.startswith(_ISA_PREFIXES)))
    return f"{model} [{flags}]" if flags else model


def machine_info() -> dict[str, Any]:
    """The machine kind the numbers depend on (no host name, no paths)."""
    import torch

    from marpo_bench.train import _versions

    return {
        "cpus": os.cpu_count(), "machine": platform.machine(), "system": platform.system(), "cpu": cpu_kind(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": 1,
        "deterministic_algorithms": True, "versions": _versions(),
    }


def exact_is_binding(reference_machine: dict[str, Any], here: dict[str, Any]) -> bool:
    """Whether a bit-for-bit difference from the reference means the code changed: only when the
    reference was recorded on this CPU kind with these package versions. Elsewhere float kernels
    may round differently, so a difference says nothing about the code (the stat check decides)."""
    return (reference_machine.get("cpu") is not None and reference_machine.get("cpu") == here.get("cpu")
            and not _machine_differences(reference_machine, here))


def read_manifest(reference: Path) -> dict[str, Any]:
    """Read and validate ``<reference>/reference.json`` (RegressError / StoreError with one line)."""
    reference = Path(reference)
    show = store._show(reference)
    if not reference.is_dir():
        raise RegressError(f"reference directory {show} does not exist; create it with "
                           f"`marpo-bench regress --update --reason ...` or check --reference")
    path = reference / MANIFEST
    if not path.is_file():
        raise RegressError(f"{show} is not a regression reference (no {MANIFEST}); check --reference "
                           f"or create one with `marpo-bench regress --update --reason ...`")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegressError(f"{store._show(path)} is unreadable ({type(exc).__name__}); "
                           f"restore it from git or regenerate the reference with --update") from None
    if not isinstance(manifest, dict):
        raise RegressError(f"{store._show(path)} does not hold a JSON object; restore it from git")
    version = manifest.get("schema_version")
    if version != store.SCHEMA_VERSION:
        raise RegressError(
            f"reference {show} was written with schema version {version}, this marpo-bench reads version "
            f"{store.SCHEMA_VERSION}; regenerate it with `marpo-bench regress --update --reason ...`")
    if manifest.get("format") != REFERENCE_FORMAT:
        raise RegressError(f"reference {show} has layout format {manifest.get('format')}, this marpo-bench "
                           f"reads format {REFERENCE_FORMAT}; regenerate it with --update")
    for key in ("suite", "definition", "history"):
        if key not in manifest:
            raise RegressError(f"{store._show(path)} lacks {key!r} (corrupt); restore it from git")
    return manifest


def check_suite(manifest: dict[str, Any], suite: Suite, reference: Path) -> None:
    """The reference must be of ``suite`` and of its current definition."""
    show = store._show(Path(reference))
    if manifest["suite"] != suite.name:
        raise RegressError(f"reference {show} is of suite {manifest['suite']!r}, not {suite.name!r}; "
                           f"pass --suite {manifest['suite']} or another --reference")
    want, have = suite.to_dict(), manifest["definition"]
    if have != want:
        keys = sorted(k for k in set(want) | set(have or {}) if (have or {}).get(k) != want.get(k))
        raise RegressError(f"reference {show} was made for another definition of suite {suite.name!r} "
                           f"(differs in {', '.join(keys)}); regenerate it with --update --reason ...")


def load_reference(reference: Path, suite: Suite) -> dict[str, Any]:
    """Validate a whole reference before anything trains: manifest, suite, and every stored run."""
    manifest = read_manifest(reference)
    check_suite(manifest, suite, reference)
    for study, specs in ((SUITE_STUDY, suite.specs()), (EXACT_STUDY, suite.exact_specs())):
        records, _ = store.load_study(Path(reference) / study)  # StoreError on other schema versions
        have = {r["run_id"]: r for r in records}
        missing = [s.run_id for s in specs if s.run_id not in have]
        if missing:
            raise RegressError(f"reference {store._show(Path(reference) / study)} lacks run {missing[0]} of "
                               f"suite {suite.name!r} ({len(missing)} missing); regenerate it with --update")
        bad = [rid for rid in (s.run_id for s in specs) if have[rid]["status"] != "complete"]
        if bad:
            raise RegressError(f"reference run {bad[0]} is {have[bad[0]]['status']}, not complete; "
                               f"regenerate the reference with --update")
    return manifest


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


def first_difference(ref_run: Path, cand_run: Path) -> Difference | None:
    """The first difference between two stored runs (None when identical): resolved config, then
    evaluation points, then metrics row by row (env steps ascending), columns in schema order.
    ``wall_seconds`` is ignored; floats are compared bit for bit (NaN equals NaN)."""
    ref_rec, cand_rec = store.read_run_json(ref_run), store.read_run_json(cand_run)
    run_id = ref_rec["run_id"]
    if cand_rec["status"] != "complete":
        return Difference(run_id, "failed", candidate=f"is {cand_rec['status']}"
                          + (f" ({cand_rec['message']})" if cand_rec.get("message") else ""))
    cfg = _config_difference(ref_rec.get("config") or {}, cand_rec.get("config") or {})
    if cfg:
        return Difference(run_id, "config", cfg[0], reference=cfg[1], candidate=cfg[2])
    a, b = store.read_metrics(ref_run), store.read_metrics(cand_run)
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


def compare_exact(ref_study: Path, cand_study: Path, run_ids: Sequence[str]) -> list[Difference]:
    """The first difference of each run in ``run_ids`` (identical runs are left out)."""
    out = []
    for rid in sorted(run_ids):
        cand_run = Path(cand_study) / "runs" / rid
        if not (cand_run / store.RUN_JSON).is_file():
            out.append(Difference(rid, "missing"))
            continue
        diff = first_difference(Path(ref_study) / "runs" / rid, cand_run)
        if diff is not None:
            out.append(diff)
    return out


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
    from marpo_bench.analysis import normalise

    y = np.clip(normalise(raw, env, task), 0.0, 1.0)
    x = steps.astype(np.float64)
    if x.size < 2 or x[-1] <= x[0]:
        return float(y[-1])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def study_scores(study: Path, suite: Suite, *, require_all: bool) -> ScoreData:
    """Final and AUC scores of every (algorithm, task) of ``suite`` in ``study``.

    Runs that did not complete are listed in ``failed``. An (algorithm, task) with no run at all
    is bad input when ``require_all`` (a ``--candidate`` that is not this suite), else a failure.
    """
    from marpo_bench.analysis import AnalysisError, load_scores

    records, _ = store.load_study(study)
    failed: dict[str, list[str]] = {}
    present = {(r["algo"], f"{r['env']}:{r['task']}") for r in records}
    for r in records:
        if r["status"] != "complete" and r["algo"] in suite.algos:
            failed.setdefault(r["algo"], []).append(r["run_id"])
    for algo in suite.algos:
        for key in suite.task_keys():
            if (algo, key) not in present:
                if require_all:
                    raise RegressError(f"study {store._show(study)} has no run of {algo} on {key}; a candidate "
                                       f"needs every algorithm x task of suite {suite.name!r}")
                failed.setdefault(algo, []).append(f"{algo} on {key} (no run)")
    try:
        data = load_scores(study, LAST_K)
    except AnalysisError as exc:
        if any(failed.values()):
            return ScoreData({}, {}, {}, failed, [str(exc)])
        raise RegressError(f"study {store._show(study)}: {exc}") from None
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
    from marpo_bench.analysis import aggregate_estimates, probability_of_improvement

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


# --------------------------------------------------------------------------------------------
# the check


@dataclass
class RegressResult:
    """Everything a regression check found; ``exit_code`` follows the module doc."""

    exit_code: int = EXIT_OK
    differences: list[Difference] = field(default_factory=list)
    exact_checked: bool = False
    exact_binding: bool = True  # False: the reference is from another CPU kind / versions (see exact_is_binding)
    comparisons: list[Comparison] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)  # algo -> better / same / worse / failed
    identical: dict[str, str] = field(default_factory=dict)  # algo -> yes / no / n/a (stat re-run vs reference)
    failed: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _empty_dir_or_absent(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RegressError(f"{what} {store._show(path)} exists and is not empty; give a new directory "
                           f"(runs already there would be reused instead of re-trained)")


def validate_request(reference: Path, suite_name: str, mode: str, candidate: Path | None, tolerance: float,
                     workers: int, out: Path | None) -> tuple[Suite, dict[str, Any]]:
    """Every check on the arguments and the stored reference, before anything trains."""
    if mode not in MODES:
        raise RegressError(f"unknown --mode {mode!r}; valid: {', '.join(MODES)}")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise RegressError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    if workers <= 0:
        raise RegressError(f"--workers must be positive, got {workers}")
    if candidate is not None and mode == "exact":
        raise RegressError("--candidate is a study for --mode stat (or both); exact mode re-trains its slice")
    suite = get_suite(suite_name)
    manifest = load_reference(reference, suite)
    if candidate is not None:
        store.load_study(candidate)  # StoreError: missing, empty, other schema version
        study_scores(candidate, suite, require_all=True)
    if out is not None:
        _empty_dir_or_absent(out, "--out")
    return suite, manifest


def run_regress(reference: Path, suite_name: str = "smoke", mode: str = "both", *, candidate: Path | None = None,
                tolerance: float = DEFAULT_TOLERANCE, workers: int = 1, out: Path | None = None,
                console: Console | None = None) -> RegressResult:
    """The check (module doc). Raises RegressError / StoreError on bad input before any training."""
    console = console or Console()
    reference = Path(reference)
    suite, manifest = validate_request(reference, suite_name, mode, candidate, tolerance, workers, out)
    res = RegressResult()
    here = machine_info()
    there = manifest.get("machine") or {}
    env_notes = _machine_differences(there, here)
    with contextlib.ExitStack() as stack:
        work = Path(out) if out is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="marpo-bench-regress-")))
        work.mkdir(parents=True, exist_ok=True)
        jobs: list[Job] = []
        if mode in ("exact", "both"):
            jobs += [(s, EXACT_STUDY) for s in suite.exact_specs()]
            console.print(f"[bold]exact[/bold]: re-training the slice of suite {suite.name} "
                          f"({len(suite.exact_specs())} runs: {suite.exact_task}, seed {suite.exact_seed}, "
                          f"{suite.exact_steps:,} env steps)", highlight=False)
        if mode in ("stat", "both") and candidate is None:
            jobs += [(s, SUITE_STUDY) for s in suite.specs()]
            console.print(f"[bold]stat[/bold]: re-training suite {suite.name} ({len(suite.specs())} runs)",
                          highlight=False)
        if jobs:
            console.print(f"training {len(jobs)} runs with {workers} worker{'s' if workers > 1 else ''}",
                          highlight=False)
            t0 = time.perf_counter()
            outcomes = train_jobs(jobs, work, workers, console)
            res.timings["train"] = time.perf_counter() - t0
            exact_ids = {s.run_id for s, study in jobs if study == EXACT_STUDY}
            for o in outcomes:
                if o.status != "complete" and o.run_id in exact_ids:
                    res.failed.setdefault(o.run_id.split("__", 1)[0], []).append(o.run_id)
        if mode in ("exact", "both"):
            res.exact_checked = True
            res.differences = compare_exact(reference / EXACT_STUDY, work / EXACT_STUDY,
                                            [s.run_id for s in suite.exact_specs()])
        if mode in ("stat", "both"):
            cand_study = work / SUITE_STUDY if candidate is None else Path(candidate)
            t0 = time.perf_counter()
            ref_scores = study_scores(reference / SUITE_STUDY, suite, require_all=True)
            cand_scores = study_scores(cand_study, suite, require_all=candidate is not None)
            _check_budgets(ref_scores, cand_scores, suite)
            res.comparisons = compare_scores(ref_scores, cand_scores, suite.algos, tolerance)
            for algo, runs in cand_scores.failed.items():
                res.failed.setdefault(algo, []).extend(runs)
            res.notes += cand_scores.notes
            res.identical = _identical(reference / SUITE_STUDY, cand_study, suite)
            for algo in suite.algos:
                kinds = [c.verdict for c in res.comparisons if c.algo == algo]
                if cand_scores.failed.get(algo) or not kinds:
                    res.verdicts[algo] = "failed"
                elif "worse" in kinds:
                    res.verdicts[algo] = "worse"
                elif "better" in kinds:
                    res.verdicts[algo] = "better"
                else:
                    res.verdicts[algo] = "same"
            res.timings["statistics"] = time.perf_counter() - t0
    res.exact_binding = exact_is_binding(there, here)
    worse = any(v in ("worse", "failed") for v in res.verdicts.values()) or any(res.failed.values())
    if worse:
        res.exit_code = EXIT_WORSE
    elif res.differences and res.exact_binding:
        res.exit_code = EXIT_CHANGED
    if res.differences and not res.exact_binding:
        why = "; ".join(env_notes) if env_notes else "the reference does not record its CPU kind"
        res.notes.append(f"this machine differs from the reference's ({why}): float kernels may round differently "
                         f"there, so the exact differences above are shown but do not fail the check (the stat "
                         f"check decides); for a binding exact check on this machine kind, re-record the "
                         f"reference here with --update")
    print_result(res, suite, tolerance, console)
    return res


def _machine_differences(ref: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in ("cpu", "torch_cpu_capability", "machine", "system"):
        if key == "cpu" and ref.get(key) is None:
            continue  # an older reference without it: exact_is_binding says so
        if ref.get(key) != now.get(key):
            out.append(f"{key} {ref.get(key)} vs {now.get(key)}")
    rv, nv = ref.get("versions") or {}, now.get("versions") or {}
    for pkg in ("python", "torch", "numpy", "jax", "jaxlib", "jaxmarl", "mpe2"):
        if rv.get(pkg) != nv.get(pkg):
            out.append(f"{pkg} {rv.get(pkg)} vs {nv.get(pkg)}")
    return out


def _check_budgets(ref: ScoreData, cand: ScoreData, suite: Suite) -> None:
    for key, budget in ref.budgets.items():
        have = cand.budgets.get(key)
        if have is not None and have != budget:
            raise RegressError(f"the candidate's budget on {key} is {have:,} env steps, the reference's "
                               f"{budget:,}; compare studies of the same suite {suite.name!r}")


def _identical(ref_study: Path, cand_study: Path, suite: Suite) -> dict[str, str]:
    """Per algorithm: whether the candidate's runs of the suite equal the reference's bit for bit
    (``n/a`` when the candidate has other runs, e.g. other seeds)."""
    out = {}
    cand_runs = cand_study / "runs"
    for algo in suite.algos:
        ids = [s.run_id for s in suite.specs() if s.algo == algo]
        shared = [i for i in ids if (cand_runs / i / store.RUN_JSON).is_file()]
        if not shared:
            out[algo] = "n/a"
            continue
        diffs = compare_exact(ref_study, cand_study, shared)
        out[algo] = "yes" if not diffs and len(shared) == len(ids) else ("no" if diffs else "partly")
    return out


# --------------------------------------------------------------------------------------------
# output


_STYLE = {"better": "green", "same": "default", "worse": "bold red", "failed": "bold red"}


def print_result(res: RegressResult, suite: Suite, tolerance: float, console: Console) -> None:
    """Exact differences, then the stat table of verdicts, then a one-line summary."""
    if res.exact_checked:
        if res.differences:
            first = res.differences[0]
            head = ("[bold yellow]behaviour changed[/bold yellow] (exact)" if res.exact_binding else
                    "[yellow]differs from the reference[/yellow] (exact, another machine kind: not binding)")
            console.print(f"{head}: {len(res.differences)} of "
                          f"{len(suite.exact_specs())} runs differ from the reference; first: {first.describe()}",
                          highlight=False, soft_wrap=True)
            for d in res.differences[1:]:
                console.print(f"  also: {d.describe()}", highlight=False, soft_wrap=True)
        else:
            console.print(f"exact: all {len(suite.exact_specs())} runs of the slice equal the reference bit for bit",
                          highlight=False)
    if res.verdicts:
        table = Table(title=f"regression vs reference (suite {suite.name}; tolerance {tolerance:g}, "
                            f"IQM and P with {CONFIDENCE:.0%} CIs)", header_style="bold")
        for col in ("algo", "score", "reference IQM", "candidate IQM", "Δ IQM", "P(cand > ref)", "identical",
                    "verdict"):
            table.add_column(col, justify="left" if col in ("algo", "score", "verdict") else "right")
        for algo in suite.algos:
            rows = [c for c in res.comparisons if c.algo == algo]
            verdict = res.verdicts.get(algo, "failed")
            if not rows:
                table.add_row(algo, "-", "-", "-", "-", "-", res.identical.get(algo, "-"),
                              f"[{_STYLE['failed']}]failed[/]")
            for i, c in enumerate(rows):
                table.add_row(
                    algo if i == 0 else "", c.kind, str(c.ref_iqm), str(c.cand_iqm), f"{c.delta:+.3f}", str(c.poi),
                    res.identical.get(algo, "-") if i == 0 else "",
                    f"[{_STYLE[c.verdict]}]{c.verdict}[/]" + (f" -> [{_STYLE[verdict]}]{verdict}[/]"
                                                              if i == len(rows) - 1 and verdict != c.verdict else ""))
        console.print(table)
        tasks = suite.task_keys()
        detail = Table(title="per task: mean normalised score over seeds (reference -> candidate)", header_style="bold")
        detail.add_column("algo")
        for t in tasks:
            detail.add_column(f"{t} final", justify="right")
            detail.add_column(f"{t} AUC", justify="right")
        for algo in suite.algos:
            by_kind = {c.kind: c for c in res.comparisons if c.algo == algo}
            if not by_kind:
                continue
            cells = []
            for i in range(len(tasks)):
                for kind in SCORE_KINDS:
                    c = by_kind[kind]
                    cells.append(f"{c.ref_task_means[i]:.3f} -> {c.cand_task_means[i]:.3f}")
            detail.add_row(algo, *cells)
        console.print(detail)
    for algo, runs in res.failed.items():
        console.print(f"[bold red]failed[/bold red]: {algo}: {', '.join(runs)}", highlight=False, soft_wrap=True)
    for note in dict.fromkeys(res.notes):
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if res.exit_code == EXIT_WORSE:
        worse = [a for a, v in res.verdicts.items() if v in ("worse", "failed")] or sorted(res.failed)
        console.print(f"[bold red]FAIL[/bold red]: worse than the reference: {', '.join(worse)}", highlight=False)
    elif res.exit_code == EXIT_CHANGED:
        console.print("[bold yellow]CHANGED[/bold yellow]: behaviour changed, nothing judged worse; if the change "
                      "is intended, record it: marpo-bench regress --update --reason \"...\"", highlight=False)
    else:
        console.print("[bold green]PASS[/bold green]", highlight=False)
    if res.timings:
        console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.timings.items()), highlight=False)


# --------------------------------------------------------------------------------------------
# writing a reference


def _display_path(path: Path) -> str:
    """A path for the README's command: relative to the working directory, never absolute."""
    try:
        rel = Path(path).absolute().relative_to(Path.cwd())
        return str(rel)
    except ValueError:
        return Path(path).name


def update_command(reference: Path, suite: Suite, workers: int, reason: str) -> str:
    return (f"marpo-bench regress --reference {_display_path(reference)} --suite {suite.name} --update "
            f"--workers {workers} --reason {json.dumps(reason)}")


def _strip_run(run_path: Path) -> None:
    """Make a stored run committable: no checkpoint, no host name or pid of the writer."""
    (run_path / store.CHECKPOINT_PT).unlink(missing_ok=True)
    for tmp in run_path.glob(".*.tmp"):
        tmp.unlink()
    record = store.read_run_json(run_path)
    record.pop("writer", None)
    record.pop("schema_version", None)
    store.write_run_json(run_path, record, overwrite=True)


def _old_history(reference: Path) -> list[dict[str, Any]]:
    """The history of the reference being replaced (whatever its version), or none."""
    try:
        old = json.loads((Path(reference) / MANIFEST).read_text("utf-8"))
        hist = old.get("history") if isinstance(old, dict) else None
        return [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def write_reference(reference: Path, suite_name: str, reason: str, *, workers: int = 1,
                    console: Console | None = None,
                    train: Callable[[Sequence[Job], Path, int, Console | None], list[TrainOutcome]]
                    = train_jobs) -> dict[str, Any]:
    """Re-train ``suite`` and its exact slice and replace ``reference`` with them (``--update``).

    The old reference stays until every run has completed; then the new one is moved into place
    and a dated history entry with ``reason`` is appended (manifest and README). Returns the new
    manifest. Refuses to overwrite a directory that is not a reference.
    """
    console = console or Console()
    reference = Path(reference)
    reason = (reason or "").strip()
    if not reason:
        raise RegressError("--update needs --reason \"why the reference changes\" (recorded in its README)")
    if "\n" in reason:
        raise RegressError("--reason must be one line")
    if workers <= 0:
        raise RegressError(f"--workers must be positive, got {workers}")
    suite = get_suite(suite_name)
    if reference.exists():
        if not reference.is_dir():
            raise RegressError(f"--reference {store._show(reference)} is a file, not a directory")
        if any(reference.iterdir()) and not (reference / MANIFEST).is_file():
            raise RegressError(f"{store._show(reference)} is not empty and not a regression reference (no "
                               f"{MANIFEST}); refusing to replace it")
    reference.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{reference.name}.new-", dir=reference.parent))
    os.chmod(staging, 0o777 & ~store._umask())  # mkdtemp makes it private; a reference is shared
    try:
        jobs = [(s, EXACT_STUDY) for s in suite.exact_specs()] + [(s, SUITE_STUDY) for s in suite.specs()]
        console.print(f"training suite {suite.name} and its exact slice: {len(jobs)} runs, {workers} "
                      f"worker{'s' if workers > 1 else ''}", highlight=False)
        t0 = time.perf_counter()
        outcomes = train(jobs, staging, workers, console)
        timings = round(time.perf_counter() - t0, 1)
        bad = [o for o in outcomes if o.status != "complete"]
        if bad or len(outcomes) != len(jobs):
            what = f"run {bad[0].run_id} {bad[0].status} ({bad[0].message})" if bad else "runs are missing"
            raise RegressError(f"{what}; the reference was not changed")
        for spec, study in jobs:
            _strip_run(store.run_dir(staging, study, spec.run_id))
        now = _now()
        machine = machine_info()
        from marpo_bench.train import _git_commit, _uncommitted_changes

        entry = {"date": now.date().isoformat(), "time": now.isoformat(timespec="seconds"), "reason": reason,
                 "command": update_command(reference, suite, workers, reason), "git_commit": _git_commit(),
                 "uncommitted_changes": _uncommitted_changes(), "train_seconds": timings}
        staged = study_scores(staging / SUITE_STUDY, suite, require_all=True)
        scores = {a: {k: [float(x.mean()) for x in staged.scores[a][k]] for k in SCORE_KINDS} for a in suite.algos}
        manifest = {
            "format": REFERENCE_FORMAT, "schema_version": store.SCHEMA_VERSION, "suite": suite.name,
            "definition": suite.to_dict(), "created": entry["time"], "command": entry["command"],
            "machine": machine, "git_commit": entry["git_commit"], "uncommitted_changes": entry["uncommitted_changes"],
            "train_seconds": timings, "scores": scores,
            "runs": {SUITE_STUDY: [s.run_id for s in suite.specs()],
                     EXACT_STUDY: [s.run_id for s in suite.exact_specs()]},
            "history": _old_history(reference) + [entry],
        }
        store.atomic_write_json(staging / MANIFEST, manifest)
        manifest["size_bytes"] = _dir_size(staging)
        store.atomic_write_bytes(staging / README, render_readme(manifest).encode("utf-8"))
        _swap(staging, reference)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    console.print(f"wrote reference {store._show(reference)} ({_dir_size(reference) / 1e3:.0f} kB)", highlight=False)
    return manifest


def _swap(new: Path, target: Path) -> None:
    """Move ``new`` into place as ``target``; the old target is removed only after the move."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def render_readme(manifest: dict[str, Any]) -> str:
    """The reference's README.md, generated from its manifest (rewritten by every ``--update``)."""
    d = manifest["definition"]
    m = manifest["machine"]
    v = m.get("versions", {})
    sets = " ".join(f"`--set {k}={val}`" for k, val in d["overrides"]) or "none (each algorithm's defaults)"
    exact_sets = " ".join(f"`--set {k}={val}`" for k, val in d["exact_overrides"]) or "none"
    n_suite, n_exact = len(manifest["runs"][SUITE_STUDY]), len(manifest["runs"][EXACT_STUDY])
    seeds = ", ".join(map(str, d["seeds"]))
    runs = "\n".join(f"| {', '.join(d['algos'])} | `{t}` | {steps:,} | {seeds} |" for t, steps in d["tasks"])
    runs += (f"\n| {', '.join(d['exact_algos'] or d['algos'])} (exact slice) | `{d['exact_task']}` | "
             f"{d['exact_steps']:,} | {d['exact_seed']} |")
    tasks = [t for t, _ in d["tasks"]]
    sc = manifest.get("scores") or {}
    score_rows = "\n".join(
        f"| {a} | " + " | ".join(f"{sc[a]['final'][i]:.3f} / {sc[a]['auc'][i]:.3f}" for i in range(len(tasks))) + " |"
        for a in d["algos"] if a in sc)
    score_head = "| algo | " + " | ".join(f"`{t}` final / AUC" for t in tasks) + " |\n|---|" + "---|" * len(tasks)

    def commit(h: dict) -> str:
        if not h.get("git_commit"):
            return ""
        dirty = " plus uncommitted changes" if h.get("uncommitted_changes") else ""
        return f"; code: commit {str(h['git_commit'])[:12]}{dirty}"

    hist = "\n".join(f"- {h.get('date', '?')}: {h.get('reason', '')} (`{h.get('command', '')}`{commit(h)})"
                     for h in manifest["history"])
    return f"""# Regression reference: suite `{manifest['suite']}`

Real runs stored for `marpo-bench regress` (CI runs it after the tests; the check and its rules are
documented in `marpo_bench/regress.py`). Generated by `marpo-bench regress --update`: do not edit by
hand (the next `--update` rewrites this file and keeps the history below). The `smoke` regression
suite is not `marpo-bench run --preset smoke` (a plumbing check that does not learn).

## What is stored

| algorithms | task | env steps per run | seeds |
|---|---|---|---|
{runs}

Overrides: suite {sets}; exact slice {exact_sets}. `suite/` holds {n_suite} runs, `exact/` {n_exact}
(`suite/runs/<run_id>/` and `exact/runs/<run_id>/`, each with `run.json` and `metrics.parquet`:
no `checkpoint.pt`, no host name or pid of the writer). `reference.json` is the manifest: suite
definition, store schema version {manifest['schema_version']}, machine, scores, history. Size:
{manifest.get('size_bytes', 0) / 1e3:.0f} kB.

Mean normalised score over seeds (final = last {LAST_K} evaluation points; AUC = mean of the
learning curve over the budget; 0 = random policy / no wins, 1 = scripted oracle / all wins):

{score_head}
{score_rows}

## How it was produced

```
{manifest['command']}
```

Machine kind: {m.get('cpus')}-core {m.get('machine')} CPU ({m.get('system')}; torch CPU kernels
{m.get('torch_cpu_capability')}), Python {v.get('python')}, torch {v.get('torch')}, numpy {v.get('numpy')},
jax {v.get('jax')}, jaxmarl {v.get('jaxmarl')}. Every run trains with one torch thread and
`torch.use_deterministic_algorithms(True)`; all {n_suite + n_exact} runs took {manifest.get('train_seconds')} s
of wall time.

## How it is checked

`marpo-bench regress --reference results/reference --suite {manifest['suite']} --mode both --workers 2`
(what `.ci/run` runs after the tests):

- exact: re-trains the slice and compares every metric bit for bit (`wall_seconds` aside) and
  the resolved config; a difference is reported as the first differing run, metric and env step
  (exit code 3: behaviour changed, not a verdict on quality).
- stat: re-trains the suite with the same seeds (on this machine kind: the same numbers, shown
  as `identical`) and compares each algorithm's normalised final and AUC scores with these
  using the report's statistics: *worse* (exit code 1) when its IQM drops by more than the
  tolerance (default {DEFAULT_TOLERANCE:g}) and the 95% CI of P(candidate > reference) lies below
  1/2; *better* symmetrically; a failed run is worse. `--candidate STUDY` judges a given study.

Bit-for-bit equality needs the same machine kind (the CPU instruction set torch's kernels use,
the library versions); elsewhere exact mode reports changes and names what differs, and stat
mode still judges. An intended change: `marpo-bench regress --update --reason "..."`, then commit.

## History

{hist}
"""


def check_update_args(update: bool, reason: str | None, candidate: Path | None, out: Path | None) -> None:
    """Argument combinations of ``--update`` (RegressError)."""
    if update and not (reason or "").strip():
        raise RegressError("--update needs --reason \"why the reference changes\" (recorded in its README)")
    if reason is not None and not update:
        raise RegressError("--reason is only used with --update")
    if update and (candidate is not None or out is not None):
        raise RegressError("--update re-trains the suite; it takes no --candidate or --out")
