"""Bring your own task and algorithm: task parameters, the registry and its entry points, the
contracts the runner asks (never an algorithm's type or an env's private fields), and the example
plugin installed as a user would install it."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from marpo_bench import registry, store
from marpo_bench.config import RunSpec
from marpo_bench.envs import make_env, parse_env, split_task
from marpo_bench.recipes import build_config
from marpo_bench.train import train_run

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"
MLP = (("recurrent", "false"), ("recurrent_critic", "false"))  # a fast MAPPO for runner tests


def _cli(*args: str, pythonpath: list[Path] = (), fault: str = "", timeout: int = 600):
    """``marpo-bench ARGS`` in a fresh process, with ``pythonpath`` (e.g. a plugin's install
    directory) first on its path and an injected fault (``MARPO_BENCH_FAULT``, marpo_bench/faults.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(ROOT)])}
    env.pop("MARPO_BENCH_FAULT", None)
    if fault:
        env["MARPO_BENCH_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "marpo_bench", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


# --------------------------------------------------------------------------- task parameters


def test_a_parameter_at_its_default_names_the_plain_task_and_its_runs() -> None:
    assert parse_env("jax_mpe:simple_spread?num_agents=3") == ("jax_mpe", "simple_spread")
    assert parse_env("jax_mpe:simple_spread?num_agents=5") == ("jax_mpe", "simple_spread?num_agents=5")
    plain = RunSpec("mappo", *parse_env("jax_mpe:simple_spread"), 0, 1000).run_id
    assert RunSpec("mappo", *parse_env("jax_mpe:simple_spread?num_agents=3"), 0, 1000).run_id == plain


def test_a_task_with_parameters_has_a_path_safe_run_id_of_its_own() -> None:
    run_id = RunSpec("mappo", *parse_env("jax_mpe:simple_spread?num_agents=5"), 0, 1000).run_id
    assert run_id.startswith("mappo__jax_mpe-simple_spread.num_agents=5__s0__")
    assert not set(run_id) & set("?&/\\ ")


@pytest.mark.parametrize("name, must_mention", [
    ("jax_mpe:simple_spread?n=5", ["unknown parameter 'n'", "num_agents (int, 1..10, default 3"]),
    ("jax_mpe:simple_spread?num_agents=x", ["bad value 'x'", "expected int"]),
    ("jax_mpe:simple_spread?num_agents=11", ["out of range", "1..10"]),
    ("jax_mpe:simple_spread?num_agents", ["has no value"]),
    ("jax_mpe:simple_reference?num_agents=5",
     ["unknown parameter", "valid parameters of jax_mpe:simple_reference: none"]),
])
def test_bad_task_parameters_get_one_line_errors_naming_the_valid_ones(name, must_mention) -> None:
    with pytest.raises(ValueError) as info:
        parse_env(name)
    msg = str(info.value)
    assert "\n" not in msg and all(m in msg for m in must_mention), msg


def test_a_bad_task_parameter_on_the_command_line_exits_2_with_one_line(tmp_path) -> None:
    out = _cli("run", "--envs", "jax_mpe:simple_spread?num_agents=0", "--steps", "1k", "--results", str(tmp_path))
    assert out.returncode == 2 and "out of range" in out.stderr and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("family", ["mpe", "jax_mpe"])
def test_spread_with_five_agents_has_five_agents_and_five_landmarks_in_both_mpe_families(family) -> None:
    env = make_env(family, "simple_spread?num_agents=5", 2, agent_id=False)
    try:
        ts = env.reset(0)
        # own vel + pos (4), 5 landmarks (10), 4 other agents (8), communication of 4 others (8)
        assert env.info.num_agents == 5 and ts.obs.shape == (2, 5, 30)
        assert env.info.task == "simple_spread?num_agents=5"
        ts = env.step(torch.zeros(2, 5, dtype=torch.int64))
        assert torch.isfinite(ts.reward).all()
    finally:
        env.close()


def test_a_task_with_parameters_takes_its_base_tasks_recipe() -> None:
    five = build_config(RunSpec("mappo", "jax_mpe", "simple_spread?num_agents=5", 0, 1000))
    three = build_config(RunSpec("mappo", "jax_mpe", "simple_spread", 0, 1000))
    assert five == three and five.activation == "tanh"  # train_mpe_spread.sh's Tanh


def test_every_smax_map_of_the_installed_jaxmarl_is_a_task() -> None:
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO

    fam = registry.env_family("smax")
    assert set(fam.task_names()) == set(MAP_NAME_TO_SCENARIO)
    assert {"25m", "6h_vs_8z", "27m_vs_30m"} <= set(fam.task_names())  # refused before: a hand-kept list
    assert split_task("smax", "6h_vs_8z") == ("6h_vs_8z", {})


# --------------------------------------------------------------------------- the registry


def _fake_distribution(root: Path, name: str, envs: dict[str, str], algos: dict[str, str]) -> None:
    """A distribution on ``root`` (put on sys.path) that declares entry points, as pip would install it."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = ["[marpo_bench.envs]", *(f"{k} = {v}" for k, v in envs.items()),
             "[marpo_bench.algorithms]", *(f"{k} = {v}" for k, v in algos.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A sys.path entry holding plugins; the registry is rebuilt with them and restored after."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    monkeypatch.undo()
    registry.refresh()


def test_plugins_register_by_entry_point_and_a_broken_one_is_left_out_with_one_line(plugin_path) -> None:
    (plugin_path / "tiny_plugin.py").write_text(
        "from marpo_bench.algos.ppo_core import OnPolicyAlgorithm, PPOConfig\n"
        "class Tiny(OnPolicyAlgorithm):\n    'A tiny algorithm.'\n    Config = PPOConfig\n"
        "    def policy_objective(self, mb, logp_all, logp_next, adv, env_steps):\n        raise NotImplementedError\n"
    )
    _fake_distribution(plugin_path, "tiny-plugin", envs={"broken_env": "no_such_module:FAMILY"},
                       algos={"tiny": "tiny_plugin:Tiny", "mappo": "tiny_plugin:Tiny", "ghost": "tiny_plugin:Ghost"})
    reg = registry.refresh()
    tiny = reg.algorithms["tiny"]
    assert tiny.origin == "plugin tiny-plugin" and tiny.description == "A tiny algorithm."
    assert registry.algorithm_class("tiny").__name__ == "Tiny"
    assert reg.algorithms["mappo"].origin == "built-in"  # a plugin cannot take a built-in's name
    assert "broken_env" not in reg.families and "ghost" not in reg.algorithms
    problems = "\n".join(reg.problems)
    assert len(reg.problems) == 3 and all("\n" not in p for p in reg.problems)
    assert "'broken_env'" in problems and "no_such_module" in problems
    assert "'mappo'" in problems and "'ghost'" in problems
    with pytest.raises(ValueError, match="unknown algorithm 'ghost'; valid: .*tiny"):
        registry.algorithm_entry("ghost")


def test_list_shows_plugins_and_warns_once_per_broken_one(tmp_path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _fake_distribution(site, "broken-plugin", envs={}, algos={"oops": "no_such_module:Oops"})
    out = _cli("list", "algos", pythonpath=[site])
    assert out.returncode == 0, out.stderr
    assert "mappo" in out.stdout and "qmix" in out.stdout  # the rest still works
    warnings = [ln for ln in out.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "'oops'" in warnings[0] and "no_such_module" in warnings[0]


# --------------------------------------------------------------------------- the runner asks, never inspects


def test_a_metric_the_algorithm_does_not_declare_fails_the_run_with_one_line(plugin_path, tmp_path) -> None:
    (plugin_path / "chatty_plugin.py").write_text(
        "from baselines.mappo import MAPPO\n"
        "class Chatty(MAPPO):\n"
        "    def summarize_logs(self, logs):\n"  # the per-seed hook of the update's metrics
        "        return {**super().summarize_logs(logs), 'surprise': 1.0}\n"
    )
    _fake_distribution(plugin_path, "chatty-plugin", envs={}, algos={"chatty": "chatty_plugin:Chatty"})
    registry.refresh()
    spec = RunSpec("chatty", "jax_mpe", "simple_spread", 0, 3200, MLP)
    result = train_run(spec, tmp_path, "s", faults=())
    assert result.status == "failed" and "surprise" in result.message and "declare" in result.message


def test_an_algorithms_declared_metrics_are_stored_as_columns(plugin_path, tmp_path) -> None:
    (plugin_path / "extra_plugin.py").write_text(
        "from baselines.mappo import MAPPO\n"
        "class Extra(MAPPO):\n"
        "    metrics = (*MAPPO.metrics, 'ratio_max')\n"
        "    def summarize_logs(self, logs):\n"
        "        return {**super().summarize_logs(logs), 'ratio_max': 1.5}\n"
    )
    _fake_distribution(plugin_path, "extra-plugin", envs={}, algos={"extra": "extra_plugin:Extra"})
    registry.refresh()
    spec = RunSpec("extra", "jax_mpe", "simple_spread", 0, 3200, MLP)
    assert train_run(spec, tmp_path, "s", faults=()).status == "complete"
    metrics = store.read_metrics(store.run_dir(tmp_path, "s", spec.run_id))
    assert metrics["ratio_max"].dropna().tolist() == [1.5]  # the 3,200-step iteration's row
    assert list(metrics.columns[:len(store.METRIC_COLUMNS)]) == list(store.METRIC_COLUMNS)  # format unchanged


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module's code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


# Files that may name env families or algorithms in code, and why.
_MAY_NAME = {
    "marpo_bench/registry.py": "the built-in algorithms' table",
    "marpo_bench/presets.py": "named grids and the default study",
    "marpo_bench/regress/suites.py": "the regression suites are grids, like presets",
    "marpo_bench/report/plots.py": "fixed colours of the built-in algorithms (others take the palette)",
    "marpo_bench/analysis/load.py": "the default baseline (mappo), and MARPO (the suite's subject) first in tables",
    "baselines/mappo.py": "MAPPO's published recipes, keyed by env family and task (issue 20)",
    "baselines/qmix.py": "QMix's own name, as MAPPO's",
    "baselines/qmix_recipes.py": "QMix's published recipes, keyed by env family",
    "marpo_bench/algos/marpo.py": "MARPO's ablations register their names",
}


def test_no_module_names_an_env_family_or_algorithm_outside_its_own_file_and_the_registries() -> None:
    names = set(registry.env_families()) | set(registry.algorithm_names())
    item = r"(?:{})(?::[\w?=&]+)?".format("|".join(sorted(map(re.escape, names), key=len, reverse=True)))
    pattern = re.compile(rf"^{item}(?:,{item})*$")
    found = []
    for path in sorted([*ROOT.glob("marpo_bench/**/*.py"), *ROOT.glob("baselines/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel in _MAY_NAME or rel.startswith("marpo_bench/envs/"):  # a family names itself
            continue
        found += [f"{rel}:{line}: {s!r}" for line, s in _code_strings(path) if pattern.match(s)]
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- the example plugin


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """examples/plugin installed as a user would (pip, from its pyproject.toml) into a directory of its own."""
    target = tmp_path_factory.mktemp("plugin_site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(PLUGIN)], check=True, capture_output=True, timeout=300)
    return target


def test_the_example_plugin_trains_resumes_exactly_and_reports_without_touching_the_package(installed_plugin,
                                                                                             tmp_path) -> None:
    listed = _cli("list", "envs", pythonpath=[installed_plugin])
    assert listed.returncode == 0 and "rendezvous:meet" in listed.stdout and "plugin" in listed.stdout
    grid = ["run", "--algos", "ppo_kl,mappo", "--envs", "rendezvous:meet,rendezvous:meet?num_agents=3",
            "--seeds", "2", "--steps", "12k", "--results", str(tmp_path), "--study", "meet",
            "--set", "eval_interval=4000"]
    out = _cli(*grid, pythonpath=[installed_plugin])
    assert out.returncode == 0, out.stderr
    runs = sorted(p.name for p in (tmp_path / "meet" / "runs").iterdir())
    assert len(runs) == 8 and any(".num_agents=3__" in r for r in runs)
    ppo_kl = next(p for p in (tmp_path / "meet" / "runs").iterdir() if p.name.startswith("ppo_kl__rendezvous-meet__s0"))
    metrics = pd.read_parquet(ppo_kl / "metrics.parquet")
    assert metrics["kl_penalty"].notna().sum() >= 3  # the plugin's own metric, stored
    record = store.read_run_json(ppo_kl)
    assert record["config"]["rollout_len"] == 20  # the family's default for this algorithm

    # resume: the env snapshots itself, so an interrupted run continues exactly
    spec_args = ["run", "--algos", "ppo_kl", "--envs", "rendezvous:meet", "--seeds", "1", "--steps", "12k",
                 "--set", "eval_interval=4000", "--checkpoint-every", "4000", "--study", "cut",
                 "--results", str(tmp_path)]
    broken = _cli(*spec_args, pythonpath=[installed_plugin], fault="raise@8000")
    assert broken.returncode != 0
    resumed = _cli(*spec_args, pythonpath=[installed_plugin])
    assert resumed.returncode == 0, resumed.stderr
    run = next((tmp_path / "cut" / "runs").iterdir())
    record = store.read_run_json(run)
    assert record["status"] == "complete" and record["resumed_from"] >= 4000 and record["resume_exact"] is True
    whole = pd.read_parquet(ppo_kl / "metrics.parquet")
    again = pd.read_parquet(run / "metrics.parquet")
    cols = ["env_steps", "eval_return_mean", "policy_loss", "kl_penalty"]
    pd.testing.assert_frame_equal(again[cols], whole[cols])

    study = tmp_path / "meet"
    report = _cli("report", str(study), "--format", "html", "--reps", "2000", pythonpath=[installed_plugin])
    assert report.returncode == 0, report.stderr
    notes = [ln for ln in report.stdout.splitlines() if "left out of the aggregate" in ln]
    assert len(notes) == 2 and all("no normalisation bounds" in n and "marpo-bench bounds" in n for n in notes)
    assert (study / "report" / "report.html").is_file()

    # unknown tasks still get statistics: the random score measured once, a reference from the user
    first = _cli("bounds", str(study), "--reference", "rendezvous:meet=0.9", "--source", "a scripted walk",
                 "--episodes", "256", pythonpath=[installed_plugin])
    assert first.returncode == 0, first.stderr
    stored = json.loads((study / "bounds.json").read_text())["tasks"]
    assert set(stored) == {"rendezvous:meet", "rendezvous:meet?num_agents=3"}
    assert stored["rendezvous:meet"]["reference"] == 0.9 and stored["rendezvous:meet"]["episodes"] == 256
    assert -1.0 <= stored["rendezvous:meet"]["random"] < 0.9
    assert "reference" not in stored["rendezvous:meet?num_agents=3"]
    again = _cli("bounds", str(study), "--episodes", "64", pythonpath=[installed_plugin])  # nothing re-measured
    assert again.returncode == 0 and json.loads((study / "bounds.json").read_text())["tasks"] == stored
    bad = _cli("bounds", str(study), "--reference", "rendezvous:meet=-5", pythonpath=[installed_plugin])
    assert bad.returncode == 2 and "must be above its random score" in bad.stderr
    report = _cli("report", str(study), "--format", "html", "--reps", "2000", pythonpath=[installed_plugin])
    notes = [ln for ln in report.stdout.splitlines() if "left out of the aggregate" in ln]
    assert report.returncode == 0 and len(notes) == 1 and "num_agents=3" in notes[0]  # meet is normalised now
    assert "a scripted walk" in (study / "report" / "report.html").read_text()


@pytest.mark.parametrize("item", ["rendezvous:meet", "meet=0.5", "rendezvous:meet=high", "rendezvous:meet=nan"])
def test_a_malformed_reference_is_a_one_line_error(item) -> None:
    from marpo_bench.normalisation import BoundsError, parse_references

    with pytest.raises(BoundsError, match="use family:task=SCORE"):
        parse_references([item])
    spread5 = "jax_mpe:simple_spread?num_agents=5"
    assert parse_references([f"{spread5}=-30.5"]) == {spread5: -30.5}  # the score follows the last "="


def test_no_module_uses_another_modules_private_names() -> None:
    """``from marpo_bench.x import _name`` and ``module._name`` across the package's own modules: a
    module's private names are its own (a public name, documented, is what another module may use)."""
    ours = ("marpo_bench", "baselines")
    found = []
    for path in sorted([*ROOT.glob("marpo_bench/**/*.py"), *ROOT.glob("baselines/*.py")]):
        tree = ast.parse(path.read_text())
        modules: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ours:
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {a.name}")
                    modules.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in ours}
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                  and isinstance(node.value, ast.Name) and node.value.id in modules]
    assert not found, "\n".join(found)
