"""A regression reference on disk: reading and validating it, and writing a new one.

    <reference>/reference.json         manifest: suite + its definition, schema version, machine, history
    <reference>/README.md              how it was produced (the exact command), machine kind, history
    <reference>/suite/runs/<run_id>/   the suite's runs (run.json + metrics.parquet; no checkpoint.pt)
    <reference>/exact/runs/<run_id>/   the exact slice's runs
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from marpo_bench import provenance, store
from marpo_bench.executors.pool import Job
from marpo_bench.regress.compare import DEFAULT_TOLERANCE, LAST_K, SCORE_KINDS, Study, study_scores
from marpo_bench.regress.suites import EXACT_STUDY, SUITE_STUDY, RegressError, Suite, get_suite, train_jobs
from marpo_bench.train import RunResult

REFERENCE_FORMAT = 1
"""Layout of a reference directory and its manifest (the run files carry ``store.SCHEMA_VERSION``)."""

MANIFEST = "reference.json"
README = "README.md"


def _now() -> datetime:
    return datetime.now(UTC)


def exact_is_binding(reference_machine: dict[str, Any], here: dict[str, Any]) -> bool:
    """Whether a bit-for-bit difference from the reference means the code changed: only when the
    reference was recorded on this CPU kind with these package versions. Elsewhere float kernels
    may round differently, so a difference says nothing about the code (the stat check decides)."""
    return (reference_machine.get("cpu") is not None and reference_machine.get("cpu") == here.get("cpu")
            and not machine_differences(reference_machine, here))


def read_manifest(reference: Path) -> dict[str, Any]:
    """Read and validate ``<reference>/reference.json`` (RegressError / StoreError with one line)."""
    reference = Path(reference)
    show = store.show_path(reference)
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
        raise RegressError(f"{store.show_path(path)} is unreadable ({type(exc).__name__}); "
                           f"restore it from git or regenerate the reference with --update") from None
    if not isinstance(manifest, dict):
        raise RegressError(f"{store.show_path(path)} does not hold a JSON object; restore it from git")
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
            raise RegressError(f"{store.show_path(path)} lacks {key!r} (corrupt); restore it from git")
    return manifest


def check_suite(manifest: dict[str, Any], suite: Suite, reference: Path) -> None:
    """The reference must be of ``suite`` and of its current definition."""
    show = store.show_path(Path(reference))
    if manifest["suite"] != suite.name:
        raise RegressError(f"reference {show} is of suite {manifest['suite']!r}, not {suite.name!r}; "
                           f"pass --suite {manifest['suite']} or another --reference")
    want, have = suite.to_dict(), manifest["definition"]
    if have != want:
        keys = sorted(k for k in set(want) | set(have or {}) if (have or {}).get(k) != want.get(k))
        raise RegressError(f"reference {show} was made for another definition of suite {suite.name!r} "
                           f"(differs in {', '.join(keys)}); regenerate it with --update --reason ...")


@dataclass
class Reference:
    """A validated reference, each of its studies read once."""

    manifest: dict[str, Any]
    suite_runs: Study
    exact_runs: Study


def load_reference(reference: Path, suite: Suite) -> Reference:
    """Validate a whole reference before anything trains: manifest, suite, and every stored run."""
    manifest = read_manifest(reference)
    check_suite(manifest, suite, reference)
    studies = []
    for study, specs in ((SUITE_STUDY, suite.specs()), (EXACT_STUDY, suite.exact_specs())):
        runs = Study.read(Path(reference) / study)  # StoreError on other schema versions
        missing = [s.run_id for s in specs if s.run_id not in runs.runs]
        if missing:
            raise RegressError(f"reference {store.show_path(Path(reference) / study)} lacks run {missing[0]} of "
                               f"suite {suite.name!r} ({len(missing)} missing); regenerate it with --update")
        bad = [rid for rid in (s.run_id for s in specs) if runs.runs[rid][0]["status"] != "complete"]
        if bad:
            raise RegressError(f"reference run {bad[0]} is {runs.runs[bad[0]][0]['status']}, not complete; "
                               f"regenerate the reference with --update")
        studies.append(runs)
    return Reference(manifest, *studies)


def machine_differences(ref: dict[str, Any], now: dict[str, Any]) -> list[str]:
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
    """Make a stored run committable: its record and metrics only (no checkpoint, saved policy,
    writer lock or temporary file), no host name or pid of the writer."""
    for path in run_path.iterdir():
        if path.name not in (store.RUN_JSON, store.METRICS_PARQUET):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
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
                    train: Callable[[Sequence[Job], Path, int, Console | None], list[RunResult]]
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
            raise RegressError(f"--reference {store.show_path(reference)} is a file, not a directory")
        if any(reference.iterdir()) and not (reference / MANIFEST).is_file():
            raise RegressError(f"{store.show_path(reference)} is not empty and not a regression reference (no "
                               f"{MANIFEST}); refusing to replace it")
    reference.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{reference.name}.new-", dir=reference.parent))
    os.chmod(staging, 0o777 & ~store.umask())  # mkdtemp makes it private; a reference is shared
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
        machine = provenance.machine_kind()
        entry = {"date": now.date().isoformat(), "time": now.isoformat(timespec="seconds"), "reason": reason,
                 "command": update_command(reference, suite, workers, reason), "git_commit": provenance.git_commit(),
                 "uncommitted_changes": provenance.uncommitted_changes(), "train_seconds": timings}
        staged = study_scores(Study.read(staging / SUITE_STUDY), suite, require_all=True)
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
    size = _dir_size(reference) / 1e3
    console.print(f"wrote reference {store.show_path(reference)} ({size:.0f} kB)", highlight=False)
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
    """The reference's README.md (template ``README.md.j2``), generated from its manifest and
    rewritten by every ``--update``."""
    import jinja2

    d = manifest["definition"]
    sets = " ".join(f"`--set {k}={val}`" for k, val in d["overrides"]) or "none (each algorithm's defaults)"
    exact_sets = " ".join(f"`--set {k}={val}`" for k, val in d["exact_overrides"]) or "none"
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
    env = jinja2.Environment(loader=jinja2.PackageLoader("marpo_bench.regress", "."), autoescape=False,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template("README.md.j2").render(
        manifest=manifest, m=manifest["machine"], v=manifest["machine"].get("versions", {}), runs=runs, sets=sets,
        exact_sets=exact_sets, n_suite=len(manifest["runs"][SUITE_STUDY]), n_exact=len(manifest["runs"][EXACT_STUDY]),
        size_kb=f"{manifest.get('size_bytes', 0) / 1e3:.0f}", last_k=LAST_K, score_head=score_head,
        score_rows=score_rows, tolerance=f"{DEFAULT_TOLERANCE:g}", hist=hist)


def check_update_args(update: bool, reason: str | None, candidate: Path | None, out: Path | None) -> None:
    """Argument combinations of ``--update`` (RegressError)."""
    if update and not (reason or "").strip():
        raise RegressError("--update needs --reason \"why the reference changes\" (recorded in its README)")
    if reason is not None and not update:
        raise RegressError("--reason is only used with --update")
    if update and (candidate is not None or out is not None):
        raise RegressError("--update re-trains the suite; it takes no --candidate or --out")
