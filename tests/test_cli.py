"""The command line: one-line errors with exit code 2 on bad input, a tiny run end to end, resume."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from marpo_bench import store
from marpo_bench.cli import app

runner = CliRunner()
TINY = ["--envs", "jax_mpe:simple_spread", "--seeds", "1", "--steps", "400",
        "--set", "num_envs=8", "--set", "epochs=1", "--set", "eval_episodes=4"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--algos", "nope"], "unknown algorithm 'nope'; valid: mappo, marpo"),
        (["--envs", "atari:pong"], "unknown env family 'atari'"),
        (["--envs", "jax_mpe:simple_tag"], "simple_spread"),
        (["--steps", "12q"], "bad step count '12q'"),
        (["--steps", "0"], "step count must be positive"),
        (["--seeds", "0"], "--seeds must be a positive number"),
        (["--set", "lr"], "use key=value"),
        (["--set", "nonsense=1"], "unknown setting 'nonsense'"),
        (["--set", "lr=fast"], "bad value 'fast' for mappo.lr"),
        (["--set", "marpo.clip=wide"], "choose one of adaptive, symmetric"),
        (["--set", "num_envs=-3"], "num_envs must be positive"),
        (["--threads", "0"], "--threads must be positive"),
        (["--set", "mappo.eval_episodes=4"], "eval_episodes is a run setting, the same for every algorithm"),
        (["--set", "eval_mode=best"], "choose one of greedy, sample"),
        (["--set", "eval_episodes=0"], "eval_episodes must be positive"),
        (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "device"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_code_2(tmp_path, args, needle):
    res = runner.invoke(app, ["run", "--results", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert needle in text
    assert "Traceback" not in res.output
    assert not any(tmp_path.iterdir())  # nothing written before validation passed


def test_list_shows_algorithms_and_envs():
    algos = runner.invoke(app, ["list", "algos"])
    envs = runner.invoke(app, ["list", "envs"])
    assert algos.exit_code == 0 and "marpo" in algos.output and "mappo" in algos.output
    assert envs.exit_code == 0 and "jax_mpe:simple_spread" in envs.output and "mpe:simple_reference" in envs.output
    assert runner.invoke(app, ["list", "bogus"]).exit_code == 2
    assert "marpo_noreflect" in algos.output and "marpo_symclip" in algos.output


def test_list_presets_names_every_preset_with_its_grid():
    from marpo_bench.presets import PRESETS

    res = runner.invoke(app, ["list", "presets"], env={"COLUMNS": "1000"})
    assert res.exit_code == 0
    for p in PRESETS.values():
        assert p.name in res.output
        for c in p.cells:
            assert f"{c.envs} | {c.seeds} seeds | {c.steps}" in res.output


def test_tiny_run_writes_metrics_and_rerun_skips_complete_runs(tmp_path):
    res = runner.invoke(app, ["run", "--algos", "mappo,marpo", "--results", str(tmp_path), "--study", "s", *TINY])
    assert res.exit_code == 0, res.output
    assert f"marpo-bench report {tmp_path / 's'}" in " ".join(res.output.split())  # what to type next
    records, metrics = store.load_study(tmp_path / "s")
    assert sorted(r["algo"] for r in records) == ["mappo", "marpo"]
    assert all(r["status"] == "complete" for r in records)
    assert all(r["reward_scale"] == "team_sum" and r["episode_limit"] == 25 for r in records)
    assert all(r["uncommitted_changes"] in (True, False, None) and "git_commit" in r for r in records)
    assert all(r["host"]["load_1min"] >= 0 for r in records)  # the machine's load when the run started
    for _algo, df in metrics.groupby("algo"):
        assert df["env_steps"].iloc[0] == 0 and df["env_steps"].iloc[-1] >= 400
        assert df["eval_return_mean"].notna().all() and (df["eval_episodes"] == 4).all()
        assert df["policy_loss"].iloc[1:].notna().all()
    marpo = metrics[metrics.algo == "marpo"]
    assert marpo["kl_delta"].iloc[1:].notna().all() and marpo["reflection_term"].iloc[1:].notna().all()
    # a complete run holds its results only: its writer's lock file is gone
    assert not list((tmp_path / "s" / "runs").glob(f"*/{store.WRITER_LOCK}"))
    again = runner.invoke(app, ["run", "--algos", "mappo,marpo", "--results", str(tmp_path), "--study", "s", *TINY])
    assert again.exit_code == 0
    assert "2 skipped" in again.output


def test_version_prints_the_package_version():
    from marpo_bench import provenance

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"marpo-bench {provenance.package_version('marpo-bench')}"


def test_code_provenance_is_read_once_per_process_so_a_later_commit_is_not_recorded(monkeypatch):
    from marpo_bench import provenance

    heads = iter(["commit-a", "commit-b"])
    monkeypatch.setattr(provenance, "git_commit", lambda: next(heads))
    monkeypatch.setattr(provenance, "uncommitted_changes", lambda: False)
    provenance.code_provenance.cache_clear()
    try:
        assert provenance.code_provenance() == ("commit-a", False)
        assert provenance.code_provenance() == ("commit-a", False)  # HEAD moved on; the loaded code did not
    finally:
        provenance.code_provenance.cache_clear()


def test_scoped_override_applies_to_one_algorithm_only(tmp_path):
    from marpo_bench.plan import plan_grid
    from marpo_bench.recipes import build_config

    specs = plan_grid("mappo,marpo", "jax_mpe:simple_spread", 1, "1k", ["marpo.alpha=0.5", "lr=1e-3"], "cpu")
    cfgs = {s.algo: build_config(s) for s in specs}
    assert cfgs["marpo"].alpha == 0.5 and cfgs["marpo"].lr == 1e-3 and cfgs["mappo"].lr == 1e-3
    assert not hasattr(cfgs["mappo"], "alpha")


def test_interrupted_run_keeps_its_metrics_and_is_marked_interrupted(tmp_path, monkeypatch):
    from baselines.mappo import MAPPO
    from marpo_bench.config import RunSpec
    from marpo_bench.train import train_run

    real_learn = MAPPO.learn

    def learn_then_ctrl_c(self, env, total, seed, on_iteration):
        def hook(steps, metrics):
            on_iteration(steps, metrics)
            if steps >= 400:
                raise KeyboardInterrupt

        real_learn(self, env, total, seed, hook)

    monkeypatch.setattr(MAPPO, "learn", learn_then_ctrl_c)
    spec = RunSpec("mappo", "jax_mpe", "simple_spread", 0, 2000,
                   (("num_envs", "8"), ("epochs", "1"), ("eval_episodes", "4"), ("eval_interval", "200")))
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, tmp_path, "s")
    run_path = store.run_dir(tmp_path, "s", spec.run_id)
    assert store.read_run_json(run_path)["status"] == "interrupted"
    assert store.read_metrics(run_path)["env_steps"].tolist() == [0, 200, 400]


def test_parallel_workers_train_the_grid(tmp_path):
    res = runner.invoke(app, ["run", "--algos", "mappo", "--results", str(tmp_path), "--study", "p",
                              "--workers", "2", *TINY[:2], "--seeds", "2", *TINY[4:]])
    assert res.exit_code == 0, res.output
    records, _ = store.load_study(tmp_path / "p")
    assert sorted(r["seed"] for r in records) == [0, 1]
    assert all(r["status"] == "complete" for r in records)


def _curves(study_dir):
    import pandas as pd

    records, _ = store.load_study(study_dir)
    out = {}
    for r in records:
        m = pd.read_parquet(study_dir / "runs" / r["run_id"] / "metrics.parquet").drop(columns=["wall_seconds"])
        out[r["run_id"]] = (r["torch_threads"], m)
    return out


def test_runs_train_with_one_torch_thread_so_their_numbers_do_not_depend_on_workers(tmp_path):
    import pandas as pd
    import torch

    before = torch.get_num_threads()
    args = ["--algos", "mappo", *TINY[:2], "--seeds", "2", *TINY[4:]]
    assert runner.invoke(app, ["run", "--results", str(tmp_path), "--study", "a", *args]).exit_code == 0
    assert torch.get_num_threads() == before  # the caller's thread count is restored
    assert runner.invoke(app, ["run", "--results", str(tmp_path), "--study", "b", "--workers", "2",
                               *args]).exit_code == 0
    one, two = _curves(tmp_path / "a"), _curves(tmp_path / "b")
    assert sorted(one) == sorted(two) and len(one) == 2
    for run_id, (threads, metrics) in one.items():
        assert threads == 1 and two[run_id][0] == 1
        pd.testing.assert_frame_equal(metrics, two[run_id][1])  # in-process and pool: bit-identical


def test_threads_option_sets_the_torch_threads_of_an_in_process_run(tmp_path):
    res = runner.invoke(app, ["run", "--results", str(tmp_path), "--study", "t", "--threads", "2",
                              "--algos", "mappo", *TINY])
    assert res.exit_code == 0, res.output
    records, _ = store.load_study(tmp_path / "t")
    assert [r["torch_threads"] for r in records] == [2]


@pytest.mark.parametrize(("args", "needle"), [
    (["--parallel", "0"], "--parallel must be positive"),
    (["--algos", "nope"], "unknown algorithm 'nope'"),
    (["--envs", "atari:pong"], "unknown env family 'atari'"),
    (["--seed-stacks", "4,0"], "--seed-stacks must list positive seed counts"),
    (["--seed-stacks", "four"], "--seed-stacks must list positive seed counts"),
    (["--device", "tpu"], "bad --device 'tpu'"),
    *([(["--device", "cuda"], "no CUDA device")] if not __import__("torch").cuda.is_available() else []),
])
def test_bench_bad_input_is_a_one_line_error(args, needle):
    res = runner.invoke(app, ["bench", *args])
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()) and "Traceback" not in res.output


def test_per_env_budgets_take_the_most_specific_entry():
    from marpo_bench.plan import plan_grid

    specs = plan_grid("mappo", "jax_mpe:simple_spread,jax_mpe:simple_reference,smax:3m", 1,
                      "1M,jax_mpe=200k,jax_mpe:simple_reference=50k", [], "cpu")
    assert {(s.env, s.task): s.steps for s in specs} == {
        ("jax_mpe", "simple_spread"): 200_000, ("jax_mpe", "simple_reference"): 50_000, ("smax", "3m"): 1_000_000}


@pytest.mark.parametrize(("steps", "message"), [
    ("jax_mpe=200k", "--steps gives no budget for smax:3m"),
    ("1M,smax:8m=5k", "--steps names smax:8m, which is not in --envs"),
    ("1M,2M", "--steps gives a budget for 'the default' twice"),
    ("1M,smax=lots", "bad step count 'lots'"),
])
def test_bad_per_env_budgets_are_one_line_errors(steps, message, tmp_path):
    res = runner.invoke(app, ["run", "--algos", "mappo", "--envs", "jax_mpe:simple_spread,smax:3m",
                              "--steps", steps, "--results", str(tmp_path)])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_results_naming_a_file_is_a_one_line_error(tmp_path):
    afile = tmp_path / "results.txt"
    afile.write_text("not a directory")
    for where in (afile, afile / "sub"):
        res = runner.invoke(app, ["run", "--results", str(where), *TINY])
        assert res.exit_code == 2, res.output
        assert "error:" in res.output and "a file" in res.output and "Traceback" not in res.output
    assert afile.read_text() == "not a directory"


def test_gpus_per_run_needs_the_ray_executor_and_a_non_negative_value(tmp_path):
    for extra, says in ((["--gpus-per-run", "0.5"], "needs --executor ray"),
                        (["--gpus-per-run", "-1", "--executor", "ray"], "--gpus-per-run must be >= 0")):
        res = runner.invoke(app, ["run", "--results", str(tmp_path), *TINY, *extra])
        assert res.exit_code == 2 and says in " ".join(res.output.split()), res.output


def test_report_out_naming_a_file_and_a_study_whose_runs_is_a_file_are_one_line_errors(tmp_path):
    from tests.test_report import write_synthetic_study

    study = tmp_path / "s"
    write_synthetic_study(study, ["mappo"], [("jax_mpe", "simple_spread")], seeds=2, incomplete=False)
    out = tmp_path / "report.html"
    out.write_text("keep")
    res = runner.invoke(app, ["report", str(study), "--out", str(out), "--format", "html", "--reps", "100"])
    assert res.exit_code == 2 and "is a file, not a directory" in " ".join(res.output.split()), res.output
    assert out.read_text() == "keep"  # was a FileExistsError traceback
    fake = tmp_path / "f"
    fake.mkdir()
    (fake / "runs").write_text("x")
    res = runner.invoke(app, ["status", str(fake)])
    assert res.exit_code == 2 and "is a file, not the study's runs directory" in " ".join(res.output.split())


@pytest.mark.parametrize("args, says", [
    (["bounds", "{empty}"], "is not a study directory (no runs/ in it)"),
    (["bounds", "{missing}"], "is not a study directory"),
    (["export", "{missing}", "--out", "{empty}/o.json"], "does not exist"),
    (["export", "{empty}", "--format", "csv", "--out", "{empty}/o.json"], "unknown --format 'csv'; valid: marl-eval"),
    (["eval", "{missing}"], "is not a run directory (no run.json)"),
    (["report", "{missing}"], "does not exist"),
    (["status", "{empty}"], "has no plan and no runs"),
    (["import", "{missing}.json", "--study", "x", "--results", "{empty}"], "is not a file"),
    (["report", "{study}", "--reps", "0"], "--reps must be positive"),
    (["report", "{study}", "--last-k", "0"], "--last-k must be at least 1"),
    (["report", "{study}", "--normalise", "wild"], "unknown normalisation 'wild'; valid: bounds, minmax"),
])
def test_the_reading_commands_answer_bad_input_with_one_line_and_exit_2(tmp_path, args, says):
    from tests.test_report import write_synthetic_study

    paths = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "study": tmp_path / "s"}
    paths["empty"].mkdir()
    write_synthetic_study(paths["study"], ["mappo"], [("jax_mpe", "simple_spread")], seeds=2, incomplete=False)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    res = runner.invoke(app, [a.format(**paths) for a in args])
    assert res.exit_code == 2 and says in " ".join(res.output.split()) and "Traceback" not in res.output, res.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
