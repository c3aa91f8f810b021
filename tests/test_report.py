"""The report end to end on small synthetic stores: HTML + PDF content, a headless-Chromium render
(no broken images, no console errors, a screenshot kept under test-artifacts/), and the CLI's
errors and notes.

Also a tool: ``python tests/test_report.py make-study DIR [--algos 3 --tasks 6 --seeds 10]`` writes
a synthetic study for timing ``marpo-bench report DIR`` (see the report's README section).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from marpo_bench import store
from marpo_bench.analysis.study import analyse
from marpo_bench.cli import app
from marpo_bench.config import RunSpec
from marpo_bench.normalisation import task_bounds
from marpo_bench.report import render_html, write_report

runner = CliRunner()
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

ALL_TASKS = [("jax_mpe", "simple_spread"), ("smax", "3m"), ("jax_mpe", "simple_reference"),
             ("smax", "2s3z"), ("jax_mpe", "simple_speaker_listener"), ("smax", "5m_vs_6m")]
SKILL = {"marpo": 0.8, "mappo": 0.6, "qmix": 0.45, "ippo": 0.3}
ROLLOUT = {"marpo": 3_200, "mappo": 3_200, "qmix": 2_000, "ippo": 2_500}  # env steps per iteration


def _record(spec: RunSpec, status: str = "complete", **extra) -> dict:
    return {
        "run_id": spec.run_id, "algo": spec.algo, "env": spec.env, "task": spec.task, "seed": spec.seed,
        "budget": spec.steps, "overrides": [], "config": {"lr": 5e-4, "num_envs": 128, "clip": 0.2},
        "status": status, "message": "", "started": "2025-01-01T00:00:00+00:00",
        "finished": "2025-01-01T00:05:00+00:00", "wall_seconds": 300.0 + 10 * spec.seed, "env_steps": spec.steps,
        "versions": {"python": "3.11.2", "marpo-bench": "0.1.0", "torch": "2.13.0", "numpy": "2.4.6"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "host": {"machine": "x86_64", "cpus": 2, "gpu": None, "system": "Linux"},
        "torch_threads": 1, "device": "cpu", "eval_mode": "greedy", "eval_episodes": 32,
        "reward_scale": "team_shared" if spec.env == "smax" else "team_sum",
        "episode_limit": 100 if spec.env == "smax" else 25, **extra,
    }


def _rows(spec: RunSpec, rng: np.random.Generator, upto: int | None = None) -> list[dict]:
    """Evaluation rows every ~budget/20 steps (on rollout boundaries) along a noisy learning curve."""
    skill = SKILL.get(spec.algo, 0.5)
    roll = ROLLOUT.get(spec.algo, 3_000)
    interval = max(spec.steps // 20, 1)
    steps, s, nxt = [0], 0, interval
    while s < spec.steps:
        s += roll
        if s >= nxt or s >= spec.steps:
            steps.append(s)
            nxt = (s // interval + 1) * interval
    rows = []
    for st in steps:
        if upto is not None and st > upto:
            break
        progress = skill * (1 - math.exp(-4 * st / spec.steps))
        row: dict = {"env_steps": st, "wall_seconds": 300.0 * st / spec.steps, "eval_episodes": 32}
        if spec.env == "smax":
            row["eval_win_rate"] = float(np.clip(np.round(32 * (progress + rng.normal(0, 0.08))) / 32, 0, 1))
            row["eval_return_mean"] = 20 * row["eval_win_rate"]
        else:
            b = task_bounds(spec.env, spec.task)
            row["eval_return_mean"] = b.random + (b.reference - b.random) * (progress + rng.normal(0, 0.06))
        row["policy_loss"] = float(rng.normal())
        rows.append(row)
    return rows


def write_synthetic_study(study: Path, algos: list[str], tasks: list[tuple[str, str]], seeds: int,
                          budget: int = 200_000, incomplete: bool = True) -> None:
    """A study of complete runs with learning curves, plus (``incomplete``) a failed and an
    interrupted run, and one run whose score exceeds the reference (to be clipped)."""
    rng = np.random.default_rng(0)
    for algo in algos:
        for env, task in tasks:
            for seed in range(seeds):
                spec = RunSpec(algo, env, task, seed, budget)
                path = store.run_dir(study.parent, study.name, spec.run_id)
                rows = _rows(spec, rng)
                if incomplete and algo == algos[0] and (env, task) == tasks[0] and seed == 0:
                    b = task_bounds(env, task)
                    if b is not None:  # better than the reference: clipped and listed
                        for row in rows[-3:]:
                            row["eval_return_mean"] = b.reference + 5.0
                store.write_metrics(path, rows)
                store.write_run_json(path, _record(spec))
    if incomplete:
        env, task = tasks[-1]
        spec = RunSpec(algos[-1], env, task, seeds, budget)
        path = store.run_dir(study.parent, study.name, spec.run_id)
        store.write_metrics(path, _rows(spec, rng, upto=budget // 3))
        store.write_run_json(path, _record(spec, "failed", message="FloatingPointError: non-finite value_loss "
                                                                   "at env step 64000", env_steps=64_000))
        spec = RunSpec(algos[0], env, task, seeds + 1, budget)
        path = store.run_dir(study.parent, study.name, spec.run_id)
        store.write_metrics(path, _rows(spec, rng, upto=budget // 2))
        store.write_run_json(path, _record(spec, "interrupted", message="interrupted by the user",
                                           env_steps=100_000))


ALGOS3 = ["marpo", "mappo", "qmix"]
TASKS2 = [("jax_mpe", "simple_spread"), ("smax", "3m")]


@pytest.fixture(scope="module")
def study3(tmp_path_factory) -> Path:
    study = tmp_path_factory.mktemp("results") / "synthetic"
    write_synthetic_study(study, ALGOS3, TASKS2, seeds=3)
    return study


def _weasyprint_problem() -> str | None:
    """Why WeasyPrint cannot run here (no pango libraries), or None."""
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:
        return str(exc).splitlines()[0]
    return None


NO_PDF = _weasyprint_problem()


@pytest.fixture(scope="module")
def reported(study3, tmp_path_factory) -> tuple[Path, dict]:
    """The CLI's report of the 3 algos x 2 tasks x 3 seeds study (HTML and PDF, 2,000 reps)."""
    out = tmp_path_factory.mktemp("report")
    fmt = "html" if NO_PDF else "html,pdf"
    res = runner.invoke(app, ["report", str(study3), "--out", str(out), "--reps", "2000", "--format", fmt])
    assert res.exit_code == 0, res.output
    return out, {"output": res.output}


