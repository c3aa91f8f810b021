"""Executors (local and Ray), retries, presets and the run command's new options."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from marpo_bench import presets, store
from marpo_bench.cli import DEFAULT_ALGOS, DEFAULT_SEEDS, DEFAULT_STEPS, app
from marpo_bench.config import RunSpec
from marpo_bench.executors import run_local, run_ray
from marpo_bench.faults import FAULT_ENV, parse_faults
from marpo_bench.plan import plan_grid

pytest.importorskip("ray")

runner = CliRunner()
TINY = (("num_envs", "8"), ("epochs", "1"), ("eval_episodes", "4"), ("eval_interval", "200"))


def grid(env: str, task: str, algos: tuple[str, ...] = ("mappo", "marpo"), seeds: int = 2,
         steps: int = 600) -> list[RunSpec]:
    return [RunSpec(a, env, task, s, steps, TINY) for a in algos for s in range(seeds)]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def frames(results: Path, study: str) -> dict[str, pd.DataFrame]:
    records, frame = store.load_study(results / study)
    assert all(r["status"] == "complete" for r in records), [(r["run_id"], r["message"]) for r in records]
    return {rid: df.drop(columns="wall_seconds").reset_index(drop=True) for rid, df in frame.groupby("run_id")}


@pytest.fixture(scope="module")
def local_ray():
    """One local 2-CPU Ray instance for the module (the executors use an initialised Ray as is)."""
    from marpo_bench.executors import ray_session

    with ray_session(None, num_cpus=2, num_gpus=1) as ray:  # one logical GPU: a fake resource, no device
        yield ray


# ----------------------------------------------------------------------------------------------
# Ray


def test_run_capacity_counts_cpus_and_gpus_per_run():
    from marpo_bench.executors.ray import RayUnavailable, run_capacity

    assert run_capacity({"CPU": 4.0}, 1.0) == 4
    assert run_capacity({"CPU": 4.0, "GPU": 1.0}, 1.0, 0.25) == 4  # four runs share the GPU
    assert run_capacity({"CPU": 4.0, "GPU": 1.0}, 1.0, 0.5) == 2
    assert run_capacity({"CPU": 16.0, "GPU": 2.0}, 2.0, 1.0) == 2
    for resources, gpus in (({"CPU": 4.0}, 0.5), ({"CPU": 4.0, "GPU": 1.0}, 2.0)):
        with pytest.raises(RayUnavailable, match="could never start"):
            run_capacity(resources, 1.0, gpus)


def test_ray_runs_reserve_gpus_and_a_reservation_that_cannot_fit_is_an_error(local_ray, tmp_path):
    specs = [RunSpec("mappo", "jax_mpe", "simple_spread", s, 400, TINY) for s in (0, 1)]
    res = run_ray(specs, tmp_path, "g", quiet(), faults=(), gpus_per_run=0.5)  # two runs share the fake GPU
    assert [r.status for r in res] == ["complete", "complete"]
    from marpo_bench.executors.ray import RayUnavailable

    with pytest.raises(RayUnavailable, match="1 GPUs"):
        run_ray(specs, tmp_path, "g2", quiet(), faults=(), gpus_per_run=2.0)
    assert not (tmp_path / "g2").exists()


def test_ray_trains_each_seed_group_as_one_batched_task_sharing_the_gpu(local_ray, tmp_path):
    """--vectorize-seeds on Ray: one task per seed group (two groups share the fake GPU), each
    seed stored as its own run, bit for bit as the same groups batched by the local executor
    (both train with one torch thread); a failing seed stops its group, and a rerun resumes it."""
    small = (("num_envs", "4"), ("eval_episodes", "4"), ("eval_interval", "100"))
    sets = {"mappo": small, "qmix": (*small, ("batch_size", "4"), ("epsilon_anneal_steps", "300"))}
    specs = [RunSpec(a, "jax_mpe", "simple_spread", s, 400, sets[a]) for a in ("mappo", "qmix") for s in (0, 1)]
    res = run_ray(specs, tmp_path, "ray", quiet(), faults=(), gpus_per_run=0.5, vectorize_seeds=True)
    assert [r.status for r in res] == ["complete"] * 4
    run_local(specs, tmp_path, "local", 1, quiet(), faults=(), vectorize_seeds=True)
    on_ray, local = frames(tmp_path, "ray"), frames(tmp_path, "local")
    assert on_ray.keys() == local.keys() and len(on_ray) == 4
    for run_id, df in on_ray.items():
        assert df.equals(local[run_id]), run_id
    records, _ = store.load_study(tmp_path / "ray")
    assert {r["seed_batch"] for r in records} == {2}

    faults = parse_faults("raise@200:mappo__jax_mpe-simple_spread__s0")
    res = run_ray(specs[:2], tmp_path, "f", quiet(), faults=faults, retries=0, vectorize_seeds=True)
    assert [r.status for r in res] == ["failed", "failed"]
    assert "stopped with its batch" in res[1].message
    res = run_ray(specs[:2], tmp_path, "f", quiet(), faults=(), vectorize_seeds=True)
    assert [r.status for r in res] == ["complete", "complete"]
    records, _ = store.load_study(tmp_path / "f")
    assert [r["resumed_from"] for r in records] == [100, 100] and all(r["resume_exact"] for r in records)


def _connect(address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    code = (f"import ray; ray.init(address={address!r}, include_dashboard=False, log_to_driver=False); "
            f"print('CONNECTED')")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)


def test_a_local_ray_instance_refuses_a_client_without_its_token(local_ray):
    """The local instance listens on every interface, so it must authenticate: a client with no
    token is refused, one with the session's token (held in this process's environment only) connects."""
    address = local_ray.get_runtime_context().gcs_address
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) == 64
    stranger = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    refused = _connect(address, stranger)
    assert refused.returncode != 0 and "CONNECTED" not in refused.stdout
    allowed = _connect(address, {**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]})
    assert allowed.returncode == 0 and "CONNECTED" in allowed.stdout, allowed.stderr[-500:]


def _assert_same_runs_as_local(tmp_path: Path, specs: list[RunSpec]) -> None:
    local = run_local(specs, tmp_path, "local", 1, quiet(), faults=())
    remote = run_ray(specs, tmp_path, "ray", quiet(), faults=())
    assert [r.status for r in local] == [r.status for r in remote] == ["complete"] * len(specs)
    a, b = frames(tmp_path, "local"), frames(tmp_path, "ray")
    assert sorted(a) == sorted(b) == sorted(s.run_id for s in specs)
    for rid in a:
        pd.testing.assert_frame_equal(a[rid], b[rid], check_exact=True)
    for path in (tmp_path / "ray" / "runs").iterdir():  # the driver (this process) wrote the store
        assert store.read_run_json(path)["writer"]["pid"] == os.getpid()
        assert store.load_checkpoint(path)["complete"] is True


def test_ray_runs_a_4_run_grid_with_the_same_metrics_as_the_local_executor(tmp_path, local_ray):
    assert local_ray.cluster_resources()["CPU"] == 2
    _assert_same_runs_as_local(tmp_path, grid("mpe", "simple_spread"))


@pytest.mark.slow
def test_ray_matches_local_on_the_jax_envs(tmp_path, local_ray):
    _assert_same_runs_as_local(tmp_path, [*grid("jax_mpe", "simple_spread"),
                                          RunSpec("marpo", "smax", "3m", 0, 800, (*TINY, ("rollout_len", "20")))])


def test_ray_retries_a_failing_task_then_records_it_failed_and_the_grid_goes_on(tmp_path, local_ray):
    specs = grid("mpe", "simple_spread", algos=("mappo",), seeds=3)
    faults = parse_faults("raise@400:__s0__,exit@400:__s1__")  # an exception; a crashed worker process
    out = run_ray(specs, tmp_path, "r", quiet(), retries=1, faults=faults)
    assert sorted(r.status for r in out) == ["complete", "failed", "failed"]
    records = {r["seed"]: r for r in store.load_study(tmp_path / "r")[0]}
    assert records[2]["status"] == "complete" and records[2]["attempt"] == 1
    assert records[0]["status"] == "failed" and records[0]["attempt"] == 2
    assert records[0]["message"] == "RuntimeError: injected fault at env step 400 (MARPO_BENCH_FAULT)"
    assert records[0]["resumed_from"] == 200  # the retry continued from the last checkpoint
    assert records[1]["status"] == "failed" and records[1]["attempt"] == 2
    assert "died" in records[1]["message"] or "crash" in records[1]["message"].lower(), records[1]["message"]


def test_local_executor_retries_too(tmp_path):
    specs = grid("mpe", "simple_spread", algos=("mappo",), seeds=1)
    out = run_local(specs, tmp_path, "l", 1, quiet(), retries=2, faults=parse_faults("raise@400"))
    assert out[0].status == "failed"
    assert store.read_run_json(store.run_dir(tmp_path, "l", specs[0].run_id))["attempt"] == 3


def _ray_cli(results: Path, study: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "marpo_bench", "run", "--executor", "ray", "--algos", "mappo", "--envs",
            "mpe:simple_spread", "--seeds", "2", "--steps", "3000", "--checkpoint-every", "400", "--results",
            str(results), "--study", study, "--set", "num_envs=8", "--set", "epochs=1", "--set",
            "eval_episodes=4", "--set", "eval_interval=400", *extra]


@pytest.fixture
def ray_tmp():
    """A short directory for Ray's temp dir (pytest's tmp_path is too long for Ray's socket paths)."""
    path = Path(tempfile.mkdtemp(prefix="mbt"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _clean_env(tmp_path: Path, ray_tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, "RAY_ADDRESS")}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1")
    return env


def _descendants(root: int) -> set[tuple[int, bytes]]:
    """(pid, start time) of every descendant of ``root`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, stack = set(), list(children.get(root, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        out.add((pid, _start(pid)))
    return out


def _start(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@pytest.mark.slow
def test_ray_cli_on_a_cluster_address(tmp_path, local_ray, ray_tmp):
    address = local_ray.get_runtime_context().gcs_address
    res = subprocess.run(_ray_cli(tmp_path, "addr", "--ray-address", address), env=_clean_env(tmp_path, ray_tmp),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "2 trained" in res.stdout
    assert all(r["status"] == "complete" for r in store.load_study(tmp_path / "addr")[0])


@pytest.mark.slow
def test_ray_cli_sigkill_then_rerun_completes_and_leaves_no_processes_or_files(tmp_path, ray_tmp):
    """Local Ray instance started by the command: its driver killed with SIGKILL mid-grid leaves no
    Ray process and no temp dir (the reaper); re-running completes every run once; no ~/.ray."""
    env = _clean_env(tmp_path, ray_tmp)
    study = tmp_path / "k"
    proc = subprocess.Popen(_ray_cli(tmp_path, "k"), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: set[tuple[int, bytes | None]] = set()
    try:
        deadline = time.monotonic() + 240
        while not list(study.glob("runs/*/checkpoint.pt")):
            assert proc.poll() is None and time.monotonic() < deadline
            started |= _descendants(proc.pid)  # gcs, raylet, agents, workers (and the reaper)
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray's own processes are orphaned
        proc.wait(30)
    assert len(started) >= 4
    deadline = time.monotonic() + 30  # the reaper kills the orphans a few seconds after the driver died
    while any(_start(pid) == st for pid, st in started) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [pid for pid, st in started if _start(pid) == st] == []
    assert list(ray_tmp.iterdir()) == []
    res = subprocess.run(_ray_cli(tmp_path, "k"), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    records = store.load_study(study)[0]
    assert len(records) == 2 and all(r["status"] == "complete" for r in records)
    assert any(r["resumed_from"] for r in records)
    assert list(ray_tmp.iterdir()) == []
    assert not (tmp_path / "home" / ".ray").exists()


# ----------------------------------------------------------------------------------------------
# presets and options


def test_preset_fields_are_overridden_by_explicit_flags_and_sets_are_appended():
    (g,) = presets.resolve("paper-mpe", algos=None, envs=None, seeds=2, steps=None, sets=["lr=1e-3"])
    (c,) = presets.PRESETS["paper-mpe"].cells
    assert (g.algos, g.envs, g.seeds, g.steps) == (c.algos, c.envs, 2, c.steps)
    assert g.sets == (*c.sets, "lr=1e-3")
    (none,) = presets.resolve(None, algos=None, envs="mpe:simple_spread", seeds=None, steps=None, sets=[])
    assert (none.algos, none.envs, none.seeds, none.steps) == (DEFAULT_ALGOS, "mpe:simple_spread",
                                                               DEFAULT_SEEDS, DEFAULT_STEPS)


def test_a_preset_of_several_cells_gives_one_grid_per_cell_with_the_flags_applied_to_each():
    cells = presets.PRESETS["paper"].cells
    grids = presets.resolve("paper", algos=None, envs=None, seeds=1, steps=None, sets=["lr=1e-3"])
    assert len(grids) == len(cells) > 1
    for g, c in zip(grids, cells, strict=True):
        assert (g.algos, g.envs, g.seeds, g.steps, g.sets) == (c.algos, c.envs, 1, c.steps, (*c.sets, "lr=1e-3"))


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_is_a_valid_documented_grid(name):
    p = presets.PRESETS[name]
    assert p.description and p.budget and p.cells
    for c in p.cells:
        specs = plan_grid(c.algos, c.envs, c.seeds, c.steps, list(c.sets), "cpu")  # builds every config
        assert {s.algo for s in specs} == set(c.algos.split(","))
        assert len(specs) == len(c.algos.split(",")) * len(c.envs.split(",")) * c.seeds


@pytest.mark.parametrize("args,needle", [
    (["--preset", "huge"], "unknown preset 'huge'; valid: default, full, paper, paper-300k, "
                           "paper-300k-ablation, paper-mpe, paper-smax, smoke"),
    (["--executor", "slurm"], "unknown --executor 'slurm'; valid: local, ray"),
    (["--ray-address", "127.0.0.1:1"], "--ray-address needs --executor ray"),
    (["--retries", "-1"], "--retries must be >= 0"),
    (["--checkpoint-every", "soon"], "bad step count 'soon'"),
    (["--cpus-per-run", "0"], "--cpus-per-run must be positive"),
])
def test_bad_executor_options_are_one_line_errors(tmp_path, args, needle):
    res = runner.invoke(app, ["run", "--results", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not any(tmp_path.iterdir())


def test_preset_run_writes_the_plan_first(tmp_path, monkeypatch):
    """--preset with explicit flags narrowing it: plan.json is written before training."""
    seen = {}

    def fake_grid(specs, results, study, console, **kw):
        seen["plan"] = json.loads((results / study / "plan.json").read_text())
        seen["specs"], seen["kw"] = specs, kw
        return []

    monkeypatch.setattr("marpo_bench.executors.run_grid", fake_grid)
    res = runner.invoke(app, ["run", "--preset", "smoke", "--algos", "qmix", "--results", str(tmp_path),
                              "--study", "p", "--retries", "3", "--checkpoint-every", "1k"])
    assert res.exit_code == 0, res.output
    assert [s.algo for s in seen["specs"]] == ["qmix", "qmix"]
    assert [r["run_id"] for r in seen["plan"]["runs"]] == [s.run_id for s in seen["specs"]]
    assert seen["kw"]["retries"] == 3 and seen["kw"]["checkpoint_every"] == 1000
    assert ("qmix.batch_size", "8") in seen["specs"][0].overrides


@pytest.mark.slow
def test_a_crashed_pool_worker_fails_its_run_only(tmp_path):
    """The pool breaks when a worker dies; the sibling run is resumed without losing an attempt."""
    specs = [RunSpec("mappo", "mpe", "simple_spread", s, 3000, TINY) for s in range(2)]
    out = run_local(specs, tmp_path, "x", 2, quiet(), retries=0, faults=parse_faults("exit@400:__s0__"))
    assert {r.run_id: r.status for r in out} == {specs[0].run_id: "failed", specs[1].run_id: "complete"}
    records = {r["seed"]: r for r in store.load_study(tmp_path / "x")[0]}
    assert records[0]["status"] == "failed"
    assert records[0]["message"] == "the training process exited with code 17 (a crash)"  # os._exit(17)
    assert records[1]["status"] == "complete" and records[1]["attempt"] == 1
