"""Study files (marpo_bench/studyfile.py): a grid and its sweeps as one TOML file, the same runs as
the equivalent command line, kept in the study directory, flags over file, one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
    grids = studyfile.with_flags(study.cells, algos=None, envs=None, seeds=None, steps=None, sets=[])
    by_hand = [studyfile.Grid("mappo,marpo", "jax_mpe:simple_reference,smax:3m", 2, "1M,smax=500k",
                            ("eval_episodes=8",))]
    by_hand += [studyfile.Grid("mappo", "jax_mpe:simple_spread", 3, "1M",
                             ("eval_episodes=8", f"mappo.lr={lr}", f"epochs={e}")) for lr in ("0.0003", "0.0007")
                for e in ("5", "10")]
    by_hand += [studyfile.Grid("marpo", "jax_mpe:simple_spread", 3, "1M", ("eval_episodes=8", f"epochs={e}"))
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
    grids = studyfile.with_flags(study.cells, algos=None, envs=None, seeds=1, steps="200k", sets=["lr=1e-3"])
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
    examples = sorted((Path(__file__).resolve().parents[1] / "examples" / "studies").glob("*.toml"))
    assert examples
    for path in examples:
        study = studyfile.read(path)
        grids = studyfile.with_flags(study.cells, algos=None, envs=None, seeds=None, steps=None, sets=[])
        assert _ids(grids), path.name
    tuning = studyfile.read(examples[0])
    assert studyfile.trials(tuning.cells) == {"mappo": 4} and len(_ids(studyfile.with_flags(
        tuning.cells, algos=None, envs=None, seeds=None, steps=None, sets=[]))) == 2 * 4 * 3


# ----------------------------------------------------------------------------------------------
# the presets are study files shipped with the package

RUN_IDS = Path(__file__).resolve().parent / "data" / "preset_run_ids.json"


def _planned(monkeypatch, args: list[str]) -> list[str]:
    """The run ids `marpo-bench run ARGS` hands to the executor (nothing trained)."""
    seen: dict[str, list[str]] = {}

    def fake_grid(specs, results, study, console, **kw):
        seen["ids"] = sorted(s.run_id for s in specs)
        return []

    monkeypatch.setattr("marpo_bench.executors.run_grid", fake_grid)
    res = runner.invoke(app, ["run", *args, "--max-memory", "1000G"])
    assert res.exit_code == 0, res.output
    return seen["ids"]


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_plans_the_run_ids_it_planned_before_the_presets_became_files(name):
    """tests/data/preset_run_ids.json: the ids the Python presets planned (results/paper and
    results/paper-300k hold runs under them)."""
    want = json.loads(RUN_IDS.read_text())["presets"][name]
    ids = _ids(presets.resolve(name, algos=None, envs=None, seeds=None, steps=None, sets=[]))
    assert len(ids) == want["runs"]
    assert hashlib.sha256("\n".join(ids).encode()).hexdigest() == want["sha256"]
    if "run_ids" in want:
        assert ids == want["run_ids"]


def test_run_without_grid_flags_trains_the_default_preset_and_a_flag_replaces_its_field(tmp_path, monkeypatch):
    want = json.loads(RUN_IDS.read_text())["presets"]["default"]["run_ids"]
    assert _planned(monkeypatch, ["--results", str(tmp_path), "--study", "d"]) == want
    assert _planned(monkeypatch, ["--preset", "default", "--results", str(tmp_path), "--study", "d"]) == want
    one = _planned(monkeypatch, ["--seeds", "1", "--results", str(tmp_path), "--study", "d"])
    assert one == [i for i in want if "__s0__" in i]


def test_preset_show_prints_a_study_file_that_run_accepts_with_the_presets_run_ids(tmp_path, monkeypatch):
    shown = runner.invoke(app, ["preset", "show", "paper"])
    assert shown.exit_code == 0 and shown.stdout == presets.text("paper")
    mine = tmp_path / "mine.toml"
    mine.write_text(shown.stdout)
    from_file = _planned(monkeypatch, ["--study-file", str(mine), "--results", str(tmp_path), "--study", "f"])
    from_preset = _planned(monkeypatch, ["--preset", "paper", "--results", str(tmp_path), "--study", "p"])
    assert from_file == from_preset == json.loads(RUN_IDS.read_text())["presets"]["paper"]["run_ids"]
    assert (tmp_path / "f" / studyfile.STUDY_COPY).read_text().endswith(shown.stdout)


@pytest.mark.parametrize("args", [["preset", "show", "huge"], ["run", "--preset", "huge"]])
def test_an_unknown_preset_is_a_one_line_error_listing_the_valid_names(tmp_path, args):
    res = runner.invoke(app, [*args, "--results", str(tmp_path)] if args[0] == "run" else args)
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: unknown preset 'huge'; valid: {', '.join(presets.names())}"]
    assert not any(tmp_path.iterdir())


def test_list_presets_shows_each_files_cells_cpu_hours_and_description():
    res = runner.invoke(app, ["list", "presets"], env={"COLUMNS": "1000"})
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for name in presets.names():
        p = presets.load(name)
        assert p.name in text and p.description in text and p.budget
    paper = presets.load("paper")
    assert [c.cpu_hours for c in paper.cells] == [7.0, 5.0, 10.0, 5.0, None, None] and paper.cpu_hours is None
    for cell in paper.cells:  # each cell's line carries its hours
        (line,) = [ln for ln in res.output.splitlines()
                   if f"│ {cell.algos} | {cell.envs} | {cell.seeds} seeds | {cell.steps}" in ln]
        assert ("-" if cell.cpu_hours is None else f"{cell.cpu_hours:.1f}") in line.split("│")[3]


def test_the_presets_files_are_package_data_so_an_installed_package_ships_them():
    import tomllib
    from fnmatch import fnmatch

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["marpo_bench"]
    files = sorted((root / "marpo_bench" / presets.STUDIES).glob("*.toml"))
    assert sorted(f.stem for f in files) == list(presets.names()) and "default" in presets.names()
    assert all(any(fnmatch(f"{presets.STUDIES}/{f.name}", pat) for pat in patterns) for f in files)


def test_cpu_hours_are_a_cells_and_a_sweep_shares_them_among_its_configs_by_runs():
    text = TWO_CELLS.replace("seeds = 3\n", "seeds = 3\ncpu_hours = 12\n")
    study = studyfile.parse(text, "two.toml")
    assert study.cells[0].cpu_hours is None
    swept = study.cells[1:]  # mappo 4 configs (one algorithm each), marpo 2
    assert [c.cpu_hours for c in swept] == [2.0] * 6 and sum(c.cpu_hours for c in swept) == 12
    one = studyfile.parse("algos = 'mappo,marpo'\nenvs = 'jax_mpe:simple_spread'\nseeds = 1\nsteps = '1k'\n"
                          "cpu_hours = 0.5\nbudget_note = 'why'\n", "one.toml")
    assert one.cells[0].cpu_hours == 0.5 and one.budget_note == "why"


@pytest.mark.parametrize("text, says", [
    ("algos = ['mappo']\nenvs = ['jax_mpe:simple_spread']\nseeds = 1\nsteps = '1k'\ncpu_hours = 'lots'",
     "cpu_hours must be a number of CPU-hours"),
    ("seeds = 1\nsteps = '1k'\ncpu_hours = 1\n[[cell]]\nalgos = ['mappo']\nenvs = ['jax_mpe:simple_spread']",
     "cpu_hours at the top is a file's one grid's"),
    ("algos = ['mappo']\nenvs = ['jax_mpe:simple_spread']\nseeds = 1\nsteps = '1k'\nbudget_note = 3",
     "budget_note must be a string"),
])
def test_a_bad_documentation_field_is_a_one_line_error(text, says):
    with pytest.raises(ConfigError, match=says):
        studyfile.parse(text, "bad.toml")
