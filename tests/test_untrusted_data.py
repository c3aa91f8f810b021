"""Stored data never runs code: a task string read from a file (an imported marl-eval file, a run's
run.json or policy.pt) that names a module to import (``pettingzoo:os:system?...``) is data. Every
command that reads it runs nothing (a sentinel file is never created) and says why; only names the
user types may import, and even then the adapter refuses what is not an env factory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marpo_bench import store
from marpo_bench.cli import app
from marpo_bench.envs import UntrustedTaskError, make_env, parse_env

runner = CliRunner()
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"


def one_line(text: str) -> str:
    return " ".join(text.split())


def _payloads(sentinel: Path) -> list[str]:
    """Task strings of the pettingzoo family that would create ``sentinel`` if anything ran them."""
    return [f"os:system?command='touch {sentinel}'",
            f"builtins:exec?source='open({str(sentinel)!r}, \"w\")'",
            f"shutil:copyfile?src='{__file__}'&dst='{sentinel}'"]


def _marl_eval(tasks: list[str]) -> dict:
    steps = {f"STEP_{i}": {"step_count": i * 1000, "return": [float(i), float(i) + 0.5]} for i in range(3)}
    return {"pettingzoo": {task: {"mappo": {"0": steps, "1": steps}} for task in tasks}}


@pytest.fixture
def attack(tmp_path) -> tuple[Path, Path, Path]:
    """(sentinel, study with imported malicious runs, one of its runs with a malicious policy.pt)."""
    sentinel = tmp_path / "pwned"
    src = tmp_path / "shared.json"
    src.write_text(json.dumps(_marl_eval(_payloads(sentinel))))
    res = runner.invoke(app, ["import", str(src), "--study", "shared", "--results", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output  # importing is reading data: allowed, and runs nothing
    assert not sentinel.exists()
    study = tmp_path / "results" / "shared"
    run = sorted((study / "runs").iterdir())[0]
    record = store.read_run_json(run)
    store.save_policy(run, {"algo": "mappo", "env": "pettingzoo", "task": record["task"], "seed": 0, "config": {},
                            "kind": "policy", "state": {}, "final_eval": {"episodes": 4, "mode": "greedy",
                                                                          "seed": 1}})
    return sentinel, study, run


def test_a_task_naming_a_module_is_refused_before_anything_is_imported_unless_trusted():
    import sys

    assert "fake_module_never_there" not in sys.modules
    for call in (lambda: parse_env("pettingzoo:fake_module_never_there"),
                 lambda: make_env("pettingzoo", "mpe2.simple_spread_v3", 1)):
        with pytest.raises(UntrustedTaskError, match="--trust-imports"):
            call()
    # families that import nothing stay as they were
    assert parse_env("jax_mpe:simple_spread") == ("jax_mpe", "simple_spread")


@pytest.mark.parametrize("command", ["bounds", "eval", "report", "status", "export", "regress"])
def test_no_reading_command_runs_code_named_in_stored_data(attack, tmp_path, command):
    sentinel, study, run = attack
    args = {"bounds": ["bounds", str(study), "--episodes", "2"],
            "eval": ["eval", str(run), "--episodes", "2"],
            "report": ["report", str(study), "--format", "html", "--reps", "200", "--out", str(tmp_path / "rep")],
            "status": ["status", str(study)],
            "export": ["export", str(study), "--out", str(tmp_path / "out.json")],
            "regress": ["regress", "--reference", str(REFERENCE), "--candidate", str(study), "--mode", "stat"]}[command]
    res = runner.invoke(app, args)
    assert not sentinel.exists(), (command, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), (command, repr(res.exception))
    if command in ("bounds", "eval"):  # the commands that would build the env say why they did not
        text = one_line(res.output)
        assert "nothing was imported" in text and "--trust-imports" in text, text
        assert res.exit_code == (2 if command == "eval" else 0), res.output


def test_trusting_the_data_still_refuses_what_is_not_an_env_factory(attack):
    sentinel, study, run = attack
    for args in (["eval", str(run), "--episodes", "2", "--trust-imports"],
                 ["bounds", str(study), "--episodes", "2", "--trust-imports"]):
        res = runner.invoke(app, args)
        assert not sentinel.exists(), res.output
        assert "standard library" in one_line(res.output), res.output


def test_a_typed_name_may_import_but_only_a_class_or_function_of_its_own_module(tmp_path, monkeypatch):
    """A module of the user's that re-exports a standard-library function (os.makedirs) as its
    ``parallel_env``: refused before it is called, so no directory appears."""
    (tmp_path / "reexport_pz.py").write_text("from os import makedirs as parallel_env\nnot_callable = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    target = tmp_path / "made_by_makedirs"
    family, task = parse_env(f"pettingzoo:reexport_pz?name='{target}'", trust_imports=True)
    with pytest.raises(ValueError, match="no parallel_env class or function of its own"):
        make_env(family, task, 1, trust_imports=True)
    assert not target.exists()
    with pytest.raises(ValueError, match="no not_callable class or function"):
        make_env("pettingzoo", "reexport_pz:not_callable", 1, trust_imports=True)
    for name in ("pettingzoo:os:system", "pettingzoo:builtins:exec", "pettingzoo:subprocess:run"):
        with pytest.raises(ValueError, match="standard library"):
            parse_env(name, trust_imports=True)


def test_a_factory_that_returns_something_else_is_a_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "notenv_pz.py").write_text("def parallel_env(**kw):\n    return {'agents': []}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="not a PettingZoo Parallel env"):
        make_env("pettingzoo", "notenv_pz", 1, trust_imports=True)
