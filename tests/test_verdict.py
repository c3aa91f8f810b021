"""The report answers the question: page 1 leads with one headline sentence for the primary pair
(MARPO vs MAPPO by default), worded by what the CIs support, then every other comparison as a row
of one table; aggregates per score kind and family, tasks no algorithm learns shown apart, and a
Markdown summary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_report import ALGOS3, TASKS2, write_synthetic_study
from typer.testing import CliRunner

from marpo_bench import store
from marpo_bench.analysis.compare import Comparison
from marpo_bench.analysis.scores import AnalysisError
from marpo_bench.analysis.study import analyse
from marpo_bench.cli import app
from marpo_bench.report.verdict import headline, notes, primary, sentence, table, verdicts, word
from marpo_bench.stats import Estimate, aggregate_estimates

runner = CliRunner()


def _comparison(poi: Estimate, seeds: int = 5, iqm: Estimate = Estimate(0.6, 0.5, 0.7),
                iqm_baseline: Estimate = Estimate(0.5, 0.4, 0.6), tasks: tuple[str, ...] = ("a", "b")) -> Comparison:
    return Comparison("marpo", "mappo", "all", f"all {len(tasks)} tasks", list(tasks), dict.fromkeys(tasks, 200_000),
                      (seeds, seeds), poi, iqm, iqm_baseline)


@pytest.mark.parametrize("lo, hi, expected", [(0.55, 0.9, "better"), (0.1, 0.45, "worse"),
                                              (0.3, 0.7, "indistinguishable"), (0.5, 0.8, "indistinguishable"),
                                              (0.2, 0.5, "indistinguishable")])
def test_the_verdict_word_is_what_the_ci_of_p_supports(lo, hi, expected) -> None:
    c = _comparison(Estimate((lo + hi) / 2, lo, hi))
    assert word(c) == expected
    text = sentence(c, 0.95)
    assert text.startswith("marpo vs mappo, aggregated over 2 tasks (a, b) at 200,000 env steps, 5 seeds each: "
                           "marpo is ")
    assert f"[{lo:.3f}, {hi:.3f}]" in text and "95% CIs" in text


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """marpo (skill 0.8) > mappo (0.6) > qmix (0.45) on an MPE and a SMAX task, plus a SMAX map on
    which every algorithm's win rate is 0."""
    path = tmp_path_factory.mktemp("results") / "verdict"
    write_synthetic_study(path, ALGOS3, [*TASKS2, ("smax", "5m_vs_6m")], seeds=5, incomplete=False)
    for run in (path / "runs").iterdir():
        if "5m_vs_6m" in run.name:
            rows = pd.read_parquet(run / "metrics.parquet").to_dict("records")
            for r in rows:
                r["eval_win_rate"], r["eval_return_mean"] = 0.0, 0.1
            store.write_metrics(run, rows, overwrite=True)
    return path


def test_groups_by_score_kind_each_with_its_own_statistics(study) -> None:
    res = analyse(study, reps=2000)
    assert res.data.unlearned == ["smax:5m_vs_6m"] and "smax:5m_vs_6m" not in res.data.agg_tasks
    assert [g.name for g in res.groups] == ["all", "kind:return", "kind:win_rate"]  # families = kinds here
    labels = {g.name: g.label for g in res.groups}
    assert labels["kind:return"] == "normalised-return tasks (jax_mpe; 1 task)"
    assert labels["kind:win_rate"] == "win-rate tasks (smax; 1 task)"
    smax = next(g for g in res.groups if g.name == "kind:win_rate")
    i = res.data.agg_tasks.index("smax:3m")
    alone = aggregate_estimates({a: [v[i]] for a, v in res.data.final_scores().items()}, 2000)
    assert smax.aggregates["marpo"]["IQM"] == alone["marpo"]["IQM"]  # the group's own tasks only
    assert set(smax.poi) == {("marpo", "mappo"), ("qmix", "mappo")}


