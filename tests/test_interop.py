"""Interop: marl-eval JSON out and in, TensorBoard logging, saved policies with `eval` and a GIF."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from marpo_bench import marleval, policy, store
from marpo_bench.cli import app
from marpo_bench.config import RunSpec
from marpo_bench.train import train_run
from tests.test_report import write_synthetic_study

runner = CliRunner()
FOREIGN = Path(__file__).parent / "data" / "marl_eval_foreign.json"
PPO_TINY = (("num_envs", "8"), ("epochs", "1"), ("eval_episodes", "8"), ("eval_interval", "400"))
QMIX_TINY = (("num_envs", "8"), ("batch_size", "8"), ("eval_episodes", "8"), ("eval_interval", "400"))


def one_line(text: str) -> str:
    return " ".join(text.split())


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# marl-eval


def test_export_import_export_round_trip_gives_the_same_file(tmp_path):
    study = tmp_path / "s"
    write_synthetic_study(study, ["marpo", "mappo"], [("jax_mpe", "simple_spread"), ("smax", "3m")], seeds=3)
    first = tmp_path / "a.json"
    out = runner.invoke(app, ["export", str(study), "--out", str(first)])
    assert out.exit_code == 0, out.output
    assert "not complete, left out" in one_line(out.output)  # the synthetic failed / interrupted runs
    data = json.loads(first.read_text())
    run = data["smax"]["3m"]["mappo"]["seed_0"]
    assert run["step_0"]["step_count"] == 0 and isinstance(run["step_0"]["return"], list)
    assert run["absolute_metrics"]["win_rate"] == run[f"step_{len(run) - 2}"]["win_rate"]
    records, frame = store.load_study(study)
    mine = next(r for r in records if r["algo"] == "mappo" and r["env"] == "smax" and r["seed"] == 0)
    df = frame[frame.run_id == mine["run_id"]].sort_values("env_steps")
    assert [s["step_count"] for k, s in run.items() if k != "absolute_metrics"] == df.env_steps.tolist()
    assert [s["return"][0] for k, s in run.items() if k != "absolute_metrics"] == df.eval_return_mean.tolist()

    imp = runner.invoke(app, ["import", str(first), "--study", "back", "--results", str(tmp_path),
                              "--reward-scale", "team_sum"])
    assert imp.exit_code == 0, imp.output
    again = tmp_path / "b.json"
    assert runner.invoke(app, ["export", str(tmp_path / "back"), "--out", str(again)]).exit_code == 0
    assert json.loads(again.read_text()) == data
    rec = store.read_run_json(next((tmp_path / "back" / "runs").iterdir()))
    assert rec["imported"]["format"] == "marl-eval" and rec["imported"]["file"] == "a.json"
    assert len(rec["imported"]["sha256"]) == 64


def test_a_foreign_marl_eval_file_imports_as_marked_runs_that_the_report_includes(tmp_path):
    res = runner.invoke(app, ["import", str(FOREIGN), "--study", "foreign", "--results", str(tmp_path),
                              "--env-map", "SMAX=smax"])
    assert res.exit_code == 0, res.output
    records, frame = store.load_study(tmp_path / "foreign")
    assert len(records) == 12 and all(r["status"] == "complete" and r["imported"] for r in records)
    assert {r["env"] for r in records} == {"LevelBasedForaging", "smax"}
    assert sorted({r["seed"] for r in records if r["env"] == "LevelBasedForaging"}) == [11, 22, 33]
    lbf = next(r for r in records if r["env"] == "LevelBasedForaging" and r["algo"] == "ippo" and r["seed"] == 22)
    source = json.loads(FOREIGN.read_text())["LevelBasedForaging"]["Foraging-8x8-2p-2f-coop"]["ippo"]["22"]
    df = frame[frame.run_id == lbf["run_id"]].sort_values("env_steps")
    assert df.eval_return_mean.tolist() == pytest.approx([np.mean(source[f"STEP_{i}"]["return"]) for i in (1, 2, 3, 4)])
    assert df.eval_episodes.tolist() == [4, 4, 4, 4]
    smax = frame[frame.env == "smax"]
    assert smax.eval_win_rate.notna().all()  # win rates read from the file

    report = runner.invoke(app, ["report", str(tmp_path / "foreign"), "--format", "md", "--reps", "200",
                                 "--baseline", "benchmarl_mappo"])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "foreign" / "report" / "report.md").read_text()
    assert "imported from marl-eval file marl_eval_foreign.json" in one_line(text)
    assert "smax:3m" in text and "LevelBasedForaging:Foraging-8x8-2p-2f-coop" in text


def test_reimporting_a_file_changes_nothing_and_a_clash_is_refused(tmp_path):
    args = ["import", str(FOREIGN), "--study", "f", "--results", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    before = snapshot(tmp_path / "f")
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "imported 0 runs" in one_line(again.output)
    assert "(12 of the file's runs were there already: left as they are)" in one_line(again.output)
    assert snapshot(tmp_path / "f") == before
    for run in (tmp_path / "f" / "runs").iterdir():  # valid JSON: no NaN wall-clock where the file has none
        json.loads((run / store.RUN_JSON).read_text(), parse_constant=lambda c: pytest.fail(f"{c} in run.json"))
    changed = tmp_path / "other.json"
    data = json.loads(FOREIGN.read_text())
    data["SMAX"]["3m"]["ippo"]["seed_0"]["step_0"]["win_rate"] = [0.5]
    changed.write_text(json.dumps(data))  # another file (sha) with the same runs: no silent mixing ...
    run_ids = {p.name for p in (tmp_path / "f" / "runs").iterdir()}
    res = runner.invoke(app, ["import", str(changed), "--study", "f", "--results", str(tmp_path)])
    assert res.exit_code == 0  # ... its runs get their own ids (the file's hash is in them)
    assert run_ids < {p.name for p in (tmp_path / "f" / "runs").iterdir()}


def _one_step(step_count: str, value: str) -> str:
    """A marl-eval file of one logging step, its numbers written as given (JSON text)."""
    return ('{"MPE": {"spread": {"ippo": {"seed_0": {"step_0": {"step_count": ' + step_count + ', "return": ['
            + value + ']}}}}}}')


@pytest.mark.parametrize("content, says", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "the top level must be an object"),
    (json.dumps({"MPE": {"spread": {"ippo": {"seed_0": {"step_0": {"return": [1.0]}}}}}}), "with a step_count"),
    (json.dumps({"MPE": {"spread": {"ippo": {"seed_0": {"step_0": {"step_count": 5, "return": "high"}}}}}}),
     "non-empty list of numbers"),
    (json.dumps({"MPE": {"spread": {"ippo": {"seed_0": {"step_0": {"step_count": 5, "score": [1.0]}}}}}}),
     "--return-metric"),
    (json.dumps({"MPE": {"spread": {"a,b": {"seed_0": {"step_0": {"step_count": 5, "return": [1.0]}}}}}}),
     "cannot name a run"),
    ("[" * 100_000 + "]" * 100_000, "nests deeper than Python's JSON reader allows"),  # was a RecursionError
    *[(_one_step(count, "1.0"), "step_count must be a whole number from 0 to 2^53")  # were OverflowErrors
      for count in ("1e400", "1" + "0" * 27, "NaN", "-1", "2.5")],                  # and a bare NaN message
    (_one_step("5", "1e400"), "not finite"),
    (_one_step("5", "9" * 400), "beyond a float's range"),
])
def test_a_malformed_or_foreign_json_is_a_one_line_error_and_nothing_is_written(tmp_path, content, says):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    (tmp_path / "res").mkdir()
    res = runner.invoke(app, ["import", str(bad), "--study", "x", "--results", str(tmp_path / "res")])
    assert res.exit_code == 2 and says in one_line(res.output) and "Traceback" not in res.output
    assert not any((tmp_path / "res").iterdir())


def test_export_refuses_to_overwrite_a_file(tmp_path):
    study = tmp_path / "s"
    write_synthetic_study(study, ["mappo"], [("jax_mpe", "simple_spread")], seeds=2, incomplete=False)
    out = tmp_path / "x.json"
    out.write_text("keep")
    res = runner.invoke(app, ["export", str(study), "--out", str(out)])
    assert res.exit_code == 2 and "exists" in res.output and out.read_text() == "keep"


def test_the_foreign_fixture_has_marl_eval_shape():
    runs = marleval.parse(json.loads(FOREIGN.read_text()), "f.json", "0" * 64)
    assert len(runs) == 12 and {len(r.rows) for r in runs} == {3, 4}


# --------------------------------------------------------------------------------------------
# logging


def _events(path: Path) -> dict[str, dict[int, float]]:
    """Scalars of a TensorBoard event file (TFRecord framing: length, crc, Event proto, crc)."""
    from tensorboardX.proto import event_pb2

    data, i, out = path.read_bytes(), 0, {}
    while i < len(data):
        n = struct.unpack("<Q", data[i:i + 8])[0]
        ev = event_pb2.Event()
        ev.ParseFromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in ev.summary.value:
            out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def test_tensorboard_log_holds_the_same_rows_as_the_metrics_file(tmp_path):
    pytest.importorskip("tensorboardX")
    spec = RunSpec("mappo", "jax_mpe", "simple_spread", 0, 1200, PPO_TINY)
    assert train_run(spec, tmp_path, "tb", faults=(), loggers=("tensorboard",)).status == "complete"
    run = store.run_dir(tmp_path, "tb", spec.run_id)
    files = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1 and files[0].name.endswith(".marpo-bench")  # no host name in results
    scalars = _events(files[0])
    df = store.read_metrics(run)
    for col, tag in (("eval_return_mean", "eval/return_mean"), ("train_return_mean", "train/train_return_mean"),
                     ("policy_loss", "train/policy_loss"), ("wall_seconds", "time/wall_seconds")):
        want = {int(s): float(v) for s, v in zip(df.env_steps, df[col], strict=True) if np.isfinite(v)}
        assert scalars[tag] == pytest.approx(want, rel=1e-6)  # float32 in the event file
    hp = list((run / "tensorboard" / "hparams").glob("events.out.tfevents.*"))  # the config as hparams
    assert len(hp) == 1 and b"num_envs" in hp[0].read_bytes() and hp[0].name.endswith(".marpo-bench")


def test_an_unknown_or_missing_logger_is_a_one_line_error_before_any_run(tmp_path):
    for log, says in (("foo", "unknown --log 'foo'"), ("tensorboard,wandb", "needs the wandb package")):
        if log.endswith("wandb") and __import__("importlib").util.find_spec("wandb") is not None:
            continue
        res = runner.invoke(app, ["run", "--envs", "jax_mpe:simple_spread", "--seeds", "1", "--steps", "400",
                                  "--results", str(tmp_path), "--log", log])
        assert res.exit_code == 2 and says in one_line(res.output)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# saved policies, eval and a rendered episode


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("policies")
    out = {}
    for algo, env, task, sets, steps in (("mappo", "jax_mpe", "simple_spread", PPO_TINY, 1200),
                                         ("qmix", "jax_mpe", "simple_spread", QMIX_TINY, 1200),
                                         ("marpo", "smax", "3m", (*PPO_TINY, ("rollout_len", "20")), 800)):
        spec = RunSpec(algo, env, task, 0, steps, sets)
        assert train_run(spec, root, "p", faults=()).status == "complete"
        out[algo] = store.run_dir(root, "p", spec.run_id)
    return out


@pytest.mark.parametrize("algo", ["mappo", "qmix", "marpo"])
def test_eval_of_a_saved_policy_repeats_the_runs_final_evaluation(trained, algo):
    run = trained[algo]
    saved = policy.load(run)
    assert saved.source == store.POLICY_PT and saved.kind == "policy"
    assert (run / store.POLICY_PT).stat().st_size < (run / store.CHECKPOINT_PT).stat().st_size / 2
    last = store.read_metrics(run).iloc[-1]
    res = policy.evaluate(saved)  # the run's own eval seed, episodes and mode
    assert res.episodes == int(last.eval_episodes) and res.return_mean == pytest.approx(float(last.eval_return_mean))
    other = policy.evaluate(saved, episodes=64, seed=123)  # other episodes: within the CI of the run's figure
    assert other.return_lo <= float(last.eval_return_mean) <= other.return_hi or \
        res.return_lo <= other.return_mean <= res.return_hi
    if algo == "marpo":  # SMAX: win rate with a Wilson interval
        assert 0.0 <= res.win_lo <= res.win_rate <= res.win_hi <= 1.0


def test_a_qmix_policy_stored_before_use_rnn_existed_rebuilds_its_gru_agent(trained):
    """Runs stored before ``use_rnn`` have no such key; every agent was then a GRU. On MPE the
    lineage is ``epymarl``, whose own value is feed-forward: the rebuilt agent must still be the GRU
    the run trained (``QMixConfig.LEGACY_VALUES``), and repeat the run's final evaluation."""
    saved = policy.load(trained["qmix"])
    assert saved.config["lineage"] == "epymarl" and saved.config["use_rnn"] is True
    old = dataclasses.replace(saved, config={k: v for k, v in saved.config.items() if k != "use_rnn"})
    last = store.read_metrics(trained["qmix"]).iloc[-1]
    assert policy.evaluate(old).return_mean == pytest.approx(float(last.eval_return_mean))


