"""Fault tolerance: resume from checkpoints, forced NaN, SIGKILL and Ctrl-C of a running grid, status."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from marpo_bench import store
from marpo_bench.cli import app
from marpo_bench.config import RunSpec
from marpo_bench.faults import FAULT_ENV, Fault, parse_faults
from marpo_bench.plan import read_plan, study_status, write_plan
from marpo_bench.train import CHECKPOINT_FORMAT, train_run

runner = CliRunner()
PPO_TINY = (("num_envs", "8"), ("epochs", "1"), ("eval_episodes", "4"), ("eval_interval", "200"))
QMIX_TINY = (("num_envs", "8"), ("batch_size", "8"), ("eval_episodes", "4"), ("eval_interval", "200"))
CLI_TINY = ["--set", "num_envs=8", "--set", "epochs=1", "--set", "eval_episodes=4", "--set", "eval_interval=400"]


def metrics(results: Path, study: str, spec: RunSpec) -> pd.DataFrame:
    return store.read_metrics(store.run_dir(results, study, spec.run_id)).drop(columns="wall_seconds")


def interrupted_then_resumed(spec: RunSpec, results: Path, fail_at: int) -> dict:
    """Train ``spec`` into study "b", failing at env step ``fail_at`` (after a checkpoint), then
    re-run it; returns the final run.json."""
    first = train_run(spec, results, "b", faults=(Fault("raise", fail_at),), checkpoint_every=200)
    assert first.status == "failed" and first.retryable and "injected fault" in first.message
    ckpt = store.load_checkpoint(store.run_dir(results, "b", spec.run_id))
    assert ckpt["format"] == CHECKPOINT_FORMAT and 0 < ckpt["env_steps"] < fail_at + 1
    again = train_run(spec, results, "b", faults=(), checkpoint_every=200)
    assert again.status == "complete", again.message
    record = store.read_run_json(store.run_dir(results, "b", spec.run_id))
    assert record["resumed_from"] == ckpt["env_steps"]
    return record


@pytest.mark.parametrize("algo,env", [("mappo", "jax_mpe"), ("marpo", "jax_mpe"), ("mappo", "mpe")])
def test_resumed_run_has_the_metrics_of_an_uninterrupted_run(tmp_path, algo, env):
    spec = RunSpec(algo, env, "simple_spread", 0, 1000, PPO_TINY)
    assert train_run(spec, tmp_path, "a", faults=()).status == "complete"
    record = interrupted_then_resumed(spec, tmp_path, fail_at=600)
    assert record["resume_exact"] is True
    pd.testing.assert_frame_equal(metrics(tmp_path, "a", spec), metrics(tmp_path, "b", spec), check_exact=True)


def test_resume_under_another_torch_thread_count_is_not_claimed_exact(tmp_path):
    from marpo_bench.executors import torch_threads

    spec = RunSpec("mappo", "jax_mpe", "simple_spread", 0, 1000, PPO_TINY)
    with torch_threads(1):
        first = train_run(spec, tmp_path, "b", faults=(Fault("raise", 600),), checkpoint_every=200)
    assert first.status == "failed"
    assert store.load_checkpoint(store.run_dir(tmp_path, "b", spec.run_id))["torch_threads"] == 1
    with torch_threads(2):
        again = train_run(spec, tmp_path, "b", faults=(), checkpoint_every=200)
    assert again.status == "complete", again.message
    record = store.read_run_json(store.run_dir(tmp_path, "b", spec.run_id))
    assert record["resumed_from"] and record["resume_exact"] is False
    assert "2 torch threads, checkpointed with 1" in record["resume_note"]


@pytest.mark.slow
def test_recurrent_marpo_on_smax_resumes_mid_episode_exactly(tmp_path):
    """SMAX episodes end at different times: the checkpoint holds envs mid-episode and the GRU state."""
    spec = RunSpec("marpo", "smax", "3m", 0, 1600, (*PPO_TINY, ("rollout_len", "20")))
    assert train_run(spec, tmp_path, "a", faults=()).status == "complete"
    record = interrupted_then_resumed(spec, tmp_path, fail_at=800)
    assert record["resume_exact"] is True
    pd.testing.assert_frame_equal(metrics(tmp_path, "a", spec), metrics(tmp_path, "b", spec), check_exact=True)


def test_qmix_resume_is_exact_up_to_the_checkpoint_and_completes(tmp_path):
    """QMix's replay buffer is not checkpointed (documented bound): rows up to the checkpoint are
    identical, the resumed run keeps the env-step grid and finishes; the record says it is not exact."""
    spec = RunSpec("qmix", "jax_mpe", "simple_spread", 0, 1400, QMIX_TINY)
    assert train_run(spec, tmp_path, "a", faults=()).status == "complete"
    record = interrupted_then_resumed(spec, tmp_path, fail_at=1000)
    assert record["resume_exact"] is False
    a, b = metrics(tmp_path, "a", spec), metrics(tmp_path, "b", spec)
    assert a["env_steps"].tolist() == b["env_steps"].tolist()
    upto = int((a["env_steps"] <= record["resumed_from"]).sum())
    pd.testing.assert_frame_equal(a.iloc[:upto], b.iloc[:upto], check_exact=True)
    assert b["td_loss"].iloc[1:].notna().any() and b["eval_return_mean"].notna().all()


def test_checkpoint_loads_with_weights_only_and_holds_what_resume_needs(tmp_path):
    spec = RunSpec("marpo", "jax_mpe", "simple_spread", 0, 400, PPO_TINY)
    assert train_run(spec, tmp_path, "s", faults=()).status == "complete"
    ckpt = store.load_checkpoint(store.run_dir(tmp_path, "s", spec.run_id))  # weights_only=True inside
    assert ckpt["complete"] is True and ckpt["env_steps"] == 400 and ckpt["run_id"] == spec.run_id
    assert {"actor", "critic", "actor_opt", "critic_opt", "value_norm", "gen", "np_rng", "delta"} <= set(ckpt["algo"])
    assert ckpt["env"]["kind"] == "jax" and "obs" in ckpt["env"]["timestep"]
    assert [r["env_steps"] for r in ckpt["rows"]] == [0, 200, 400]


def test_parse_faults_and_bad_fault_variable():
    assert parse_faults("nan@400:s1, raise@0") == (Fault("nan", 400, "s1"), Fault("raise", 0, ""))
    from marpo_bench.config import ConfigError

    with pytest.raises(ConfigError, match="kind@step"):
        parse_faults("boom@3")


def test_a_dead_training_process_is_described_by_its_signal_or_exit_code():
    from marpo_bench.executors.pool import death_message

    assert parse_faults("sigkill@400:s0") == (Fault("sigkill", 400, "s0"),)
    oom = "the training process was killed by SIGKILL (signal 9): out of memory?"
    assert death_message(-signal.SIGKILL).startswith(oom)
    assert death_message(-signal.SIGSEGV) == "the training process was killed by SIGSEGV (signal 11)"
    assert death_message(17) == "the training process exited with code 17 (a crash)"
    assert death_message(0) is None and death_message(None) is None  # not a death


def test_bad_fault_variable_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "nan@soon")
    res = runner.invoke(app, ["run", "--results", str(tmp_path), "--algos", "mappo", "--seeds", "1"])
    assert res.exit_code == 2 and "bad MARPO_BENCH_FAULT item" in res.output and "Traceback" not in res.output


def test_forced_nan_marks_that_run_failed_and_the_grid_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "nan@400:__s1__")
    res = runner.invoke(app, ["run", "--algos", "mappo", "--envs", "jax_mpe:simple_spread", "--seeds", "2",
                              "--steps", "800", "--results", str(tmp_path), "--study", "n", *CLI_TINY])
    assert res.exit_code == 1, res.output
    assert "1 trained, 0 skipped, 1 failed" in " ".join(res.output.split())
    records = {r["seed"]: r for r in store.load_study(tmp_path / "n")[0]}
    assert records[0]["status"] == "complete"
    assert records[1]["status"] == "failed" and records[1]["attempt"] == 1  # a NaN is not retried
    assert records[1]["message"] == "FloatingPointError: non-finite policy_loss at env step 400"
    rows = {r["run_id"]: r for r in study_status(tmp_path / "n")}
    assert rows[records[1]["run_id"]]["status"] == "failed"


# ----------------------------------------------------------------------------------------------
# the whole command: SIGKILL and Ctrl-C (subprocesses; the mpe backend needs no JAX compilation)


def _cli(results: Path, study: str, *extra: str, steps: int = 3000) -> list[str]:
    return [sys.executable, "-m", "marpo_bench", "run", "--algos", "mappo", "--envs", "mpe:simple_spread",
            "--seeds", "2", "--steps", str(steps), "--checkpoint-every", "400", "--results", str(results),
            "--study", study, *CLI_TINY, *extra]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _interactive_signals() -> None:
    """In the child: SIGINT as a terminal's foreground job has it. A shell starting background jobs
    (``cmd &``) without job control ignores SIGINT in them, and an ignored SIGINT is inherited, so
    a test suite run that way would otherwise start the CLI deaf to Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_checkpoint_of_a_running_run(study: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the grid finished before it could be interrupted"
        for run in (study / "runs").glob("*"):
            try:
                running = json.loads((run / "run.json").read_text())["status"] == "running"
            except (OSError, ValueError, KeyError):
                continue
            if running and (run / "checkpoint.pt").exists():
                return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _wait_for_a_new_checkpoint_by(study: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until a run that ``proc`` itself trains (it is the writer: one worker) has written a checkpoint."""
    start = time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the command exited ({proc.returncode}): {proc.stderr.read()[-500:]}")
        for run in (study / "runs").glob("*"):
            try:
                rec = json.loads((run / "run.json").read_text())
                ckpt = (run / "checkpoint.pt").stat().st_mtime
            except (OSError, ValueError):
                continue
            if rec.get("status") == "running" and (rec.get("writer") or {}).get("pid") == proc.pid and ckpt > start:
                return
        time.sleep(0.05)
    raise AssertionError("no new checkpoint appeared")


def _wait_for_a_checkpoint_of_every_run(study: Path, proc: subprocess.Popen, runs: int = 2,
                                        timeout: float = 120) -> None:
    """Until each of the grid's ``runs`` runs is running and has written a checkpoint (the kill then
    comes after at least one checkpoint of every run, none complete)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the command exited ({proc.returncode}): {proc.stderr.read()[-500:]}")
        statuses = []
        for run in (study / "runs").glob("*"):
            try:
                statuses.append((json.loads((run / "run.json").read_text())["status"],
                                 (run / "checkpoint.pt").exists()))
            except (OSError, ValueError, KeyError):
                continue
        assert ("complete", True) not in statuses, "a run finished before every run had a checkpoint"
        if statuses.count(("running", True)) == runs:
            return
        time.sleep(0.05)
    raise AssertionError("not every run wrote a checkpoint")


def _wait_until_no_writer(study: Path, timeout: float = 30) -> None:
    """Until no process holds a run's writer lock: the killed workers are gone, their files final."""
    deadline = time.monotonic() + timeout
    while any(store.writer_active(run) for run in (study / "runs").glob("*")):
        assert time.monotonic() < deadline, "a killed worker still holds its run's lock"
        time.sleep(0.05)


def _metrics_by_run(study: Path) -> dict[str, pd.DataFrame]:
    """Each run's metrics rows without the wall-clock column (the one that differs between equal runs)."""
    _, frame = store.load_study(study)
    return {rid: df.drop(columns="wall_seconds").reset_index(drop=True) for rid, df in frame.groupby("run_id")}


def _assert_complete_once(results: Path, study: str) -> list[dict]:
    plan = [r["run_id"] for r in read_plan(results / study)["runs"]]
    records, frame = store.load_study(results / study)
    assert sorted(r["run_id"] for r in records) == sorted(plan) and len(plan) == 2
    assert all(r["status"] == "complete" for r in records)
    for _, df in frame.groupby("run_id"):
        steps = df["env_steps"].tolist()
        assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 3000  # no lost or repeated rows
    assert not list((results / study).rglob("*.tmp"))
    return records


def _start(results: Path, study: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_cli(results, study, *extra), env=_env(), cwd=results, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_of_the_command_then_rerun_completes_every_run_once(tmp_path):
    study = tmp_path / "k"
    proc = _start(tmp_path, "k")
    try:
        _wait_for_checkpoint_of_a_running_run(study, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    left = {p.name: store.read_run_json(p) for p in (study / "runs").iterdir()}
    resumable = {rid for rid, r in left.items() if r["status"] == "running"}
    assert resumable
    status = runner.invoke(app, ["status", str(study)])  # the killed run's process is gone
    assert status.exit_code == 0 and "interrupted" in status.output
    again = subprocess.run(_cli(tmp_path, "k"), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    records = _assert_complete_once(tmp_path, "k")
    assert any(r["resumed_from"] for r in records if r["run_id"] in resumable)


def test_sigkill_after_a_checkpoint_of_every_run_then_rerun_resumes_each_exactly(tmp_path):
    """kill -9 of a parallel grid once every run has a checkpoint: the same command resumes each run
    from it (``resumed_from``), completes each once, and, the mpe checkpoints being taken at
    episode starts (rollout_len 25 = the horizon), ends with an uninterrupted grid's metrics."""
    study = tmp_path / "k"
    proc = _start(tmp_path, "k", "--workers", "2")
    try:
        _wait_for_a_checkpoint_of_every_run(study, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    _wait_until_no_writer(study)
    ckpts = {p.name: store.load_checkpoint(p) for p in (study / "runs").iterdir()}
    assert all(0 < c["env_steps"] < 3000 and c["env"]["kind"] == "mpe" for c in ckpts.values())  # at episode starts
    again = subprocess.run(_cli(tmp_path, "k", "--workers", "2"), env=_env(), cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    records = _assert_complete_once(tmp_path, "k")
    for r in records:
        assert r["resumed_from"] == ckpts[r["run_id"]]["env_steps"] and r["resume_exact"] is True, r
    whole = subprocess.run(_cli(tmp_path, "ref", "--workers", "2"), env=_env(), cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    resumed, uninterrupted = _metrics_by_run(study), _metrics_by_run(tmp_path / "ref")
    assert sorted(resumed) == sorted(uninterrupted) == sorted(ckpts)
    for run_id, df in resumed.items():
        pd.testing.assert_frame_equal(df, uninterrupted[run_id], check_exact=True)


def test_repeated_sigkill_and_immediate_rerun_never_refuses_and_completes_every_run_once(tmp_path):
    """kill -9 of the grid, the same command at once (no pause for a dying process to go), three
    times over: no re-run is refused as "being trained by another process", and the last one
    completes every run exactly once."""
    study = tmp_path / "r"
    for _ in range(3):
        proc = _start(tmp_path, "r")
        try:
            _wait_for_a_new_checkpoint_by(study, proc)  # fails if the command exited (e.g. refused)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    last = subprocess.run(_cli(tmp_path, "r"), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr
    _assert_complete_once(tmp_path, "r")


def test_a_worker_killed_by_the_os_fails_its_run_naming_the_signal_and_the_grid_finishes(tmp_path):
    """A training process SIGKILLed as by the OOM killer (--workers 2): the parent records that run
    failed with the signal, the other run completes, and the command exits 1 with a one-line
    message per failed run, no traceback."""
    env = {**_env(), FAULT_ENV: "sigkill@400:__s0__"}
    proc = subprocess.Popen(_cli(tmp_path, "oom", "--workers", "2", "--retries", "0", steps=1200), env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    records = {r["seed"]: r for r in store.load_study(tmp_path / "oom")[0]}
    assert records[1]["status"] == "complete"
    killed = records[0]
    assert killed["status"] == "failed" and killed["attempt"] == 1 and killed["finished"]
    assert killed["message"].startswith("the training process was killed by SIGKILL (signal 9): out of memory?")
    assert "\n" not in killed["message"] and killed["writer"]["pid"] == proc.pid  # written by the parent
    text = " ".join(stdout.split())
    assert f"run {killed['run_id']} failed: {killed['message']}" in text
    assert "1 trained, 0 skipped, 1 failed" in text
    assert "Traceback" not in stdout + stderr


def test_two_concurrent_runs_of_one_study_train_each_run_once(tmp_path):
    """Two identical `run` commands started together: every run is trained by one of them (the other
    skips it, or refuses at the start when a run is already being trained), none twice."""
    procs = [_start(tmp_path, "two"), _start(tmp_path, "two")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode in (0, 2) for p in procs), [o[1][-500:] for o in outs]
    assert any(p.returncode == 0 for p in procs)
    trained = [int(m) for out, _ in outs for m in re.findall(r"finished: (\d+) trained", " ".join(out.split()))]
    assert sum(trained) == 2, outs
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode == 2:
            assert "being trained by another process" in " ".join(err.split())
    _assert_complete_once(tmp_path, "two")


def test_ctrl_c_stops_a_parallel_grid_cleanly_and_rerun_finishes_it(tmp_path):
    study = tmp_path / "c"
    proc = subprocess.Popen(_cli(tmp_path, "c", "--workers", "2"), env=_env(), cwd=tmp_path,
                            preexec_fn=_interactive_signals,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint_of_a_running_run(study, proc)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "re-run the same command to continue" in err and "Traceback" not in err
    statuses = [store.read_run_json(p)["status"] for p in (study / "runs").iterdir()]
    assert "interrupted" in statuses and "running" not in statuses
    assert not list(study.rglob("*.tmp"))
    again = subprocess.run(_cli(tmp_path, "c"), env=_env(), cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    _assert_complete_once(tmp_path, "c")


# ----------------------------------------------------------------------------------------------
# status and the plan


def test_status_shows_complete_interrupted_failed_running_and_pending_runs(tmp_path):
    specs = [RunSpec("mappo", "jax_mpe", "simple_spread", s, 1000) for s in range(5)]
    write_plan(tmp_path, "st", specs, {"preset": None})
    host = __import__("socket").gethostname()
    # seed 2: "running", but its writer died (a kill -9 leaves the lock file, not the lock); its pid
    # is this very process's, alive, which fooled the old os.kill(pid, 0) check. seed 3: its writer
    # holds the lock.
    states = [("complete", None), ("failed", None), ("running", os.getpid()), ("running", os.getpid())]
    for spec, (status, pid) in zip(specs, states, strict=False):
        path = store.run_dir(tmp_path, "st", spec.run_id)
        path.mkdir(parents=True)
        rec = {"run_id": spec.run_id, "algo": "mappo", "env": "jax_mpe", "task": "simple_spread", "seed": spec.seed,
               "budget": 1000, "status": status, "env_steps": 400, "message": "boom" if status == "failed" else ""}
        if pid is not None:
            rec["writer"] = {"host": host, "pid": pid}
        store.write_run_json(path, rec)
    store.WriterLock.acquire(store.run_dir(tmp_path, "st", specs[2].run_id)).release()  # a dead writer's file
    live = store.WriterLock.acquire(store.run_dir(tmp_path, "st", specs[3].run_id))
    got = {r["seed"]: r["status"] for r in study_status(tmp_path / "st")}
    assert got == {0: "complete", 1: "failed", 2: "interrupted", 3: "running", 4: "pending"}
    res = runner.invoke(app, ["status", str(tmp_path / "st")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "1 complete, 1 interrupted, 1 failed, 1 running, 1 pending (5 runs)" in text
    assert f"failed {specs[1].run_id}: boom" in text  # messages in full, after the table
    # at 80 columns: one line per run, none longer than the terminal (nothing wrapped)
    narrow = runner.invoke(app, ["status", str(tmp_path / "st")], env={"COLUMNS": "80"})
    rows = [ln for ln in narrow.output.splitlines() if "jax_mpe:simple_spread" in ln]
    assert len(rows) == 5 and max(len(ln) for ln in rows) <= 80
    missing = runner.invoke(app, ["status", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    live.release()
    assert {r["seed"]: r["status"] for r in study_status(tmp_path / "st")}[3] == "interrupted"


def test_a_run_held_by_another_process_is_not_trained_twice(tmp_path):
    """Two `run` commands of one study at once: the second leaves a run that the first trains alone
    (its writer lock), and does not touch its files."""
    spec = RunSpec("mappo", "jax_mpe", "simple_spread", 0, 800, (("num_envs", "8"), ("epochs", "1")))
    path = store.run_dir(tmp_path, "two", spec.run_id)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from marpo_bench import store; "
                               "lock = store.WriterLock.acquire(sys.argv[1]); print('held', flush=True); "
                               "time.sleep(600)", str(path)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = train_run(spec, tmp_path, "two", faults=())
        assert res.status == "skipped" and "another process" in res.message
        assert not (path / store.RUN_JSON).exists()  # nothing written under the other writer
        out = runner.invoke(app, ["run", "--algos", "mappo", "--envs", "jax_mpe:simple_spread", "--seeds", "1",
                                  "--steps", "800", "--set", "num_envs=8", "--set", "epochs=1",
                                  "--results", str(tmp_path), "--study", "two"])
        assert out.exit_code == 2 and "being trained by another process" in " ".join(out.output.split())
    finally:
        holder.kill()  # as kill -9: the OS drops its lock at once
        holder.wait(30)
    assert not store.writer_active(path)
    assert train_run(spec, tmp_path, "two", faults=()).status == "complete"


def test_plan_is_written_before_runs_start_and_is_the_union_of_commands(tmp_path):
    a = [RunSpec("mappo", "jax_mpe", "simple_spread", 0, 1000)]
    b = [RunSpec("marpo", "jax_mpe", "simple_spread", 0, 1000)]
    write_plan(tmp_path, "p", a, {"preset": None})
    write_plan(tmp_path, "p", [*a, *b], {"preset": "smoke"})
    plan = read_plan(tmp_path / "p")
    assert [r["run_id"] for r in plan["runs"]] == [a[0].run_id, b[0].run_id]
    assert [h["preset"] for h in plan["history"]] == [None, "smoke"]
    assert not list((tmp_path / "p").glob(".*"))  # atomic write: no temp file left


def test_a_damaged_checkpoint_fails_that_run_with_a_clear_message(tmp_path):
    spec = RunSpec("mappo", "mpe", "simple_spread", 0, 600, PPO_TINY)
    assert train_run(spec, tmp_path, "d", faults=(Fault("raise", 400),)).status == "failed"
    path = store.run_dir(tmp_path, "d", spec.run_id)
    (path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    res = train_run(spec, tmp_path, "d", faults=())
    assert res.status == "failed" and not res.retryable and "cannot be loaded" in res.message
    assert store.read_run_json(path)["message"] == res.message