def test_the_headline_names_the_primary_pair_and_the_rest_are_table_rows(study) -> None:
    res = analyse(study, reps=2000)
    assert res.primary == "marpo" and res.baseline == "mappo"
    assert headline(res).startswith("marpo vs mappo, aggregated over 2 tasks (jax_mpe:simple_spread, smax:3m) at "
                                    "200,000 env steps, 5 seeds each: marpo is better than mappo: P(marpo > mappo) "
                                    "= 1.000")
    rows = table(res)
    # the primary pair's own groups first, then qmix's: one row per (pair, group), never the headline again
    assert [(r.comparison, r.tasks) for r in rows] == [
        ("marpo vs mappo", "jax_mpe:simple_spread"), ("marpo vs mappo", "smax:3m"),
        ("qmix vs mappo", "jax_mpe:simple_spread, smax:3m"), ("qmix vs mappo", "jax_mpe:simple_spread"),
        ("qmix vs mappo", "smax:3m")]
    qmix = rows[2]
    assert qmix.verdict == "worse" and qmix.budget == "200k" and qmix.poi.startswith("0.") and " [" in qmix.poi
    assert qmix.efficiency == "not reached" or qmix.efficiency.endswith("]")  # a ratio carries its range
    said = notes(res)
    assert any("6 comparisons" in ln for ln in said)
    assert any("Not learned by any algorithm" in ln and "smax:5m_vs_6m" in ln for ln in said)


def test_primary_picks_the_headlines_algorithm_and_must_be_in_the_study(study) -> None:
    res = analyse(study, reps=500, primary="qmix")
    assert headline(res).startswith("qmix vs mappo, aggregated over 2 tasks") and primary(res).algo == "qmix"
    assert [r.comparison for r in table(res)][:3] == ["qmix vs mappo"] * 2 + ["marpo vs mappo"]
    with pytest.raises(AnalysisError, match="primary 'ippo' is not in study"):
        analyse(study, reps=100, primary="ippo")
    with pytest.raises(AnalysisError, match="is the baseline"):
        analyse(study, reps=100, primary="mappo")


def test_page_one_leads_with_the_headline_then_the_table_in_html_md_and_the_terminal(study, tmp_path) -> None:
    out = runner.invoke(app, ["report", str(study), "--out", str(tmp_path), "--reps", "2000", "--format", "html,md"])
    assert out.exit_code == 0, out.output
    head = "marpo vs mappo, aggregated over 2 tasks (jax_mpe:simple_spread, smax:3m) at 200,000 env steps"
    html = (tmp_path / "report.html").read_text()
    overview = html[html.index('<section id="overview">'):]
    box = overview[overview.index('class="verdict"'):overview.index('class="facts"')]  # first thing on page 1
    assert box.index(head) < box.index("<td>qmix vs mappo</td>") < box.index("6 comparisons")
    assert "win-rate tasks (smax; 1 task)" in html  # the aggregate groups stay
    md = (tmp_path / "report.md").read_text()
    verdict = md[md.index("**Verdict**"):]
    assert verdict.startswith(f"**Verdict**\n\n{head}")
    assert "| qmix vs mappo | jax_mpe:simple_spread, smax:3m | 200k | " in verdict
    assert "| win-rate tasks (smax; 1 task) |" in md and "| smax:5m_vs_6m (not learned) | marpo |" in md
    text = " ".join(out.output.split())
    assert f"verdict {head}" in text and text.index(f"verdict {head}") < text.index("qmix vs mappo")


def test_md_alone_writes_no_html(study, tmp_path) -> None:
    out = runner.invoke(app, ["report", str(study), "--out", str(tmp_path), "--reps", "500", "--format", "md"])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis.json", "report.md"]


