"""The run store: where each run's results live on disk, in a versioned, crash-safe layout.

Layout::

    <results>/<study>/runs/<run_id>/run.json         what ran, how, and its status
    <results>/<study>/runs/<run_id>/metrics.parquet  one row per evaluation point
    <results>/<study>/runs/<run_id>/checkpoint.pt    latest training state (for resuming)
    <results>/<study>/runs/<run_id>/policy.pt        a complete run's final policy (``marpo-bench eval``)

Every file carries ``SCHEMA_VERSION``: ``run.json`` as a ``schema_version`` field, the Parquet file
in its key-value metadata, the checkpoint in a wrapper dict. Readers refuse other versions with a
one-line :class:`StoreError` instead of guessing.

Every write goes to a uniquely named temp file in the target directory, is fsynced, and is then
renamed over the target with ``os.replace``, so a crash leaves the old file or the new one, never a
half-written file. ``run.json`` with ``status == "complete"`` is the commit marker of a run: write
the final metrics (and checkpoint) first, then ``run.json``. A complete run is never overwritten
silently: :func:`write_run_json` and :func:`write_metrics` refuse unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import operator
import os
import pickle
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION: int = 1

RUN_JSON = "run.json"
METRICS_PARQUET = "metrics.parquet"
CHECKPOINT_PT = "checkpoint.pt"
POLICY_PT = "policy.pt"

PARQUET_VERSION_KEY = b"marpo_bench_schema_version"
CHECKPOINT_VERSION_KEY = "marpo_bench_schema_version"

STATUSES = ("complete", "interrupted", "failed", "running")
REQUIRED_RUN_FIELDS = ("run_id", "algo", "env", "task", "seed", "status")
# Columns joined from run.json into the long metrics frame of a study.
RUN_KEY_COLUMNS = ("run_id", "algo", "env", "task", "seed")

_F64 = pa.float64()
METRIC_COLUMNS: dict[str, pa.DataType] = {
    "env_steps": pa.int64(),
    "wall_seconds": _F64,
    "eval_return_mean": _F64,
    "eval_return_std": _F64,
    "eval_win_rate": _F64,
    "eval_episodes": pa.int64(),
    "train_return_mean": _F64,
    "policy_loss": _F64,
    "value_loss": _F64,
    "entropy": _F64,
    "approx_kl": _F64,
    "clip_fraction": _F64,
    "grad_norm": _F64,
    "reflection_term": _F64,
    "clip_low_mean": _F64,
    "clip_low_p5": _F64,
    "clip_low_p95": _F64,
    "clip_high_mean": _F64,
    "clip_high_p5": _F64,
    "clip_high_p95": _F64,
    "kl_delta": _F64,
    "epsilon": _F64,
    "td_loss": _F64,
    "q_mean": _F64,
}
"""The ``metrics.parquet`` schema in column order. ``env_steps`` is required in every row; any
other column may be omitted from a row and is then stored as missing (NaN for floats, null for
``eval_episodes``, which reads back as pandas' nullable ``Int64``)."""


class StoreError(Exception):
    """One-line, user-facing message naming the file, the problem and what to do."""


# --------------------------------------------------------------------------------------------
# paths and atomic writes


def show_path(path: Path) -> str:
    """``path`` for messages: relative to the working directory when inside it, else as given."""
    try:
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _check_component(value: str, what: str) -> None:
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ValueError(f"{what} {value!r} must be a non-empty single path component")


def check_results_dir(results: Path) -> None:
    """StoreError unless ``results`` is a directory or can be made one (nothing on its path is a file)."""
    for path in (Path(results), *Path(results).parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == Path(results) else f"lies under {show_path(path)}, a file"
                raise StoreError(f"results directory {show_path(results)} {what}; give a directory with --results")
            return


def run_dir(results: Path, study: str, run_id: str) -> Path:
    """Directory of one run, ``<results>/<study>/runs/<run_id>``; the one place that knows it."""
    _check_component(study, "study name")
    _check_component(run_id, "run id")
    return Path(results) / study / "runs" / run_id


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process umask (read without a race where the platform allows it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers and crashes see the old file or the new one, never a
    half file: unique temp file in the same directory, fsync, ``os.replace``. The temp file
    (``.<name>.<random>.tmp``) is removed if anything fails, including KeyboardInterrupt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _json_default(obj: Any) -> Any:
    """Serialise the non-JSON types that commonly end up in configs and records."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable: {obj!r}")


def as_stored(obj: Any) -> Any:
    """``obj`` as a JSON record stores it and reads it back (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(obj, default=_json_default))


def atomic_write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as pretty JSON with sorted keys (stable diffs), atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def _version_problem(what: str, path: Path, version: int) -> StoreError:
    if version > SCHEMA_VERSION:
        todo = "upgrade marpo-bench or re-run the study into a new directory"
    else:
        todo = "re-run the study into a new directory"
    return StoreError(
        f"{what} {show_path(path)} was written with schema version {version}, this marpo-bench reads "
        f"version {SCHEMA_VERSION}; {todo}"
    )


def _parse_version(raw: Any) -> int | None:
    """An integer schema version, or None when ``raw`` is not one."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(raw, str):
        raw = raw.strip()
        return int(raw) if raw.isdigit() else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    return None


# --------------------------------------------------------------------------------------------
# run.json


def write_run_json(run_path: Path, record: dict, *, overwrite: bool = False) -> None:
    """Write ``record`` as ``<run_path>/run.json`` with ``schema_version`` added, atomically.

    Refuses (StoreError) to replace a run.json whose status is ``complete`` unless
    ``overwrite=True``: the design forbids overwriting a complete run silently.
    """
    run_path = Path(run_path)
    if not overwrite:
        _refuse_if_complete(run_path, RUN_JSON)
    atomic_write_json(run_path / RUN_JSON, {**record, "schema_version": SCHEMA_VERSION})


def read_run_json(run_path: Path) -> dict:
    """Read and validate ``<run_path>/run.json`` (schema version, required fields, status)."""
    path = Path(run_path) / RUN_JSON
    fix = "delete the run directory to re-run it"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise StoreError(
            f"run file {show_path(path)} does not exist; check the path or re-run the study"
        ) from None
    except UnicodeDecodeError:
        raise StoreError(f"run file {show_path(path)} is not UTF-8 text (corrupt); {fix}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"run file {show_path(path)} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(record, dict):
        raise StoreError(f"run file {show_path(path)} does not hold a JSON object (corrupt); {fix}")
    if "schema_version" not in record:
        raise StoreError(
            f"run file {show_path(path)} has no schema_version (not written by marpo-bench); "
            f"{fix}, or move it out of the results directory"
        )
    version = _parse_version(record["schema_version"])
    if version is None:
        raise StoreError(
            f"run file {show_path(path)} has an invalid schema_version "
            f"{record['schema_version']!r} (corrupt); {fix}"
        )
    if version != SCHEMA_VERSION:
        raise _version_problem("run file", path, version)
    missing = [k for k in REQUIRED_RUN_FIELDS if k not in record]
    if missing:
        raise StoreError(
            f"run file {show_path(path)} lacks required field(s) {', '.join(missing)} (corrupt); {fix}"
        )
    if record["status"] not in STATUSES:
        raise StoreError(
            f"run file {show_path(path)} has unknown status {record['status']!r} (expected one of "
            f"{', '.join(STATUSES)}); {fix}"
        )
    return record


def run_status(run_path: Path) -> str | None:
    """The run's status from run.json, or None when the run has no run.json (never started).

    A corrupt or foreign run.json raises StoreError rather than reading as "not run", so a damaged
    run is reported instead of being silently re-run over.
    """
    if not (Path(run_path) / RUN_JSON).exists():
        return None
    return read_run_json(run_path)["status"]


def _refuse_if_complete(run_path: Path, filename: str) -> None:
    if run_status(run_path) == "complete":
        raise StoreError(
            f"run {show_path(run_path)} is complete; refusing to overwrite its {filename} "
            f"(delete the run directory to re-run it)"
        )


# --------------------------------------------------------------------------------------------
# who trains a run: an OS lock, not a pid

WRITER_LOCK = ".writer.lock"


class WriterLock:
    """An exclusive ``flock`` on a run directory's lock file, held by the process that trains the
    run for as long as it does. The OS drops it when that process ends, however it ends (``kill
    -9`` included), so a dead writer never looks alive, and a reused pid never looks like the writer
    (``os.kill(pid, 0)`` was fooled by both). Two processes cannot hold it at once: one run is never
    trained twice at the same time."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    @classmethod
    def acquire(cls, run_path: Path) -> WriterLock | None:
        """The lock of ``run_path`` (created if needed), or None when another process holds it."""
        run_path = Path(run_path)
        run_path.mkdir(parents=True, exist_ok=True)
        handle = open(run_path / WRITER_LOCK, "a")  # noqa: SIM115 (held open for the run's lifetime)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return cls(handle)

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def writer_active(run_path: Path) -> bool:
    """Whether a live process holds ``run_path``'s writer lock (on this machine's file system)."""
    path = Path(run_path) / WRITER_LOCK
    if not path.exists():
        return False
    try:
        handle = open(path, "a")  # noqa: SIM115
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def writer_info() -> dict[str, Any]:
    """Who writes a run.json: host and pid (for messages; liveness is the run's writer lock)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def remove_stale_temp_files(run_path: Path) -> None:
    """Delete temp files a killed writer left (``.<name>.<random>.tmp``, see :func:`atomic_write_bytes`)."""
    for name in (RUN_JSON, METRICS_PARQUET, CHECKPOINT_PT, POLICY_PT):
        for tmp in Path(run_path).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def mark_run(run_path: Path, base: dict, status: str, message: str, finished: str,
             record: dict | None = None) -> None:
    """Set the status of a run whose own process could not (it died, or was stopped): ``record``
    (or the stored run.json, or ``base``: the run's identity when it never wrote one) with
    ``status`` and ``message``. A complete run is left alone."""
    run_path = Path(run_path)
    with contextlib.suppress(StoreError):
        if record is None and run_status(run_path) is not None:
            record = read_run_json(run_path)
    if record is not None and record.get("status") == "complete":
        return
    run_path.mkdir(parents=True, exist_ok=True)
    write_run_json(run_path, {**base, **(record or {}), "status": status, "message": message,
                              "finished": finished, "writer": writer_info()})


# --------------------------------------------------------------------------------------------
# where a run's results go: sinks


class RunSink(Protocol):
    """Receives everything a run writes; hands over what an earlier attempt left."""

    def acquire(self) -> bool:
        """Become the run's only writer (False: another live process trains it now)."""
        ...

    def close(self) -> None:
        """Stop being its writer (always called once ``acquire`` returned True)."""
        ...

    def previous(self) -> tuple[str | None, dict | None]:
        """The earlier attempt's status (None: never started) and checkpoint state (or None)."""
        ...

    def write_record(self, record: dict) -> None:
        """Replace run.json."""
        ...

    def write_metrics(self, rows: list[dict], extra_columns: tuple[str, ...] = ()) -> None:
        """Replace metrics.parquet with all rows so far (``extra_columns``: float columns beyond
        ``METRIC_COLUMNS`` that the algorithm declares)."""
        ...

    def write_checkpoint(self, state: dict) -> None:
        """Replace checkpoint.pt (``state`` loads with ``torch.load(weights_only=True)``)."""
        ...

    def write_policy(self, policy: dict) -> None:
        """Replace policy.pt: the final policy of a complete run."""
        ...


class StoreSink:
    """Writes one run directory of the store directly (the local executor), holding its writer lock."""

    def __init__(self, run_path: Path) -> None:
        self.run_path = Path(run_path)
        self._lock: WriterLock | None = None

    def acquire(self) -> bool:
        self._lock = WriterLock.acquire(self.run_path)
        return self._lock is not None

    def close(self) -> None:
        """Release the writer lock; a complete run's lock file goes too (nothing trains it again:
        plans skip complete runs), so a finished study holds only its results."""
        if self._lock is not None:
            if run_status(self.run_path) == "complete":
                with contextlib.suppress(OSError):
                    (self.run_path / WRITER_LOCK).unlink()
            self._lock.release()
            self._lock = None

    def previous(self) -> tuple[str | None, dict | None]:
        status = run_status(self.run_path)
        if status in (None, "complete"):
            return status, None
        remove_stale_temp_files(self.run_path)
        return status, load_checkpoint(self.run_path)

    def write_record(self, record: dict) -> None:
        self.run_path.mkdir(parents=True, exist_ok=True)
        write_run_json(self.run_path, {**record, "writer": writer_info()})

    def write_metrics(self, rows: list[dict], extra_columns: tuple[str, ...] = ()) -> None:
        write_metrics(self.run_path, rows, extra_columns=extra_columns)

    def write_checkpoint(self, state: dict) -> None:
        save_checkpoint(self.run_path, state)

    def write_policy(self, policy: dict) -> None:
        save_policy(self.run_path, policy)


# --------------------------------------------------------------------------------------------
# metrics.parquet


def _columns(extra_columns: Sequence[str] = ()) -> dict[str, pa.DataType]:
    """The schema's columns: :data:`METRIC_COLUMNS`, then an algorithm's declared float columns."""
    clash = [c for c in extra_columns if c in RUN_KEY_COLUMNS]
    if clash:
        raise ValueError(f"metric column(s) {', '.join(clash)} would clash with the run keys; rename them")
    return {**METRIC_COLUMNS, **{c: _F64 for c in extra_columns if c not in METRIC_COLUMNS}}


def _schema(extra_columns: Sequence[str] = ()) -> pa.Schema:
    fields = [pa.field(n, t, nullable=(n != "env_steps")) for n, t in _columns(extra_columns).items()]
    return pa.schema(fields, metadata={PARQUET_VERSION_KEY: str(SCHEMA_VERSION).encode()})


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_int(value: Any, column: str, row: int) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, np.floating) and float(value).is_integer():
        return int(value)
    raise ValueError(f"metrics row {row}: {column}={value!r} is not an integer")


def _as_float(value: Any, column: str, row: int) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (str, bytes)):
        raise TypeError(f"metrics row {row}: {column}={value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metrics row {row}: {column}={value!r} is not a number") from None


def _metrics_table(rows: list[dict], extra_columns: Sequence[str] = ()) -> pa.Table:
    columns = _columns(extra_columns)
    unknown = sorted({k for r in rows for k in r} - columns.keys())
    if unknown:
        raise ValueError(
            f"unknown metric column(s) {', '.join(unknown)}; declare them in the algorithm's `metrics` "
            f"(stored as extra float columns) or stop logging them"
        )
    arrays = []
    for name, dtype in columns.items():
        if name == "env_steps":
            values = []
            for i, r in enumerate(rows):
                if _is_missing(r.get(name)):
                    raise ValueError(f"metrics row {i} has no env_steps (required in every row)")
                values.append(_as_int(r[name], name, i))
            arrays.append(pa.array(values, type=dtype))
        elif dtype == pa.int64():
            values = [None if _is_missing(r.get(name)) else _as_int(r[name], name, i)
                      for i, r in enumerate(rows)]
            arrays.append(pa.array(values, type=dtype))
        else:
            values = [_as_float(r.get(name), name, i) for i, r in enumerate(rows)]
            # From a numpy array, NaN stays a NaN value (not a null).
            arrays.append(pa.array(np.asarray(values, dtype=np.float64), type=dtype))
    return pa.Table.from_arrays(arrays, schema=_schema(extra_columns))


def write_metrics(run_path: Path, rows: list[dict], *, overwrite: bool = False,
                  extra_columns: Sequence[str] = ()) -> None:
    """Write all evaluation rows of a run as ``<run_path>/metrics.parquet``, atomically.

    Rows are dicts keyed by :data:`METRIC_COLUMNS` and ``extra_columns`` (float metrics an
    algorithm declares beyond them, stored after them); omitted values and None become NaN (null
    for ``eval_episodes``), never dropped rows. Unknown keys raise ValueError rather than
    vanishing. Refuses (StoreError) to replace the metrics of a complete run unless ``overwrite=True``.
    """
    table = _metrics_table(list(rows), extra_columns)
    run_path = Path(run_path)
    if not overwrite:
        _refuse_if_complete(run_path, METRICS_PARQUET)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(run_path / METRICS_PARQUET, sink.getvalue().to_pybytes())


def read_metrics(run_path: Path) -> pd.DataFrame:
    """Read ``<run_path>/metrics.parquet`` as a DataFrame with every METRIC_COLUMNS column.

    ``env_steps`` is int64, ``eval_episodes`` nullable Int64, the rest float64 (NaN = missing).
    Missing, corrupt, foreign or other-version files raise StoreError.
    """
    path = Path(run_path) / METRICS_PARQUET
    fix = "delete the run directory to re-run it"
    if not path.is_file():
        raise StoreError(
            f"metrics file {show_path(path)} does not exist (the run stopped before writing metrics, "
            f"or the file was removed); {fix}"
        )
    try:
        with pq.ParquetFile(path) as pf:
            metadata = pf.schema_arrow.metadata or {}
            if PARQUET_VERSION_KEY not in metadata:
                raise StoreError(
                    f"metrics file {show_path(path)} is a Parquet file without marpo-bench metadata "
                    f"(not written by marpo-bench); {fix}, or move it out of the results directory"
                )
            version = _parse_version(metadata[PARQUET_VERSION_KEY])
            if version is None:
                raise StoreError(
                    f"metrics file {show_path(path)} has an invalid schema version "
                    f"{metadata[PARQUET_VERSION_KEY]!r} (corrupt); {fix}"
                )
            if version != SCHEMA_VERSION:
                raise _version_problem("metrics file", path, version)
            if "env_steps" not in pf.schema_arrow.names:
                raise StoreError(
                    f"metrics file {show_path(path)} has no env_steps column (not a marpo-bench "
                    f"metrics file); {fix}"
                )
            table = pf.read()
    except (pa.ArrowException, OSError, EOFError):
        raise StoreError(
            f"metrics file {show_path(path)} is not a Parquet file (corrupt or truncated); {fix}"
        ) from None
    return _metrics_frame(table, path)


def _metrics_frame(table: pa.Table, path: Path) -> pd.DataFrame:
    """Cast a stored table to the current schema; add absent columns as missing."""
    n = table.num_rows
    columns: dict[str, Any] = {}
    for name, dtype in METRIC_COLUMNS.items():
        if name in table.column_names:
            col = table.column(name)
            if col.type != dtype:
                try:
                    col = col.cast(dtype)  # safe cast: raises rather than truncating
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise StoreError(
                        f"metrics file {show_path(path)} stores column {name} as {col.type}, expected "
                        f"{dtype} (corrupt or foreign); delete the run directory to re-run it"
                    ) from None
        else:
            col = pa.nulls(n, type=dtype)
        if name == "env_steps":
            if col.null_count:
                raise StoreError(
                    f"metrics file {show_path(path)} has rows without env_steps (corrupt); "
                    f"delete the run directory to re-run it"
                )
            columns[name] = col.to_numpy().astype(np.int64)
        elif dtype == pa.int64():
            columns[name] = pd.array(col.to_pylist(), dtype="Int64")
        else:
            columns[name] = col.to_pandas().to_numpy(dtype=np.float64, na_value=np.nan)
    extras = [c for c in table.column_names if c not in METRIC_COLUMNS]
    clash = [c for c in extras if c in RUN_KEY_COLUMNS]
    if clash:
        raise StoreError(
            f"metrics file {show_path(path)} has column(s) {', '.join(clash)} that belong in run.json "
            f"(not a marpo-bench metrics file); delete the run directory to re-run it"
        )
    for name in extras:  # kept, not dropped: a v1 file may carry more than this reader knows
        columns[name] = table.column(name).to_pandas()
    return pd.DataFrame(columns, index=pd.RangeIndex(n))


# --------------------------------------------------------------------------------------------
# a whole study


def _empty_study_frame() -> pd.DataFrame:
    frame = _metrics_frame(_schema().empty_table(), Path("."))
    keys = pd.DataFrame({k: pd.Series(dtype=object) for k in RUN_KEY_COLUMNS})
    return pd.concat([keys, frame], axis=1)


StudyRuns = list[tuple[dict, pd.DataFrame | None]]
"""A study as read from disk: each run's record and its metrics (None when it has no metrics file)."""


def read_study(study_path: Path) -> StudyRuns:
    """Every run of a study, each read once: ``(record, metrics or None)`` sorted by run_id. A run
    marked complete must have metrics. StoreError when the study is missing or has no runs."""
    study_path = Path(study_path)
    if not study_path.is_dir():
        raise StoreError(
            f"study directory {show_path(study_path)} does not exist; check the path or run the study"
        )
    runs = study_path / "runs"
    run_paths = sorted(
        p for p in (runs.iterdir() if runs.is_dir() else [])
        if p.is_dir() and not p.name.startswith(".") and (p / RUN_JSON).is_file()
    )
    if not run_paths:
        raise StoreError(
            f"study directory {show_path(study_path)} has no runs (no runs/<run_id>/{RUN_JSON}); "
            f"check the path or run the study"
        )
    out: StudyRuns = []
    for path in run_paths:
        record = read_run_json(path)
        if record["run_id"] != path.name:
            raise StoreError(
                f"run file {show_path(path / RUN_JSON)} says run_id {record['run_id']!r} but lives in "
                f"directory {path.name!r}; move it to runs/{record['run_id']} or re-run it"
            )
        has_metrics = record["status"] == "complete" or (path / METRICS_PARQUET).exists()
        out.append((record, read_metrics(path) if has_metrics else None))
    return out


def study_frame(runs: StudyRuns) -> tuple[list[dict], pd.DataFrame]:
    """``(records, metrics)`` of :func:`read_study`'s runs: the metrics as one long frame with
    ``run_id, algo, env, task, seed`` joined in as leading columns."""
    frames = []
    for record, frame in runs:
        if frame is not None and len(frame):
            keys = pd.DataFrame({k: [record[k]] * len(frame) for k in RUN_KEY_COLUMNS}, index=frame.index)
            frames.append(pd.concat([keys, frame], axis=1))
    records = [record for record, _ in runs]
    return records, (pd.concat(frames, ignore_index=True) if frames else _empty_study_frame())


def load_study(study_path: Path) -> tuple[list[dict], pd.DataFrame]:
    """All run records of a study and one long metrics frame of all its runs.

    Returns ``(records, metrics)``: every run.json (any status; the caller decides what to use),
    sorted by run_id, and the metrics of every run that has a metrics file, with ``run_id, algo,
    env, task, seed`` joined in as leading columns. A run marked complete must have metrics.
    """
    return study_frame(read_study(study_path))


# --------------------------------------------------------------------------------------------
# checkpoints


def _torch_bytes(state: dict, what: str) -> bytes:
    """``state`` wrapped with the schema version and serialised; checked to load with
    ``torch.load(weights_only=True)`` now, so a bad state fails here and not when it is read."""
    import torch

    buf = io.BytesIO()
    torch.save({CHECKPOINT_VERSION_KEY: SCHEMA_VERSION, "state": state}, buf)
    data = buf.getvalue()
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln]
        why = lines[0].split(" was not")[0] if lines else "unsupported object"
        raise TypeError(
            f"{what} state would not load with torch.load(weights_only=True); use tensors and "
            f"plain Python containers (numpy arrays -> tensors or lists) ({why})"
        ) from None
    return data


def save_checkpoint(run_path: Path, state: dict) -> None:
    """Save the training state as ``<run_path>/checkpoint.pt`` (temp file, then os.replace).

    ``state`` must load with ``torch.load(weights_only=True)``: tensors, state_dicts, Python
    numbers/strings/lists/tuples/dicts (convert numpy arrays and RNG states to tensors or lists).
    This is checked here, at save time, so a bad state fails now and not when resuming.
    """
    atomic_write_bytes(Path(run_path) / CHECKPOINT_PT, _torch_bytes(state, "checkpoint"))


def save_policy(run_path: Path, policy: dict) -> None:
    """Save a complete run's final policy as ``<run_path>/policy.pt`` (what ``act`` needs and what
    rebuilds it: algorithm, env, task, resolved config; see ``marpo_bench.policy``)."""
    atomic_write_bytes(Path(run_path) / POLICY_PT, _torch_bytes(policy, "policy"))


# What torch.load raises on corrupt, truncated, empty or foreign files (measured on torch 2.13).
_TORCH_LOAD_ERRORS = (
    pickle.UnpicklingError, RuntimeError, EOFError, KeyError, OSError, ValueError, TypeError,
    AttributeError, IndexError,
)


def _load_torch(path: Path, what: str, fix: str) -> dict | None:
    import torch

    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS:
        raise StoreError(
            f"{what} {show_path(path)} cannot be loaded (corrupt, truncated or not a marpo-bench "
            f"{what}); {fix}"
        ) from None
    if not isinstance(obj, dict) or CHECKPOINT_VERSION_KEY not in obj or "state" not in obj:
        raise StoreError(f"{what} {show_path(path)} was not written by marpo-bench; {fix}")
    version = _parse_version(obj[CHECKPOINT_VERSION_KEY])
    if version != SCHEMA_VERSION:
        if version is None:
            raise StoreError(f"{what} {show_path(path)} has an invalid schema version; {fix}")
        raise _version_problem(what, path, version)
    return obj["state"]


def load_checkpoint(run_path: Path) -> dict | None:
    """The state saved by :func:`save_checkpoint` (tensors on CPU), or None when there is none."""
    return _load_torch(Path(run_path) / CHECKPOINT_PT, "checkpoint", "delete it to restart the run from scratch")


def load_policy(run_path: Path) -> dict | None:
    """The policy saved by :func:`save_policy` (tensors on CPU), or None when there is none."""
    return _load_torch(Path(run_path) / POLICY_PT, "policy", "re-run the run to save it again")
