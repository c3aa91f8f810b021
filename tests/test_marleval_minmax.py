"""`report --normalise minmax`: marl-eval's min-max normalisation, checked against marl-eval itself.

The oracle is ``tests/data/marl_eval_reference.json``: marl-eval 0.0.4's own pipeline
(``data_process_pipeline``, ``create_matrices_for_rliable``, ``aggregate_scores``) run on the two
example files by ``benchmarks/marl_eval_reference.py`` (needs marl-eval; not run in CI).
``marl_eval_mock_data.json`` is marl-eval's own test data (``tests/mock_data_test.json`` at tag
0.0.4, Copyright 2022 InstaDeep Ltd., Apache License 2.0; see tests/data/README.md);
``marl_eval_minmax_example.json`` was made for these tests (two tasks on different scales, and a
logging step that marl-eval's min-max scan reads short).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from marpo_bench import marleval, store
from marpo_bench.analysis.load import load_scores
from marpo_bench.analysis.scores import AnalysisError
from marpo_bench.analysis.study import analyse
from marpo_bench.cli import app
from tests.test_report import write_synthetic_study

runner = CliRunner()
DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "marl_eval_reference.json").read_text())
EXAMPLES = list(REFERENCE["files"])
METRICS = {"IQM": "IQM", "Median": "Median", "Mean": "Mean", "Optimality Gap": "Optimality gap"}  # marl-eval: ours
POINT_TOL = 1e-9  # the same arithmetic in another order: float rounding only (observed <= 2e-16)
CI_TOL = 0.01  # the same bootstrap with another RNG (rliable's global np.random vs ours): observed <= 3e-4


def one_line(text: str) -> str:
    return " ".join(text.split())


def imported(tmp_path: Path, name: str) -> Path:
    """The example file ``name`` imported with `marpo-bench import` into a study of its own."""
    study = Path(name).stem
    res = runner.invoke(app, ["import", str(DATA / name), "--study", study, "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    return tmp_path / study


@pytest.mark.parametrize("name", EXAMPLES)
def test_minmax_scores_and_aggregates_equal_marl_evals_own(tmp_path, name):
    res = analyse(imported(tmp_path, name), reps=REFERENCE["bootstrap"]["reps"], normalisation="minmax")
    (env, ref), = REFERENCE["files"][name].items()
    assert res.data.agg_tasks == [f"{env}:{t}" for t in ref["tasks"]]  # no bounds needed: all in the aggregates
    for algo, final in ref["final_scores"].items():  # each run's normalised absolute_metrics return
        ours = [[next(r.final_score for r in res.data.task(f"{env}:{t}").runs[algo] if r.seed == int(run))
                 for t in ref["tasks"]] for run in final["runs"]]
        np.testing.assert_allclose(ours, final["runs_x_tasks"], rtol=0, atol=POINT_TOL)
    for algo, theirs in ref["aggregates"].items():  # marl-eval upper-cases the names
        for metric, est in theirs.items():
            mine = res.aggregates[algo.lower()][METRICS[metric]]
            assert mine.point == pytest.approx(est["point"], abs=POINT_TOL), (algo, metric)
            assert [mine.lo, mine.hi] == pytest.approx(est["ci"], abs=CI_TOL), (algo, metric)


def test_marl_evals_scan_misses_a_new_max_in_a_list_that_also_sets_a_new_min():
    assert marleval.minmax_scan([[1, 2], [0, 5], [3, 4]]) == (0, 4)  # if/elif: 5 is never seen as the max
    assert marleval.minmax_scan([[1, 2], [0, 1], [3, 5]]) == (0, 5)
    assert marleval.minmax_scan([]) is None
    push = json.loads((DATA / "marl_eval_minmax_example.json").read_text())["Robots"]["push"]
    values = [v for runs in push.values() for steps in runs.values() for s in steps.values() for v in s["return"]]
    low, high = marleval.task_minmax(push, None)
    assert low == min(values) and high < max(values)  # so the equality above checks the scan is replayed


def test_import_stores_each_tasks_marl_eval_range_in_its_runs(tmp_path):
    study = imported(tmp_path, "marl_eval_minmax_example.json")
    records, _ = store.load_study(study)
    ranges = {(r["task"], tuple(r["imported"]["return_minmax"])) for r in records}
    assert ranges == {("lift", (-1.95, 20.95)), ("push", (-58.08, -7.67))}


def test_imported_tasks_without_bounds_enter_the_aggregates_only_with_minmax_and_the_report_says_so(tmp_path):
    study = imported(tmp_path, "marl_eval_mock_data.json")
    default = analyse(study, reps=100)
    assert default.data.agg_tasks == [] and not default.aggregates
    assert "env_1:task_1 is left out of the aggregate statistics (no normalisation bounds" in one_line(
        " ".join(default.notes))
    res = runner.invoke(app, ["report", str(study), "--format", "md,html", "--reps", "200", "--normalise", "minmax",
                              "--baseline", "algo_2"])
    assert res.exit_code == 0, res.output
    text = one_line((study / "report" / "report.md").read_text())
    assert "normalisation: min-max, as marl-eval normalises (--normalise minmax)" in text
    assert "Tasks normalised so [min, max]: env_1:task_1 [0, 9], env_1:task_2 [0, 9], env_1:task_3 [0, 9]" in text
    assert "left out of the aggregate statistics" not in text
    html = one_line((study / "report" / "report.html").read_text())  # its normalisation table marks the tasks
    assert html.count("min-max over the task&#39;s own values (as marl-eval normalises: --normalise minmax)") == 3
    assert "(not given: see the notes)" in html  # 3 logging steps: no P at 25% of the budget, said, not a crash


def test_minmax_normalises_registered_tasks_too_with_the_range_marl_eval_finds_in_their_export(tmp_path):
    study = tmp_path / "s"
    write_synthetic_study(study, ["marpo", "mappo"], [("jax_mpe", "simple_spread"), ("smax", "3m")], seeds=3)
    assert runner.invoke(app, ["export", str(study), "--out", str(tmp_path / "s.json")]).exit_code == 0
    res = runner.invoke(app, ["import", str(tmp_path / "s.json"), "--study", "back", "--results", str(tmp_path),
                              "--reward-scale", "team_sum"])
    assert res.exit_code == 0, res.output
    mine = load_scores(study, normalisation="minmax").task("jax_mpe:simple_spread")
    via_file = load_scores(tmp_path / "back", normalisation="minmax").task("jax_mpe:simple_spread")
    assert (mine.bounds.random, mine.bounds.reference) == (via_file.bounds.random, via_file.bounds.reference)
    means = np.concatenate([r.raw for rs in mine.runs.values() for r in rs])  # every evaluation (one budget)
    assert (mine.bounds.random, mine.bounds.reference) == (means.min(), means.max() + 1e-6)
    assert mine.bounds.random_source.startswith("min-max over the task's own values")
    assert load_scores(study, normalisation="minmax").task("smax:3m").bounds is None  # win rates: not normalised


def test_runs_imported_before_the_range_was_stored_fall_back_to_their_means_and_say_so(tmp_path):
    study = imported(tmp_path, "marl_eval_minmax_example.json")
    for run in (study / "runs").iterdir():
        record = store.read_run_json(run)
        del record["imported"]["return_minmax"]
        store.write_run_json(run, record, overwrite=True)
    data = load_scores(study, normalisation="minmax")
    assert "imported run(s) predate the stored marl-eval range" in " ".join(data.notes)
    assert data.agg_tasks == ["Robots:lift", "Robots:push"]


def test_an_unknown_normalisation_is_a_one_line_error(tmp_path):
    study = imported(tmp_path, "marl_eval_mock_data.json")
    with pytest.raises(AnalysisError, match="unknown normalisation 'zscore'; valid: bounds, minmax"):
        load_scores(study, normalisation="zscore")  # type: ignore[arg-type]
    res = runner.invoke(app, ["report", str(study), "--format", "md", "--normalise", "zscore"])
    assert res.exit_code == 2 and "unknown normalisation" in res.output and "Traceback" not in res.output