def test_probability_of_improvement_at_a_quarter_half_and_all_of_the_budget(study) -> None:
    res = analyse(study, reps=2000)
    assert list(res.poi_at) == [0.25, 0.5, 1.0]
    assert res.poi_at[1.0][("marpo", "mappo")] == res.poi[("marpo", "mappo")]
    # the synthetic curves rise as 1 - exp(-4 t): marpo's lead over mappo is there at every point
    assert all(d[("marpo", "mappo")].lo > 0.5 for d in res.poi_at.values())
    # at a quarter of the budget, each run's score is the mean of its last K points up to there
    early = res.data.scores_at(0.25)
    final = res.data.final_scores()
    assert all((e <= f + 1e-12).all() for a in early for e, f in zip(early[a], final[a], strict=True))
    late = res.data.scores_at(1.0)
    assert all((lt == f).all() for a in late for lt, f in zip(late[a], final[a], strict=True))


def test_cost_sums_run_hours_and_cpu_hours_and_warns_about_mixed_machines(tmp_path) -> None:
    study = tmp_path / "cost"
    write_synthetic_study(study, ALGOS3, TASKS2, seeds=3, incomplete=False)
    records, _ = store.load_study(study)
    moved = next(r for r in records if r["algo"] == "qmix")
    moved["host"] = {**moved["host"], "processor": "another CPU", "cpus": 64, "load_1min": 0.5}
    moved["torch_threads"] = 4
    store.write_run_json(study / "runs" / moved["run_id"], moved, overwrite=True)
    res = analyse(study, reps=500)
    walls = {a: [r["wall_seconds"] for r in records if r["algo"] == a] for a in ALGOS3}
    assert res.cost["mappo"].run_hours == pytest.approx(sum(walls["mappo"]) / 3600)
    assert res.cost["mappo"].cpu_hours == pytest.approx(res.cost["mappo"].run_hours)  # one thread per run
    q = res.cost["qmix"]
    assert q.cpu_hours == pytest.approx((sum(walls["qmix"]) + 3 * moved["wall_seconds"]) / 3600)  # 4 threads on one
    assert q.runs == 6 and q.seconds_per_step > 0
    assert any("2 different machines" in w and "another CPU (64 CPUs)" in w for w in res.cost_warnings)



def test_bold_marks_a_best_only_where_its_ci_clears_every_other(study, tmp_path) -> None:
    import re

    from marpo_bench.report import render_html

    html = render_html(analyse(study, reps=2000))
    table = html[html.index('<section id="tasks"'):html.index('<section id="curves"')]
    bold = re.findall(r'<td class="num best">([-0-9.]+)', table)
    assert bold and len(bold) <= 2  # marpo clears mappo and qmix on the learned tasks, never on 5m_vs_6m
    row = r"<tr>\s*<td>(?:<b>([^<]+)</b>)?</td>\s*<td><span[^>]*></span>(\w+)</td>\s*<td class=\"num( best)?\""
    rows = re.findall(row, table)
    assert len(rows) == 9 and all(algo == "marpo" for _, algo, best in rows if best)


def test_wall_clock_ranges_share_one_unit() -> None:
    from marpo_bench.report.render import secs_range

    assert secs_range(168.0, 103.0, 140.0) == "2.8 min (1.7–2.3 min)"
    assert secs_range(50.0, 40.0, 60.0) == "50 s (40–60 s)"


def test_marpos_diagnostics_appear_per_family_when_its_runs_log_them(tmp_path) -> None:
    study = tmp_path / "diag"
    write_synthetic_study(study, ALGOS3, TASKS2, seeds=3, incomplete=False)
    assert analyse(study, reps=200).diagnostics == {}  # nothing logged: no section
    for run in (study / "runs").iterdir():
        if run.name.startswith("marpo__"):
            rows = pd.read_parquet(run / "metrics.parquet").to_dict("records")
            for i, r in enumerate(rows):
                r["kl_delta"], r["clip_fraction"] = (0.08 - 0.003 * i, 0.01 * i) if i else (float("nan"),) * 2
            store.write_metrics(run, rows, overwrite=True)
    res = analyse(study, reps=200)
    assert sorted(res.diagnostics) == ["jax_mpe", "smax"]
    delta = res.diagnostics["smax"]["kl_delta"]
    assert list(delta) == ["marpo"] and delta["marpo"].point[-1] < delta["marpo"].point[1]  # δ decays
    assert "clip_low_p5" not in res.diagnostics["smax"]  # not logged: no panel
    from marpo_bench.report import render_html

    assert 'id="diagnostics"' in render_html(res)