needs_pdf = pytest.mark.skipif(NO_PDF is not None, reason=f"WeasyPrint cannot run here: {NO_PDF} "
                                                          f"(make install adds Debian's pango)")


# --------------------------------------------------------------------------------------------
# content


def test_report_says_when_each_algorithm_reaches_the_baselines_final_iqm(reported):
    """Synthetic skills: marpo 0.8 > mappo 0.6 > qmix 0.45, so marpo gets there before the budget
    and qmix never does; the JSON holds the same numbers as the HTML table."""
    import json

    html = (reported[0] / "report.html").read_text()
    assert "reach mappo&#39;s final IQM" in html or "reach mappo's final IQM" in html
    reach = json.loads((reported[0] / "analysis.json").read_text())["steps_to_baseline_final_iqm"]
    assert reach["marpo"]["steps"] < reach["mappo"]["steps"] <= reach["mappo"]["budget"]
    assert reach["marpo"]["steps_ratio"] < 0.8 and reach["qmix"]["steps"] is None  # never reached (NaN -> null)
    aggregates = json.loads((reported[0] / "analysis.json").read_text())["aggregates"]
    assert reach["marpo"]["target"] == aggregates["mappo"]["IQM"][0]  # one "final" everywhere
    assert f"{reach['marpo']['steps']:,.0f}" in html and "not reached" in html


