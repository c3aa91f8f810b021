"""Study files (marpo_bench/studyfile.py): a grid and its sweeps as one TOML file, the same runs as
the equivalent command line, kept in the study directory, flags over file, one-line errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from marpo_bench import presets, studyfile
from marpo_bench.cli import app
from marpo_bench.config import ConfigError
from marpo_bench.plan import plan_grid

runner = CliRunner()

TWO_CELLS = """
description = "two cells, one sweep"
seeds = 2
steps = "1M,smax=500k"

[set]
eval_episodes = 8

[[cell]]
algos = ["mappo", "marpo"]
envs = ["jax_mpe:simple_reference", "smax:3m"]

[[cell]]
algos = "mappo,marpo"
envs = ["jax_mpe:simple_spread"]
seeds = 3

[cell.sweep]
"mappo.lr" = [3e-4, 7e-4]
epochs = [5, 10]
"""


def _ids(grids) -> list[str]:
    return sorted(s.run_id for g in grids for s in plan_grid(g.algos, g.envs, g.seeds, g.steps, list(g.sets), "cpu"))


def test_a_study_file_plans_the_same_runs_as_the_equivalent_command_lines():
    study = studyfile.parse(TWO_CELLS, "two.toml")
    grids = presets.with_flags(study.cells, algos=None, envs=None, seeds=None, steps=None, sets=[])
    by_hand = [presets.Grid("mappo,marpo", "jax_mpe:simple_reference,smax:3m", 2, "1M,smax=500k",
                            ("eval_episodes=8",))]
    by_hand += [presets.Grid("mappo", "jax_mpe:simple_spread", 3, "1M",
                             ("eval_episodes=8", f"mappo.lr={lr}", f"epochs={e}")) for lr in ("0.0003", "0.0007")
                for e in ("5", "10")]
    by_hand += [presets.Grid("marpo", "jax_mpe:simple_spread", 3, "1M", ("eval_episodes=8", f"epochs={e}"))
                for e in ("5", "10")]
    assert _ids(grids) == _ids(by_hand)
    assert len(_ids(grids)) == 2 * 2 * 2 + 4 * 3 + 2 * 3


def test_a_sweep_scoped_to_one_algorithm_leaves_the_others_one_config_and_counts_trials():
    study = studyfile.parse(TWO_CELLS, "two.toml")
    assert studyfile.trials(study.cells[1:]) == {"mappo": 4, "marpo": 2}
    marpo = [c for c in study.cells[1:] if c.algos == "marpo"]
    assert [c.sets for c in marpo] == [("eval_episodes=8", "epochs=5"), ("eval_episodes=8", "epochs=10")]


def test_flags_replace_the_files_fields_in_every_cell():
    study = studyfile.parse(TWO_CELLS, "two.toml")
    grids = presets.with_flags(study.cells, algos=None, envs=None, seeds=1, steps="200k", sets=["lr=1e-3"])
    assert {g.seeds for g in grids} == {1} and {g.steps for g in grids} == {"200k"}
    assert all(g.sets[-1] == "lr=1e-3" for g in grids)


@pytest.mark.parametrize("text, says", [
    ("algos = ['mappo']\nenvs = ['jax_mpe:simple_spread']\nseeds = 1\nsteps = '1k'\nbudget = 3",
     "unknown key 'budget'; valid keys: description, algos"),
    ("seeds = 1\nsteps = '1k'\n[[cell]]\nalgos = ['mappo']\nenvs = ['jax_mpe:simple_spread']\nseed = 2",
     "cell 1: unknown key 'seed'"),
    ("algos = ['mappo']\nenvs = ['jax_mpe:simple_spread']\nseeds = '5'\nsteps = '1k'",
     "seeds must be a positive whole number, got '5'"),
    ("algos = []\nenvs = ['jax_mpe:simple_spread']\nseeds = 1\nsteps = '1k'", "algos must be a list of names"),
    ("algos = ['mappo']\nseeds = 1\nsteps = '1k'", "no envs: give it in the cell or at the top"),
    ("algos = ['mappo']\nenvs = ['jax_mpe:simple_spread']\nseeds = 1\nsteps = '1k'\n[sweep]\nlr = []",
     "sweep.lr must be a non-empty list"),
    ("algos = ['mappo']\nenvs = ['jax_mpe:simple_spread']\nseeds = 1\nsteps = '1k'\n[set]\nlr = [1, 2]",
     "set.lr must be a number, a string or true/false"),
    ("seeds = = 1", "is not a TOML study file"),
    ("description = 'nothing'", "no cell"),
])
def test_a_bad_study_file_is_a_one_line_error_naming_the_key(text, says):
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("(", r"\(")):
        studyfile.parse(text, "bad.toml")


@pytest.mark.parametrize("body, says", [
    ("algos = ['nope']\nenvs = ['jax_mpe:simple_spread']", "unknown algorithm 'nope'"),
    ("algos = ['mappo']\nenvs = ['jax_mpe:simple_tag']", "unknown task 'simple_tag'"),
    ("algos = ['mappo']\nenvs = ['jax_mpe:simple_spread']\n[set]\nnonsense = 1", "unknown setting 'nonsense'"),
])
def test_unknown_algorithms_tasks_and_settings_in_a_file_stop_the_command_before_anything_is_written(
        tmp_path, body, says):
    f = tmp_path / "bad.toml"
    f.write_text(f"seeds = 1\nsteps = '1k'\n{body}\n")
    res = runner.invoke(app, ["run", "--study-file", str(f), "--results", str(tmp_path / "r"), "--study", "x"])
    assert res.exit_code == 2 and says in " ".join(res.output.split()), res.output
    assert not (tmp_path / "r").exists()


def test_the_study_keeps_its_file_and_another_file_for_the_same_study_is_refused_unless_extended(tmp_path):
    tiny = ("seeds = 1\nsteps = '400'\nalgos = ['mappo']\nenvs = ['jax_mpe:simple_spread']\n"
            "[set]\nnum_envs = 4\neval_episodes = 4\n")
    f = tmp_path / "grid.toml"
    f.write_text(tiny)
    args = ["run", "--study-file", str(f), "--results", str(tmp_path / "r"), "--study", "s"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    kept = (tmp_path / "r" / "s" / studyfile.STUDY_COPY).read_text()
    assert kept.startswith("# marpo-bench: kept by marpo-bench ") and kept.endswith(tiny)
    assert runner.invoke(app, args).exit_code == 0  # the same file again: fine (runs skipped)
    f.write_text(tiny.replace("seeds = 1", "seeds = 2"))
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "was run with another study file (it differs in seeds)" in " ".join(
        res.output.split())
    res = runner.invoke(app, [*args, "--extend"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "s" / "study-2.toml").read_text().endswith(tiny.replace("seeds = 1", "seeds = 2"))
    assert runner.invoke(app, [*args, "--preset", "smoke"]).exit_code == 2  # one or the other
    status = runner.invoke(app, ["status", str(tmp_path / "r" / "s")])
    assert "study file: study-2.toml, study.toml" in " ".join(status.output.split())


def test_the_shipped_example_study_files_are_valid_grids():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples" / "studies").glob("*.toml"))
    assert examples
    for path in examples:
        study = studyfile.read(path)
        grids = presets.with_flags(study.cells, algos=None, envs=None, seeds=None, steps=None, sets=[])
        assert _ids(grids), path.name
    tuning = studyfile.read(examples[0])
    assert studyfile.trials(tuning.cells) == {"mappo": 4} and len(_ids(presets.with_flags(
        tuning.cells, algos=None, envs=None, seeds=None, steps=None, sets=[]))) == 2 * 4 * 3