def test_eval_works_from_a_copy_of_the_run_without_its_checkpoint(trained, tmp_path):
    """A run trained elsewhere: only run.json, metrics.parquet and policy.pt travel."""
    copy = tmp_path / "runs" / trained["mappo"].name
    copy.mkdir(parents=True)
    for name in (store.RUN_JSON, store.METRICS_PARQUET, store.POLICY_PT):
        shutil.copy(trained["mappo"] / name, copy / name)
    res = runner.invoke(app, ["eval", str(copy), "--episodes", "16", "--mode", "sample", "--seed", "5"])
    assert res.exit_code == 0, res.output
    text = one_line(res.output)
    assert "over 16 sample episodes" in text and "eval seed 5" in text and "(95% CI)" in text


@pytest.mark.parametrize("algo, frames", [("mappo", 25), ("marpo", None)])
def test_render_writes_an_animated_gif_with_one_frame_per_step(trained, tmp_path, algo, frames):
    from PIL import Image

    gif = tmp_path / "episode.gif"
    res = runner.invoke(app, ["eval", str(trained[algo]), "--episodes", "2", "--render", str(gif)])
    assert res.exit_code == 0, res.output
    with Image.open(gif) as im:
        n = im.n_frames
    saved = policy.load(trained[algo])
    if frames is None:  # SMAX: as many frames as the episode has steps
        algo_, env = policy.build(saved, 1, saved.seed)
        ts, steps = env.reset(int(saved.final_eval["seed"])), 0
        state = algo_.initial_act_state(1)
        while True:
            a, state = algo_.act(ts, state, deterministic=True)
            ts, steps = env.step(a), steps + 1
            if bool(ts.done[0]):
                break
        env.close()
        frames = steps
    assert n == frames and f"({frames} frames)" in one_line(res.output)