@needs_pdf
def test_report_writes_html_pdf_and_json(reported):
    out, info = reported
    umask = os.umask(0)
    os.umask(umask)
    for name in ("report.html", "report.pdf", "analysis.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # shareable, not 0600
    assert "report.html" in info["output"] and "report.pdf" in info["output"]


def test_html_is_self_contained_and_complete(reported):
    html = (reported[0] / "report.html").read_text()
    # nothing fetched from anywhere: every image is a data: URI, no scripts, no external links
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(srcs) >= 6 and all(s.startswith("data:image/svg+xml;base64,") for s in srcs)
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    for text in ("Aggregate metrics", "IQM", "Optimality gap", "Probability of improvement", "P(marpo &gt; mappo)",
                 "P(marpo &gt; qmix)", "Performance profiles", "Sample efficiency", "Per-task results",
                 "Normalisation", "Provenance", "jax_mpe:simple_spread", "smax:3m", "-80.54", "-22.24",
                 "Scores outside [0, 1] (1)", "Runs not used (2)", "failed", "interrupted", "FloatingPointError",
                 "0123456789abcdef", "torch", "2.13.0", "Hyperparameters that differ", "Numerics:",
                 "last 3 evaluation points", "Cost", "run-hours", "Verdict"):
        assert text in html, text


@needs_pdf
def test_pdf_has_one_page_per_section_in_order(reported):
    pypdf = pytest.importorskip("pypdf", reason="pypdf (dev extra) reads the PDF's text")
    reader = pypdf.PdfReader(str(reported[0] / "report.pdf"))
    pages = [p.extract_text() or "" for p in reader.pages]
    sections = ["Overview", "Aggregate metrics", "Probability of improvement", "Performance profiles",
                "Sample efficiency", "Per-task results", "Normalisation", "Provenance"]
    starts = []
    for title in sections:
        hits = [i for i, text in enumerate(pages) if title in text.split("\n", 3)[:3] or text.startswith(title)]
        hits = hits or [i for i, text in enumerate(pages) if title in text]
        assert hits, (title, [p[:80] for p in pages])
        starts.append(hits[0])
    assert starts == sorted(starts) and len(set(starts[1:])) == len(sections) - 1, starts
    assert len(pages) >= len(sections)
    alltext = "\n".join(pages)
    for text in ("marpo", "mappo", "qmix", "jax_mpe:simple_spread", "smax:3m", "IQM", "P(marpo > mappo)"):
        assert text in alltext, text


SECTION_TITLES = ("Aggregate metrics", "Probability of improvement", "Performance profiles", "Sample efficiency",
                  "Cost", "MARPO's diagnostics", "Per-task results", "Learning curves", "Normalisation", "Provenance")


def page_fills(pdf_path: Path, images: Path | None = None) -> list[tuple[float, str]]:
    """(fill, text) per page: how far down the page's body the last ink reaches (0 to 1; the footer
    band excluded), from a 50-dpi rendering; ``images``: where to save each page as a PNG."""
    pdfium = pytest.importorskip("pypdfium2", reason="pypdfium2 (dev extra) renders the PDF's pages")
    pypdf = pytest.importorskip("pypdf")
    texts = [p.extract_text() or "" for p in pypdf.PdfReader(str(pdf_path)).pages]
    doc = pdfium.PdfDocument(str(pdf_path))
    out = []
    for i, text in enumerate(texts):
        image = doc[i].render(scale=50 / 72).to_pil()
        if images is not None:
            images.mkdir(parents=True, exist_ok=True)
            image.save(images / f"page-{i + 1:02d}.png")
        ink = np.asarray(image.convert("L"))
        bottom = int(ink.shape[0] * 0.92)  # the page-number footer sits below this
        rows = np.flatnonzero((ink[:bottom] < 200).any(axis=1))
        top = 20  # the top margin, 12 mm at 50 dpi
        out.append(((rows.max() - top) / (bottom - top) if rows.size else 0.0, text))
    return out


@needs_pdf
def test_no_pdf_page_is_less_than_a_third_full_except_a_sections_last(tmp_path):
    """A heading alone on a page, a table kept whole on the next page, a mostly blank page: the
    layout problems of the first round's report (4 algorithms x 6 tasks shows them: its per-task,
    normalisation and provenance tables are longer than a page). Page images:
    test-artifacts/report-pages/."""
    study = tmp_path / "big"
    write_synthetic_study(study, ["marpo", "mappo", "qmix", "ippo"], ALL_TASKS, seeds=3)
    write_report(analyse(study, reps=500), tmp_path / "report", ("pdf",))
    fills = page_fills(tmp_path / "report" / "report.pdf", ARTIFACTS / "report-pages")
    starts = [i for i, (_, text) in enumerate(fills) if text.startswith(SECTION_TITLES)]
    last_of_section = {i - 1 for i in starts} | {len(fills) - 1}
    short = [(i + 1, round(f, 2), text[:40]) for i, (f, text) in enumerate(fills)
             if i not in last_of_section and f < 1 / 3]
    assert not short, short
    assert len(starts) >= 8, [t[:30] for _, t in fills]


@needs_pdf
def test_pdf_figures_are_vector_graphics(reported):
    pypdf = pytest.importorskip("pypdf")
    reader = pypdf.PdfReader(str(reported[0] / "report.pdf"))
    # aggregate metrics: its figure is drawn with paths, not an embedded bitmap
    page = next(p for p in reader.pages if (p.extract_text() or "").startswith("Aggregate metrics"))
    xobjects = page["/Resources"].get("/XObject", {})
    images = [k for k, v in xobjects.items() if v.get_object().get("/Subtype") == "/Image"]
    assert not images
    assert "Optimality gap" in page.extract_text()


# --------------------------------------------------------------------------------------------
# headless Chromium: the page renders, images decode, no console errors; screenshot kept


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement('pre');
  out.id = 'img-check';
  out.textContent = 'IMAGES ' + imgs.length + ' BROKEN ' + bad.length + ' ' + JSON.stringify(bad);
  document.body.appendChild(out);
});
</script>"""


def _chrome_flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}"]


def test_html_renders_in_headless_chromium(reported, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (make install adds it where apt-get is available)")
    html = (reported[0] / "report.html").read_text()
    # a copy with a checker script (the report itself has no script): records images that failed
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = subprocess.run([chromium, *_chrome_flags(tmp_path / "p1"), "--virtual-time-budget=5000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r"IMAGES (\d+) BROKEN (\d+) (.*)", dom.stdout)
    assert m, dom.stderr[-2000:]
    assert int(m.group(1)) >= 6 and m.group(2) == "0", m.group(0)
    # the report itself: screenshot, with console messages logged to stderr
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-screenshot.png"
    shot.unlink(missing_ok=True)
    res = subprocess.run([chromium, *_chrome_flags(tmp_path / "p2"), "--enable-logging=stderr", "--v=0",
                          "--hide-scrollbars", "--window-size=1366,2400", f"--screenshot={shot}",
                          (reported[0] / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    # the report has no script: any console message (an error, a blocked or failed load) is a defect
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    assert shot.is_file() and shot.stat().st_size > 20_000, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# CLI errors and notes


def test_report_on_missing_or_empty_study_exits_2_with_one_line(tmp_path):
    for target in (tmp_path / "nope", tmp_path):
        res = runner.invoke(app, ["report", str(target), "--reps", "100"])
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and "error:" in res.output, res.output
        assert "Traceback" not in res.output


def test_report_on_study_without_complete_runs_exits_2(tmp_path):
    spec = RunSpec("marpo", "jax_mpe", "simple_spread", 0, 10_000)
    path = store.run_dir(tmp_path, "s", spec.run_id)
    store.write_run_json(path, _record(spec, "failed", message="boom"))
    res = runner.invoke(app, ["report", str(tmp_path / "s"), "--reps", "100"])
    assert res.exit_code == 2 and "no complete runs" in res.output and "1 failed" in res.output, res.output


def test_report_on_mixed_schema_versions_exits_2(tmp_path):
    write_synthetic_study(tmp_path / "s", ["marpo"], TASKS2[:1], seeds=2, incomplete=False)
    victim = next((tmp_path / "s" / "runs").iterdir()) / "run.json"
    victim.write_text(victim.read_text().replace('"schema_version": 1', '"schema_version": 2'))
    res = runner.invoke(app, ["report", str(tmp_path / "s"), "--reps", "100"])
    assert res.exit_code == 2 and "schema version 2" in " ".join(res.output.split()), res.output


def test_one_algorithm_study_reports_with_pairwise_statistics_skipped(tmp_path):
    write_synthetic_study(tmp_path / "s", ["marpo"], TASKS2, seeds=2, incomplete=False)
    res = runner.invoke(app, ["report", str(tmp_path / "s"), "--out", str(tmp_path / "out"), "--reps", "200",
                              "--format", "html"])
    assert res.exit_code == 0, res.output
    assert "pairwise statistics are skipped" in " ".join(res.output.split())
    html = (tmp_path / "out" / "report.html").read_text()
    assert "pairwise statistics are skipped" in html and "IQM" in html
    assert not (tmp_path / "out" / "report.pdf").exists()


def test_unknown_baseline_and_format_are_one_line_errors(study3, tmp_path):
    res = runner.invoke(app, ["report", str(study3), "--baseline", "ppo", "--reps", "100", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "baseline 'ppo'" in res.output and "marpo" in res.output, res.output
    res = runner.invoke(app, ["report", str(study3), "--format", "docx", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown format docx" in res.output, res.output


def test_different_budgets_use_the_common_prefix_and_say_so(tmp_path):
    study = tmp_path / "s"
    write_synthetic_study(study, ["marpo", "mappo"], TASKS2[:1], seeds=2, incomplete=False)
    longer = RunSpec("mappo", "jax_mpe", "simple_spread", 2, 400_000)
    path = store.run_dir(tmp_path, "s", longer.run_id)
    store.write_metrics(path, _rows(longer, np.random.default_rng(1)))
    store.write_run_json(path, _record(longer))
    res = analyse(study, reps=200)
    assert any("different budgets" in n and "200,000" in n for n in res.notes), res.notes
    run = next(r for r in res.data.task("jax_mpe:simple_spread").runs["mappo"] if r.seed == 2)
    assert run.final_steps <= 200_000 * 1.05 and run.steps.max() <= 210_000
    assert "different budgets" in render_html(res)


def test_report_restricted_to_an_ablation_subset_aggregates_over_its_tasks(tmp_path):
    """An ablation run on MPE only, inside a study whose main algorithms also ran on SMAX: the
    restricted report aggregates over the MPE tasks, the full one drops the ablation's gaps."""
    study = tmp_path / "s"
    write_synthetic_study(study, ["marpo", "mappo"], TASKS2, seeds=2, incomplete=False)
    write_synthetic_study(study, ["ippo"], TASKS2[:1], seeds=2, incomplete=False)  # a third algo, one task only
    full = analyse(study, reps=200)
    assert full.data.agg_tasks == ["jax_mpe:simple_spread"]  # the only task every algorithm ran
    main = analyse(study, reps=200, algos=["marpo", "mappo"])
    assert sorted(main.data.agg_tasks) == ["jax_mpe:simple_spread", "smax:3m"]
    only = analyse(study, reps=200, algos=["marpo", "ippo"], envs=[f"{TASKS2[0][0]}:{TASKS2[0][1]}"])
    assert only.data.algos == ["marpo", "ippo"] and only.data.agg_tasks == [f"{TASKS2[0][0]}:{TASKS2[0][1]}"]
    assert any(n.startswith("restricted to algorithms marpo, ippo") for n in only.notes)
    res = runner.invoke(app, ["report", str(study), "--algos", "marpo,sac", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no runs of sac" in res.output and "mappo" in res.output, res.output
    res = runner.invoke(app, ["report", str(study), "--envs", "smax:8m", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no runs on smax:8m" in res.output, res.output


def test_seed_traces_and_html_only(study3, tmp_path):
    res = analyse(study3, reps=200)
    paths = write_report(res, tmp_path, formats=("html",), seed_traces=True)
    assert set(paths) == {"html", "json"}
    assert "thin lines: individual seeds" in paths["html"].read_text()


# --------------------------------------------------------------------------------------------
# the timing tool


def _make_study_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="write a synthetic marpo-bench study (for timing reports)")
    parser.add_argument("cmd", choices=["make-study"])
    parser.add_argument("study", type=Path)
    parser.add_argument("--algos", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    if args.study.exists():
        sys.exit(f"{args.study} exists; pick a new directory")
    t = time.perf_counter()
    write_synthetic_study(args.study, list(SKILL)[:args.algos], ALL_TASKS[:args.tasks], args.seeds)
    print(f"wrote {args.study} in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    _make_study_main(sys.argv[1:])