def test_configs_are_one_table_of_the_settings_that_differ(study) -> None:
    from marpo_bench.report.render import config_table

    res = analyse(study, reps=200)
    table = config_table(res)
    assert table["rows"] == [] and table["same"] == 3  # the synthetic runs share lr, num_envs and clip
    records = [r for r in res.data.records if r["algo"] == "qmix" and r["env"] == "smax"]
    for r in records:
        r["config"] = {**r["config"], "lr": 1e-3, "buffer_size": 5000}
    table = config_table(res)
    cols = table["columns"]
    assert cols == ["marpo · jax_mpe", "marpo · smax", "qmix · jax_mpe", "qmix · smax", "mappo · jax_mpe",
                    "mappo · smax"]
    assert table["rows"] == [("lr", ["0.0005", "0.0005", "0.0005", "0.001", "0.0005", "0.0005"])]  # buffer: qmix only


@pytest.mark.parametrize("commits, says", [
    (["af6d829d33269e0bdf498a6a810e24618391c50c", "30db9e9f90897d9fab7249d02f3804a30271bf13"],
     "with the same numerics-relevant code"),
    (["613e754", "af6d829d33269e0bdf498a6a810e24618391c50c"], "baselines/mappo.py, baselines/qmix.py"),
    (["0" * 40, "af6d829d33269e0bdf498a6a810e24618391c50c"], "is unknown"),
    (["af6d829d33269e0bdf498a6a810e24618391c50c"], "all runs come from one commit"),
])
def test_provenance_says_whether_the_numerics_relevant_code_changed_between_commits(commits, says) -> None:
    import subprocess

    from marpo_bench.report.render import numerics_changes

    root = Path(__file__).resolve().parents[1]
    have = subprocess.run(["git", "cat-file", "-e", "af6d829d33269e0bdf498a6a810e24618391c50c"], cwd=root,
                          capture_output=True)
    if have.returncode != 0:
        pytest.skip("this checkout has no git history")
    assert says in numerics_changes(commits)


@pytest.mark.parametrize("seeds, expected", [(2, "too few seeds"), (4, "too few seeds"), (5, "better")])
def test_a_directional_word_needs_five_seeds_per_task_and_fewer_give_point_estimates_only(seeds, expected) -> None:
    c = _comparison(Estimate(1.0, 0.9, 1.0), seeds, tasks=("a",))
    assert word(c) == expected
    text = sentence(c, 0.95)
    if seeds < 5:
        assert f"{seeds} seeds each: too few seeds to tell ({seeds} per algorithm; 5 needed): point estimates" in text
        assert "better" not in text and "worse" not in text and "[" not in text  # no interval, no word


def test_a_two_seed_study_says_too_few_seeds_and_states_the_rule(tmp_path) -> None:
    """make demo's study shape: 2 seeds of marpo and mappo on one task."""
    study = tmp_path / "demo"
    write_synthetic_study(study, ["marpo", "mappo"], TASKS2[:1], seeds=2, incomplete=False)
    res = analyse(study, reps=500)
    line = headline(res)
    assert line.startswith("marpo vs mappo, aggregated over 1 task (jax_mpe:simple_spread) at 200,000 env steps, "
                           "2 seeds each: too few seeds to tell (2 per algorithm; 5 needed): point estimates")
    assert not any(w in line for w in ("better", "worse", "indistinguishable", "tie")) and "[" not in line
    assert table(res) == []  # one comparison: the headline
    assert any(ln.startswith("Evidence rule: better or worse only where the whole 95% CI") and "at least 5 seeds" in ln
               for ln in notes(res))
    from marpo_bench.report import render_html

    html = render_html(res)
    poi = html[html.index('<section id="poi"'):html.index('<section id="profiles"')]
    assert "tag ok" not in poi and "tag bad" not in poi and "too few seeds to tell" in poi  # nor in the P tables