def test_eval_bad_input_is_a_one_line_error(trained, tmp_path):
    cases = [([str(tmp_path)], "not a run directory"),
             ([str(trained["mappo"]), "--mode", "wild"], "unknown --mode"),
             ([str(trained["mappo"]), "--episodes", "0"], "--episodes must be positive"),
             ([str(trained["mappo"]), "--render", str(tmp_path / "x.mp4")], "give a path ending in .gif")]
    nopolicy = tmp_path / "runs" / "r"
    nopolicy.mkdir(parents=True)
    for name in (store.RUN_JSON, store.METRICS_PARQUET):
        shutil.copy(trained["mappo"] / name, nopolicy / name)
    cases.append(([str(nopolicy)], "has no saved policy"))
    for kind, data in (("truncated", None), ("random", bytes(range(256)) * 2)):  # were StoreError tracebacks
        damaged = tmp_path / "runs" / kind
        shutil.copytree(trained["mappo"], damaged)
        metrics = damaged / store.METRICS_PARQUET
        metrics.write_bytes(metrics.read_bytes()[:100] if data is None else data)
        cases.append(([str(damaged)], "is not a Parquet file"))
    for args, says in cases:
        res = runner.invoke(app, ["eval", *args])
        assert res.exit_code == 2 and says in one_line(res.output), (args, res.output)


