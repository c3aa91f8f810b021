"""Choosing each algorithm's best config of a sweep (marpo_bench/analysis/selection.py, `report
--select best`) on a hand-made study: the config is chosen on the selection seeds only, the
comparison uses the other seeds only, and page 1 says which config, by what rule, from how many."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from marpo_bench import store
from marpo_bench.analysis.scores import AnalysisError
from marpo_bench.analysis.selection import Candidate, Pick, Selection, SelectRule, choose, parse_seeds, split_seeds
from marpo_bench.analysis.study import analyse
from marpo_bench.cli import app
from marpo_bench.config import RunSpec
from marpo_bench.normalisation import task_bounds
from marpo_bench.report.render import render_markdown

runner = CliRunner()
ENV, TASK, BUDGET = "jax_mpe", "simple_spread", 100_000
# normalised final score per (algo, config) and seed: mappo's lr=0.0003 is the better config on seeds
# 2-3, lr=0.0007 on seeds 0-1 (the default selection seeds): the rule must pick lr=0.0007
SCORES = {("mappo", (("lr", "0.0003"),)): [0.5, 0.5, 0.9, 0.9],
          ("mappo", (("lr", "0.0007"),)): [0.7, 0.7, 0.6, 0.6],
          ("marpo", ()): [0.8, 0.8, 0.8, 0.8]}


def _write_study(study: Path, scores: dict = SCORES) -> None:
    b = task_bounds(ENV, TASK)
    for (algo, overrides), per_seed in scores.items():
        for seed, frac in enumerate(per_seed):
            spec = RunSpec(algo, ENV, TASK, seed, BUDGET, overrides)
            path = store.run_dir(study.parent, study.name, spec.run_id)
            store.write_metrics(path, [{"env_steps": s, "wall_seconds": s / 1000, "eval_episodes": 32,
                                        "eval_return_mean": b.random + frac * min(1, s / 50_000) * (
                                            b.reference - b.random)}  # learns, then flat at frac
                                       for s in range(0, BUDGET + 1, 5_000)])
            store.write_run_json(path, {
                "run_id": spec.run_id, "algo": algo, "env": ENV, "task": TASK, "seed": seed, "budget": BUDGET,
                "overrides": [list(p) for p in overrides], "status": "complete", "message": "",
                "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:05:00+00:00",
                "wall_seconds": 100.0, "env_steps": BUDGET, "git_commit": "0123456789abcdef",
                "versions": {"python": "3.11.2", "marpo-bench": "0.1.0"},
                "host": {"machine": "x86_64", "cpus": 2, "gpu": None, "system": "Linux"}, "torch_threads": 1,
                "device": "cpu", "eval_mode": "greedy", "eval_episodes": 32, "reward_scale": "team_sum",
                "episode_limit": 25})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    study = tmp_path_factory.mktemp("results") / "sweep"
    _write_study(study)
    return study


def test_the_default_split_chooses_on_the_lower_half_of_the_seeds_and_compares_on_the_rest():
    assert split_seeds([0, 1, 2, 3, 4], None) == ((0, 1), (2, 3, 4))
    assert split_seeds([2, 0, 1, 1], None) == ((0,), (1, 2))
    assert split_seeds([0, 1, 2, 3], (3,)) == ((3,), (0, 1, 2))
    assert parse_seeds("3, 1") == (1, 3) and parse_seeds(None) is None


@pytest.mark.parametrize("seeds, chosen, says", [
    ([0], None, "needs at least 2 seeds"),
    ([0, 1], (0, 1), "leaves no seed to compare on"),
    ([0, 1, 2], (7,), "--select-seeds 7: not a seed of the study; its seeds: 0, 1, 2"),
])
def test_a_split_that_leaves_a_side_empty_or_names_a_missing_seed_is_an_error(seeds, chosen, says):
    with pytest.raises(AnalysisError, match=says):
        split_seeds(seeds, chosen)


def test_each_algorithm_gets_its_best_config_on_the_selection_seeds_even_where_another_wins_on_the_rest(sweep):
    kept, sel = choose(sweep, SelectRule(), last_k=3)
    assert (sel.select_seeds, sel.eval_seeds, sel.by_default) == ((0, 1), (2, 3), True)
    picks = {p.algo: p for p in sel.picks}
    assert picks["mappo"].best.config == "lr=0.0007" and picks["marpo"].best.config == ""
    assert [c.config for c in picks["mappo"].ranked] == ["lr=0.0007", "lr=0.0003"]
    assert [round(c.score, 6) for c in picks["mappo"].ranked] == [0.7, 0.5]
    assert {p.algo: p.trials for p in sel.picks} == {"mappo": 2, "marpo": 1}
    assert sorted((r["algo"], r["seed"], tuple(map(tuple, r["overrides"]))) for r, _ in kept) == [
        ("mappo", 2, (("lr", "0.0007"),)), ("mappo", 3, (("lr", "0.0007"),)), ("marpo", 2, ()), ("marpo", 3, ())]
    assert sel.left_out == 12 - 4


def test_given_selection_seeds_choose_on_those_and_compare_on_the_others(sweep):
    kept, sel = choose(sweep, SelectRule((2, 3)), last_k=3)
    assert {p.algo: p.best.config for p in sel.picks}["mappo"] == "lr=0.0003"
    assert sorted({r["seed"] for r, _ in kept}) == [0, 1] and not sel.by_default
    assert "given by --select-seeds" in sel.statement()


def test_the_report_compares_the_chosen_configs_on_the_evaluation_seeds_only_and_says_so_first(sweep):
    res = analyse(sweep, reps=200, select=SelectRule())
    assert res.selection is not None
    runs = {a: rs for t in res.data.tasks for a, rs in t.runs.items()}
    assert sorted(runs) == ["mappo", "marpo"]  # one config each: plain labels
    assert {r.seed for rs in runs.values() for r in rs} == {2, 3}
    assert [round(r.final_score, 6) for r in runs["mappo"]] == [0.6, 0.6]  # lr=0.0007's evaluation seeds
    first = res.notes[0]
    assert first == res.selection.statement()
    for said in ("--select best", "seeds 0, 1 (the lower half of the study's seeds)", "compared on seeds 2, 3 only",
                 "mappo: lr=0.0007 (best of 2 configs)", "marpo: its defaults (no --set) (its only config)",
                 "UNEQUAL tuning budgets (marpo 1, mappo 2 configs)"):
        assert said in first
    assert "config selection, mappo: mean normalised final score on seeds 0, 1 over jax_mpe:simple_spread: " \
           "lr=0.0007 0.700 (2 runs), lr=0.0003 0.500 (2 runs)" in res.notes
    md = render_markdown(res)
    assert md.index(first) < md.index("**Verdict**")  # page 1, before the verdict


def test_an_equal_tuning_budget_is_stated_as_such():
    def pick(algo: str) -> Pick:
        return Pick(algo, (Candidate("lr=1", 0.9, 2), Candidate("lr=2", 0.8, 2)), ("t",), "mean normalised final score")

    sel = Selection((0,), (1, 2), True, (pick("marpo"), pick("mappo")), 0)
    assert "equal tuning budget: 2 configs per algorithm" in sel.statement()
    assert "UNEQUAL" not in sel.statement()


def test_report_select_best_writes_the_choice_on_page_one(sweep, tmp_path):
    res = runner.invoke(app, ["report", str(sweep), "--select", "best", "--format", "md", "--reps", "200",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Configs selected (--select best)" in md and "mappo: lr=0.0007 (best of 2 configs)" in md


@pytest.mark.parametrize("args, says", [
    (["--select", "worst"], "unknown --select 'worst'; valid: best"),
    (["--select-seeds", "0"], "--select-seeds needs --select best"),
    (["--select", "best", "--select-seeds", "9"], "--select-seeds 9: not a seed of the study"),
    (["--select", "best", "--select-seeds", "0,1,2,3"], "leaves no seed to compare on"),
    (["--select", "best", "--select-seeds", "a"], "--select-seeds must be seed numbers"),
])
def test_bad_selection_options_are_one_line_errors_and_write_nothing(sweep, tmp_path, args, says):
    res = runner.invoke(app, ["report", str(sweep), *args, "--format", "md", "--reps", "200",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert says in " ".join(res.output.split()) and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "r").exists()