def test_identical_scores_are_a_tie_not_a_word(tmp_path) -> None:
    c = _comparison(Estimate(0.5, 0.5, 0.5), 5, Estimate(0.0, 0.0, 0.0), Estimate(0.0, 0.0, 0.0), ("a",))
    assert word(c) == "tied" and "tie: every run of one scored like every run of the other" in sentence(c, 0.95)


def test_a_missing_ablation_cell_never_removes_a_task_from_marpo_vs_mappo(tmp_path) -> None:
    """An ablation run on the MPE task only: the aggregate table (every algorithm) holds that task
    alone, but MARPO vs MAPPO aggregates both tasks both ran, and says which."""
    study = tmp_path / "ablation"
    write_synthetic_study(study, ["marpo", "mappo"], TASKS2, seeds=5, incomplete=False)
    write_synthetic_study(study, ["marpo_noreflect"], TASKS2[:1], seeds=5, incomplete=False)
    res = analyse(study, reps=500)
    assert res.data.agg_tasks == ["jax_mpe:simple_spread"]
    by = {(c.algo, c.group): c for c in verdicts(res)}
    assert by[("marpo", "all")].tasks == ["jax_mpe:simple_spread", "smax:3m"]
    assert by[("marpo_noreflect", "all")].tasks == ["jax_mpe:simple_spread"]
    assert headline(res).startswith("marpo vs mappo, aggregated over 2 tasks (jax_mpe:simple_spread, smax:3m) at "
                                    "200,000 env steps, 5 seeds each: marpo is better than mappo")
    # where the pair's tasks are the aggregate table's, the numbers are the table's
    only = next(c for c in res.comparisons if c.tasks == res.data.agg_tasks and c.algo == "marpo_noreflect")
    assert only.iqm == res.aggregates["marpo_noreflect"]["IQM"]
    assert only.poi == res.poi[("marpo_noreflect", "mappo")]


def test_the_sample_efficiency_ratio_carries_the_range_where_its_band_reaches_the_target(study) -> None:
    res = analyse(study, reps=2000)
    r = primary(res).reach
    assert f"; marpo needs {r.steps_ratio:.2f}x [{r.early / r.baseline_steps:.2f}x, " in headline(res)
    assert r.early <= r.steps <= (r.late if r.late == r.late else float("inf"))
    # the pair's tasks are the aggregate table's here: the same ratio as the sample-efficiency section's
    assert r.steps_ratio == pytest.approx(res.reach["marpo"].steps_ratio)


def test_runs_of_a_superseded_recipe_are_flagged_and_page_one_says_budgets_and_commits(tmp_path) -> None:
    from marpo_bench.config import RunSpec
    from marpo_bench.recipes import build_config

    study = tmp_path / "stale"
    write_synthetic_study(study, ["marpo", "mappo"], TASKS2[:1], seeds=5, incomplete=False)
    records, _ = store.load_study(study)
    today = vars(build_config(RunSpec("mappo", "jax_mpe", "simple_spread", 0, 1)))
    for r in records:  # marpo's runs: today's recipe exactly; mappo's: an older epochs value
        r["config"] = dict(vars(build_config(RunSpec(r["algo"], r["env"], r["task"], 0, 1))))
        if r["algo"] == "mappo":
            r["config"]["epochs"] = today["epochs"] - 5
        store.write_run_json(study / "runs" / r["run_id"], r, overwrite=True)
    res = analyse(study, reps=500)
    drift = [n for n in res.notes if "differs from today's recipe" in n]
    assert len(drift) == 1 and drift[0].startswith("mappo on jax_mpe:simple_spread: 5 run(s)")
    assert f"epochs {today['epochs'] - 5} (today {today['epochs']})" in drift[0]
    out = runner.invoke(app, ["report", str(study), "--out", str(tmp_path / "r"), "--reps", "500", "--format", "md"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Budgets: " in md and "env steps, 5 seeds per algorithm: all 1 task" in md and "Commits: 0123456" in md
    assert out.exit_code == 0