def test_eval_on_another_task_of_the_family_needs_the_same_spaces(trained):
    run = str(trained["mappo"])
    ok = runner.invoke(app, ["eval", run, "--episodes", "8", "--task", "simple_spread?landmark_range=0.8"])
    assert ok.exit_code == 0 and "jax_mpe:simple_spread?landmark_range=0.8" in one_line(ok.output), ok.output
    bad = runner.invoke(app, ["eval", run, "--episodes", "8", "--task", "simple_spread?num_agents=4"])
    assert bad.exit_code == 2 and "other observation or action spaces" in one_line(bad.output)


def test_landmark_range_draws_landmarks_closer_and_leaves_the_agents():
    from marpo_bench.envs import make_env

    base, near = (make_env("jax_mpe", t, 16, agent_id=False) for t in ("simple_spread",
                                                                         "simple_spread?landmark_range=0.8"))
    base.reset(3), near.reset(3)
    for i in range(16):
        a, b = base.scene(i).positions, near.scene(i).positions
        assert np.array_equal(a[:3], b[:3])  # the agents: untouched
        assert np.allclose(b[3:], 0.8 * a[3:], atol=1e-6)  # the landmarks: scaled towards the centre
    assert near.info.task == "simple_spread?landmark_range=0.8"


def test_wandb_logger_sends_each_metrics_row_once_at_its_env_step(tmp_path, monkeypatch):
    """W&B's own files are not a stable format to read back, so a stand-in ``wandb`` module records
    what the logger sends (a real offline run: ``--log wandb`` with wandb installed, no network)."""
    import sys
    import types

    sent: list[tuple[int, dict]] = []
    inits: list[dict] = []

    class FakeRun:
        def log(self, scalars, step):
            sent.append((step, dict(scalars)))

        def finish(self):
            sent.append((-1, {}))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: inits.append(kw) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    spec = RunSpec("mappo", "jax_mpe", "simple_spread", 0, 1200, PPO_TINY)
    assert train_run(spec, tmp_path, "wb", faults=(), loggers=("wandb",)).status == "complete"
    df = store.read_metrics(store.run_dir(tmp_path, "wb", spec.run_id))
    assert inits[0]["mode"] == "offline" and inits[0]["name"] == spec.run_id
    assert inits[0]["id"].startswith("wb--") and inits[0]["group"] == "wb"  # two studies never share a W&B run
    assert inits[0]["config"]["algo"] == "mappo" and inits[0]["config"]["lr"] > 0
    assert [s for s, _ in sent[:-1]] == df.env_steps.tolist() and sent[-1] == (-1, {})
    for (_, scalars), (_, row) in zip(sent, df.iterrows(), strict=False):
        assert scalars["eval_return_mean"] == pytest.approx(row.eval_return_mean)


def test_a_run_imported_without_elapsed_time_stores_valid_json(tmp_path):
    src = tmp_path / "no_time.json"
    src.write_text(_one_step("5", "1.0"))
    assert runner.invoke(app, ["import", str(src), "--study", "t", "--results", str(tmp_path)]).exit_code == 0
    (run,) = (tmp_path / "t" / "runs").iterdir()
    record = json.loads((run / store.RUN_JSON).read_text(), parse_constant=lambda c: pytest.fail(f"{c} in run.json"))
    assert record["wall_seconds"] is None
