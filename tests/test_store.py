"""Tests of the run store: round trips, crash safety, and clear errors on bad files."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from marpo_bench import store
from marpo_bench.store import StoreError


def record(run_id: str = "r1", status: str = "complete", **extra: Any) -> dict:
    """A minimal but realistic run.json record."""
    return {
        "run_id": run_id,
        "algo": "marpo",
        "env": "mpe",
        "task": "simple_spread",
        "seed": 0,
        "budget": 200_000,
        "config": {"lr": 5e-4, "clip": {"low": 0.2, "high": 0.3}},
        "status": status,
        "message": "",
        "reward_scale": "team_sum",
        "episode_limit": 25,
        "eval_mode": "greedy",
        **extra,
    }


ROWS = [
    {"env_steps": 0, "wall_seconds": 0.5, "eval_return_mean": -150.0, "eval_return_std": 10.0,
     "eval_episodes": 32, "epsilon": 1.0},
    {"env_steps": 10_000, "wall_seconds": 12.0, "eval_return_mean": math.nan,
     "eval_episodes": None, "policy_loss": np.float32(0.25), "entropy": 1.5},
    {"env_steps": np.int64(20_000), "eval_return_mean": -120.0, "eval_win_rate": None,
     "eval_episodes": 32.0, "approx_kl": 0.01},
]


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def assert_one_line(exc: pytest.ExceptionInfo[StoreError], *parts: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def complete_run(tmp_path: Path, run_id: str = "r1") -> Path:
    run = store.run_dir(tmp_path, "study", run_id)
    store.write_metrics(run, ROWS)
    store.write_run_json(run, record(run_id))
    return run


# ------------------------------------------------------------------ layout


def test_run_dir_is_results_study_runs_run_id(tmp_path: Path) -> None:
    assert store.run_dir(tmp_path, "default", "marpo-mpe-s0") == (
        tmp_path / "default" / "runs" / "marpo-mpe-s0"
    )


@pytest.mark.parametrize(("study", "run_id"), [("..", "r1"), ("s", "a/b"), ("", "r1"), ("s", "")])
def test_run_dir_rejects_names_that_are_not_one_path_component(study: str, run_id: str) -> None:
    with pytest.raises(ValueError, match="single path component"):
        store.run_dir(Path("results"), study, run_id)


def test_metric_columns_match_the_documented_schema() -> None:
    ints = {name for name, t in store.METRIC_COLUMNS.items() if t == pa.int64()}
    assert ints == {"env_steps", "eval_episodes"}
    assert all(t == pa.float64() for n, t in store.METRIC_COLUMNS.items() if n not in ints)
    assert next(iter(store.METRIC_COLUMNS)) == "env_steps"
    assert len(store.METRIC_COLUMNS) == 24


# ------------------------------------------------------------------ round trips


def test_run_json_round_trips_with_schema_version_as_sorted_pretty_json(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rec = record(seed=np.int64(3), results=Path("results") / "x")
    store.write_run_json(run, rec)

    back = store.read_run_json(run)
    assert back == {**rec, "seed": 3, "results": str(Path("results") / "x"), "schema_version": 1}
    text = (run / "run.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert "schema_version" not in rec  # the caller's dict is not modified
    assert files_in(run) == ["run.json"]


def test_metrics_round_trip_keeps_nan_int64_and_fills_missing_columns(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store.write_metrics(run, ROWS)
    df = store.read_metrics(run)

    assert list(df.columns) == list(store.METRIC_COLUMNS)
    assert len(df) == 3  # no row dropped for having NaN or missing values
    assert df["env_steps"].dtype == np.int64
    assert df["env_steps"].tolist() == [0, 10_000, 20_000]
    assert str(df["eval_episodes"].dtype) == "Int64"
    assert df["eval_episodes"].isna().tolist() == [False, True, False]
    assert df["eval_episodes"].dropna().tolist() == [32, 32]
    floats = [n for n, t in store.METRIC_COLUMNS.items() if t == pa.float64()]
    assert (df[floats].dtypes == np.float64).all()
    assert df["eval_return_mean"].tolist()[0] == -150.0
    assert math.isnan(df["eval_return_mean"][1])  # NaN given -> NaN stored
    assert math.isnan(df["wall_seconds"][2])  # key omitted -> NaN
    assert math.isnan(df["eval_win_rate"][2])  # None -> NaN
    assert df["policy_loss"][1] == pytest.approx(0.25)
    assert df["q_mean"].isna().all()  # column never logged -> all NaN, still present
    assert files_in(run) == ["metrics.parquet"]


def test_metrics_file_carries_schema_version_in_parquet_metadata(tmp_path: Path) -> None:
    store.write_metrics(tmp_path, ROWS)
    schema = pq.read_schema(tmp_path / "metrics.parquet")
    assert schema.metadata[b"marpo_bench_schema_version"] == b"1"
    assert schema.field("env_steps").type == pa.int64()
    assert not schema.field("env_steps").nullable


def test_metrics_without_rows_round_trip_as_empty_frame_with_schema(tmp_path: Path) -> None:
    store.write_metrics(tmp_path, [])
    df = store.read_metrics(tmp_path)
    assert df.empty
    assert list(df.columns) == list(store.METRIC_COLUMNS)
    assert df["env_steps"].dtype == np.int64


@pytest.mark.parametrize(
    ("rows", "error", "match"),
    [
        ([{"wall_seconds": 1.0}], ValueError, "env_steps"),
        ([{"env_steps": None}], ValueError, "env_steps"),
        ([{"env_steps": 1, "q_loss": 0.1}], ValueError, "unknown metric column.*q_loss"),
        ([{"env_steps": 1.5}], ValueError, "not an integer"),
        ([{"env_steps": 1, "entropy": "high"}], TypeError, "not a number"),
    ],
)
def test_metrics_rows_that_do_not_fit_the_schema_are_rejected_before_writing(
    tmp_path: Path, rows: list[dict], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        store.write_metrics(tmp_path / "run", rows)
    assert not (tmp_path / "run").exists()


def test_checkpoint_round_trips_tensors_and_python_state(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    state = {
        "model": net.state_dict(),
        "update": 7,
        "env_steps": 12_800,
        "torch_rng": torch.get_rng_state(),
        "history": [1.0, 2.0],
    }
    store.save_checkpoint(tmp_path, state)
    back = store.load_checkpoint(tmp_path)

    assert back is not None
    assert back["update"] == 7 and back["env_steps"] == 12_800 and back["history"] == [1.0, 2.0]
    assert torch.equal(back["torch_rng"], state["torch_rng"])
    for key, value in net.state_dict().items():
        assert torch.equal(back["model"][key], value)
    assert files_in(tmp_path) == ["checkpoint.pt"]


def test_load_checkpoint_without_a_checkpoint_returns_none(tmp_path: Path) -> None:
    assert store.load_checkpoint(tmp_path) is None


def test_checkpoint_state_that_could_not_be_loaded_safely_fails_at_save_time(
    tmp_path: Path,
) -> None:
    store.save_checkpoint(tmp_path, {"update": 1})
    with pytest.raises(TypeError, match="weights_only"):
        store.save_checkpoint(tmp_path, {"np_rng": np.random.default_rng(0).random(3)})
    assert store.load_checkpoint(tmp_path) == {"update": 1}
    assert files_in(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("data", [b"", b"not a checkpoint", os.urandom(256)])
def test_corrupt_checkpoint_raises_store_error(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(data)
    with pytest.raises(StoreError) as exc:
        store.load_checkpoint(tmp_path)
    assert_one_line(exc, "checkpoint.pt", "cannot be loaded", "restart the run")


def test_truncated_and_foreign_checkpoints_raise_store_error(tmp_path: Path) -> None:
    store.save_checkpoint(tmp_path, {"w": torch.ones(1000)})
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(StoreError, match="cannot be loaded"):
        store.load_checkpoint(tmp_path)

    torch.save({"w": torch.ones(2)}, path)  # a plain torch file, not written by the store
    with pytest.raises(StoreError, match="not written by marpo-bench"):
        store.load_checkpoint(tmp_path)


# ------------------------------------------------------------------ crash safety


WRITES = {
    "run.json": lambda run, i: store.write_run_json(run, record(status="running", update=i)),
    "metrics.parquet": lambda run, i: store.write_metrics(run, ROWS[: i + 1]),
    "checkpoint.pt": lambda run, i: store.save_checkpoint(run, {"update": i}),
}


@pytest.mark.parametrize("name", list(WRITES))
def test_crash_at_rename_leaves_previous_file_intact_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    WRITES[name](tmp_path, 0)
    before = (tmp_path / name).read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        WRITES[name](tmp_path, 1)

    assert (tmp_path / name).read_bytes() == before
    assert files_in(tmp_path) == [name]


class HalfWriter:
    """A file object that writes half of what it is given, then fails (disk full, power cut)."""

    def __init__(self, f: Any, exc: BaseException) -> None:
        self.f, self.exc = f, exc

    def __enter__(self) -> HalfWriter:
        return self

    def __exit__(self, *args: object) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise self.exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


@pytest.mark.parametrize("exc", [OSError("No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("name", list(WRITES))
def test_crash_partway_through_writing_leaves_previous_file_intact_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, exc: BaseException
) -> None:
    WRITES[name](tmp_path, 0)
    before = (tmp_path / name).read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(store.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode), exc))

    with pytest.raises(type(exc)):
        WRITES[name](tmp_path, 1)

    monkeypatch.undo()
    assert (tmp_path / name).read_bytes() == before
    assert files_in(tmp_path) == [name]
    if name == "metrics.parquet":
        assert len(store.read_metrics(tmp_path)) == 1


def test_first_write_that_crashes_leaves_no_file_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(fd: int) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(store.os, "fsync", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.atomic_write_bytes(tmp_path / "new.bin", b"data")
    assert files_in(tmp_path) == []


def test_concurrent_writers_of_one_file_do_not_collide(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    payloads = [{"writer": i, "blob": "x" * 10_000} for i in range(16)]
    errors: list[BaseException] = []

    def write(obj: dict) -> None:
        try:
            for _ in range(5):
                store.atomic_write_json(path, obj)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert json.loads(path.read_text()) in payloads
    assert files_in(tmp_path) == ["shared.json"]


def test_a_complete_run_is_not_overwritten_silently(tmp_path: Path) -> None:
    run = complete_run(tmp_path)
    with pytest.raises(StoreError) as exc:
        store.write_run_json(run, record(status="running"))
    assert_one_line(exc, "is complete", "refusing to overwrite its run.json")
    with pytest.raises(StoreError, match="refusing to overwrite its metrics.parquet"):
        store.write_metrics(run, ROWS[:1])
    assert store.run_status(run) == "complete"
    assert len(store.read_metrics(run)) == 3

    store.write_metrics(run, ROWS[:1], overwrite=True)
    store.write_run_json(run, record(status="running"), overwrite=True)
    assert store.run_status(run) == "running"
    assert len(store.read_metrics(run)) == 1


def test_an_unfinished_run_can_be_rewritten(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store.write_run_json(run, record(status="running"))
    store.write_metrics(run, ROWS[:1])
    store.write_metrics(run, ROWS)
    store.write_run_json(run, record(status="complete"))
    assert store.run_status(run) == "complete"
    assert len(store.read_metrics(run)) == 3


# ------------------------------------------------------------------ bad files


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda data: os.urandom(len(data)), id="random-bytes"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated-half"),
        pytest.param(lambda data: data[:-5], id="truncated-footer"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"env_steps,eval_return_mean\n0,1.0\n", id="csv"),
    ],
)
def test_corrupt_parquet_raises_store_error_naming_file_and_fix(tmp_path: Path, mangle) -> None:
    store.write_metrics(tmp_path, ROWS)
    path = tmp_path / "metrics.parquet"
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(StoreError) as exc:
        store.read_metrics(tmp_path)
    assert_one_line(
        exc, str(path), "is not a Parquet file (corrupt or truncated)", "delete the run directory"
    )


def test_missing_metrics_file_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as exc:
        store.read_metrics(tmp_path)
    assert_one_line(exc, "metrics.parquet", "does not exist")


def test_parquet_without_our_metadata_is_reported_as_foreign(tmp_path: Path) -> None:
    pq.write_table(pa.table({"env_steps": [1, 2], "eval_return_mean": [0.1, 0.2]}),
                   tmp_path / "metrics.parquet")
    with pytest.raises(StoreError) as exc:
        store.read_metrics(tmp_path)
    assert_one_line(exc, "without marpo-bench metadata", "not written by marpo-bench")


def test_parquet_with_our_metadata_but_no_env_steps_is_reported_as_foreign(
    tmp_path: Path,
) -> None:
    table = pa.table({"reward": [1.0]}).replace_schema_metadata(
        {b"marpo_bench_schema_version": b"1"}
    )
    pq.write_table(table, tmp_path / "metrics.parquet")
    with pytest.raises(StoreError) as exc:
        store.read_metrics(tmp_path)
    assert_one_line(exc, "no env_steps column")


def test_parquet_from_pandas_without_metadata_is_foreign_not_corrupt(tmp_path: Path) -> None:
    pd.DataFrame({"env_steps": [1]}).to_parquet(tmp_path / "metrics.parquet")
    with pytest.raises(StoreError, match="without marpo-bench metadata"):
        store.read_metrics(tmp_path)


@pytest.mark.parametrize(("version", "advice"), [(2, "upgrade marpo-bench"), (0, "re-run")])
def test_metrics_of_another_schema_version_raise_store_error_with_both_versions(
    tmp_path: Path, version: int, advice: str
) -> None:
    table = pa.table({"env_steps": pa.array([1], pa.int64())}).replace_schema_metadata(
        {b"marpo_bench_schema_version": str(version).encode()}
    )
    pq.write_table(table, tmp_path / "metrics.parquet")
    with pytest.raises(StoreError) as exc:
        store.read_metrics(tmp_path)
    assert_one_line(
        exc, "metrics.parquet", f"written with schema version {version}",
        "this marpo-bench reads version 1", advice, "new directory",
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"run_id": "r1", "status": "comp', "is not valid JSON"),
        ("", "is not valid JSON"),
        ("[1, 2]", "does not hold a JSON object"),
        ('{"run_id": "r1"}', "has no schema_version"),
        ('{"schema_version": "one"}', "invalid schema_version"),
    ],
)
def test_corrupt_run_json_raises_store_error(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(StoreError) as exc:
        store.read_run_json(tmp_path)
    assert_one_line(exc, str(tmp_path / "run.json"), problem)


def test_binary_run_json_raises_store_error(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StoreError, match="corrupt"):
        store.read_run_json(tmp_path)


def test_run_json_of_schema_version_2_raises_store_error_with_both_versions(
    tmp_path: Path,
) -> None:
    (tmp_path / "run.json").write_text(json.dumps({**record(), "schema_version": 2}))
    with pytest.raises(StoreError) as exc:
        store.read_run_json(tmp_path)
    assert_one_line(
        exc, "written with schema version 2", "this marpo-bench reads version 1",
        "upgrade marpo-bench or re-run the study into a new directory",
    )


def test_run_json_missing_required_fields_or_with_unknown_status_raises(tmp_path: Path) -> None:
    rec = record()
    del rec["seed"], rec["task"]
    (tmp_path / "run.json").write_text(json.dumps({**rec, "schema_version": 1}))
    with pytest.raises(StoreError, match="lacks required field.*task, seed"):
        store.read_run_json(tmp_path)

    (tmp_path / "run.json").write_text(json.dumps({**record(status="done"), "schema_version": 1}))
    with pytest.raises(StoreError, match="unknown status 'done'"):
        store.read_run_json(tmp_path)


def test_missing_run_json_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        store.read_run_json(tmp_path)


def test_run_status_reads_status_none_without_run_json_and_raises_on_corrupt(
    tmp_path: Path,
) -> None:
    assert store.run_status(tmp_path) is None
    for status in ("running", "interrupted", "failed", "complete"):
        store.write_run_json(tmp_path, record(status=status))
        assert store.run_status(tmp_path) == status
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.run_status(tmp_path)


def test_error_paths_are_shown_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = store.run_dir(tmp_path / "results", "x", "r1")
    run.mkdir(parents=True)
    (run / "metrics.parquet").write_bytes(b"junk")
    with pytest.raises(StoreError) as exc:
        store.read_metrics(run)
    expected = str(Path("results") / "x" / "runs" / "r1" / "metrics.parquet")
    assert str(exc.value).startswith(f"metrics file {expected} is not a Parquet file")


# ------------------------------------------------------------------ studies


def test_load_study_returns_all_records_and_joined_metrics(tmp_path: Path) -> None:
    a = store.run_dir(tmp_path, "study", "marpo-s0")
    store.write_metrics(a, ROWS)
    store.write_run_json(a, record("marpo-s0"))
    b = store.run_dir(tmp_path, "study", "mappo-s1")
    store.write_metrics(b, ROWS[:2])
    store.write_run_json(b, record("mappo-s1", status="interrupted", algo="mappo", seed=1))
    c = store.run_dir(tmp_path, "study", "qmix-s0")  # started, crashed before any evaluation
    store.write_run_json(c, record("qmix-s0", status="running", algo="qmix"))

    records, metrics = store.load_study(tmp_path / "study")

    assert [r["run_id"] for r in records] == ["mappo-s1", "marpo-s0", "qmix-s0"]
    assert [r["status"] for r in records] == ["interrupted", "complete", "running"]
    assert list(metrics.columns[:5]) == ["run_id", "algo", "env", "task", "seed"]
    assert list(metrics.columns[5:]) == list(store.METRIC_COLUMNS)
    assert len(metrics) == 5
    by_run = metrics.groupby("run_id")
    assert by_run.size().to_dict() == {"mappo-s1": 2, "marpo-s0": 3}
    mappo = metrics[metrics["run_id"] == "mappo-s1"]
    assert set(mappo["algo"]) == {"mappo"} and set(mappo["seed"]) == {1}
    assert metrics["env_steps"].dtype == np.int64
    assert metrics["seed"].dtype == np.int64
    assert str(metrics["eval_episodes"].dtype) == "Int64"
    marpo = metrics[metrics["run_id"] == "marpo-s0"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        marpo[list(store.METRIC_COLUMNS)], store.read_metrics(a), check_index_type=False
    )


def test_load_study_with_only_unevaluated_runs_returns_an_empty_frame_with_columns(
    tmp_path: Path,
) -> None:
    run = store.run_dir(tmp_path, "study", "r1")
    store.write_run_json(run, record(status="failed", message="CUDA out of memory"))
    records, metrics = store.load_study(tmp_path / "study")
    assert [r["message"] for r in records] == ["CUDA out of memory"]
    assert metrics.empty
    assert list(metrics.columns) == [*store.RUN_KEY_COLUMNS, *store.METRIC_COLUMNS]


def test_load_study_of_a_missing_directory_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as exc:
        store.load_study(tmp_path / "nope")
    assert_one_line(exc, "study directory", "nope", "does not exist")


@pytest.mark.parametrize("layout", ["empty-dir", "empty-runs", "run-dir-without-run-json"])
def test_load_study_without_runs_raises_store_error(tmp_path: Path, layout: str) -> None:
    study = tmp_path / "study"
    study.mkdir()
    if layout != "empty-dir":
        (study / "runs").mkdir()
    if layout == "run-dir-without-run-json":
        (study / "runs" / "r1").mkdir()
        (study / "runs" / "r1" / ".run.json.abc.tmp").write_text("{")
    with pytest.raises(StoreError) as exc:
        store.load_study(study)
    assert_one_line(exc, "has no runs")


def test_load_study_fails_loudly_on_a_complete_run_without_metrics(tmp_path: Path) -> None:
    run = store.run_dir(tmp_path, "study", "r1")
    store.write_run_json(run, record())
    with pytest.raises(StoreError, match="metrics.parquet does not exist"):
        store.load_study(tmp_path / "study")


def test_load_study_fails_loudly_on_a_corrupt_run(tmp_path: Path) -> None:
    complete_run(tmp_path, "r1")
    bad = complete_run(tmp_path, "r2")
    (bad / "metrics.parquet").write_bytes(b"\x00" * 64)
    with pytest.raises(StoreError, match="r2.*not a Parquet file"):
        store.load_study(tmp_path / "study")


def test_load_study_rejects_a_run_json_in_the_wrong_directory(tmp_path: Path) -> None:
    run = store.run_dir(tmp_path, "study", "copied")
    store.write_run_json(run, record("original", status="running"))
    with pytest.raises(StoreError, match="says run_id 'original'"):
        store.load_study(tmp_path / "study")
