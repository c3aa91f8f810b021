"""Render an :class:`~marpo_bench.analysis.study.Analysis` as one self-contained HTML file and a PDF.

The HTML comes from the jinja2 template ``templates/report.html.j2``; figures are SVG embedded as
``data:`` URIs, styles inline, no script and no network access needed to view it. The PDF is the
same HTML laid out by WeasyPrint (print styles in the template: each section on a new page, A4),
so both formats always show the same content and the figures stay vector graphics.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from marpo_bench import provenance, store, studyfile
from marpo_bench.analysis.study import Analysis
from marpo_bench.normalisation import bounds_measurements, normalisation_table, win_rate_families
from marpo_bench.report import plots
from marpo_bench.report.verdict import COLUMNS, MIN_SEEDS, headline, notes, table
from marpo_bench.stats import METRIC_NAMES

FORMATS = ("html", "pdf", "md")


class ReportError(ValueError):
    """A one-line, user-facing reason why a report could not be written."""


# --------------------------------------------------------------------------------------------
# formatting helpers (also jinja2 filters)


def fmt(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; NaN/None as an en dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def steps(x: Any) -> str:
    """Env steps compactly: 200k, 1.5M."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = float(x)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


def secs(x: Any) -> str:
    """Seconds as 42 s, 3.5 min or 1.2 h."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = float(x)
    if x < 120:
        return f"{x:.0f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


def secs_range(mean: Any, lo: Any, hi: Any) -> str:
    """``mean (lo–hi)`` seconds, all three in the unit :func:`secs` picks for the largest."""
    vals = [float(v) for v in (mean, lo, hi) if v is not None and math.isfinite(float(v))]
    if len(vals) < 3:
        return secs(mean)
    top = max(vals)
    div, unit, digits = (1, "s", 0) if top < 120 else (60, "min", 1) if top < 7200 else (3600, "h", 1)
    m, a, b = (v / div for v in vals)
    return f"{m:.{digits}f} {unit} ({a:.{digits}f}–{b:.{digits}f} {unit})"


def svg_uri(svg: str) -> str:
    """SVG text as a base64 ``data:`` URI (works in <img> in browsers and in WeasyPrint)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


# --------------------------------------------------------------------------------------------
# what the template shows


@dataclass
class Figure:
    """One embedded figure."""

    id: str
    title: str
    uri: str
    alt: str


def _provenance(res: Analysis) -> dict[str, Any]:
    """Versions, commits, hosts, budgets, seeds and configs of the runs used (and of all runs)."""
    used = {r.run_id for t in res.data.tasks for rs in t.runs.values() for r in rs}
    recs = [r for r in res.data.records if r["run_id"] in used]
    versions: dict[str, Counter] = defaultdict(Counter)
    for r in recs:
        for pkg, v in (r.get("versions") or {}).items():
            versions[pkg][str(v)] += 1
    version_rows = [{"package": p, "values": sorted(c.items()), "mixed": len(c) > 1,
                     "missing": len(recs) - sum(c.values())} for p, c in sorted(versions.items())]
    commits = Counter(str(r.get("git_commit") or "unknown") for r in recs)
    hosts = Counter(json.dumps(r.get("host") or {}, sort_keys=True) for r in recs)
    host_rows = [{"host": ", ".join(f"{k}={v}" for k, v in json.loads(h).items()) or "unknown", "runs": n}
                 for h, n in hosts.most_common()]
    threads = Counter(str(r.get("torch_threads", "–")) for r in recs)
    # budgets and seeds per (algo, task)
    grid = []
    for t in res.data.tasks:
        for a in res.data.algos:
            rs = t.runs.get(a, [])
            if rs:
                rids = {r.run_id for r in rs}
                budgets = sorted({int(x.get("budget") or 0) for x in recs if x["run_id"] in rids})
                grid.append({"task": t.key, "algo": a, "seeds": ", ".join(str(r.seed) for r in rs),
                             "budgets": ", ".join(steps(b) for b in budgets), "common": steps(t.budget),
                             "final": steps(max(r.final_steps for r in rs))})
    return {"versions": version_rows, "commits": commits.most_common(), "hosts": host_rows,
            "threads": sorted(threads.items()), "grid": grid, "configs": config_table(res), "runs_used": len(recs),
            "numerics": numerics_changes([c for c, _ in commits.most_common() if c != "unknown"])}


def config_table(res: Analysis) -> dict[str, Any]:
    """The hyperparameters that differ between the study's algorithms and env families, as one
    table: a column per (algorithm, family), the resolved value per row ("–": the algorithm has no
    such setting; runs of one column that disagree show every value). Settings equal wherever they
    exist are counted, not listed; full configs are in analysis.json."""
    used = {r.run_id: r.algo for t in res.data.tasks for rs in t.runs.values() for r in rs}
    values: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for rec in res.data.records:
        if rec["run_id"] in used:
            for key, v in (rec.get("config") or {}).items():
                values[(used[rec["run_id"]], rec["env"])][key].add(json.dumps(v, default=str))
    columns = [(a, f) for a in res.data.algos for f in sorted({f for x, f in values if x == a})]
    keys = sorted({k for c in values.values() for k in c})
    cell = {(k, c): ", ".join(sorted(values[c].get(k, {"–"}))) for k in keys for c in columns}
    # a setting differs when the columns that have it disagree (one algorithm's own settings that are
    # the same on every family are not differences)
    differ = [k for k in keys if len({cell[(k, c)] for c in columns if k in values[c]}) > 1]
    return {"columns": [f"{a} · {f}" for a, f in columns], "rows": [(k, [cell[(k, c)] for c in columns])
                                                                   for k in differ],
            "same": len(keys) - len(differ)}


# The code whose change can change a run's numbers (the rest: CLI, storage, report).
NUMERICS_PATHS = ("marpo_bench/algos", "marpo_bench/envs", "marpo_bench/nets.py", "marpo_bench/seedstack.py",
                  "marpo_bench/train.py", "marpo_bench/recipes.py", "marpo_bench/evaluation.py", "baselines")


def numerics_changes(commits: list[str]) -> str:
    """Whether the numerics-relevant code (:data:`NUMERICS_PATHS`) differs between the runs'
    commits, read from this checkout's git history (one sentence)."""
    import subprocess

    if len(commits) < 2:
        return "all runs come from one commit" if commits else "the runs do not record their commit"
    root = Path(__file__).resolve().parents[2]
    changed: set[str] = set()
    first = commits[0]
    for other in commits[1:]:
        try:
            out = subprocess.run(["git", "diff", "--name-only", first, other, "--", *NUMERICS_PATHS], cwd=root,
                                 capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return f"{len(commits)} commits; whether their numerics-relevant code differs is unknown (no git here)"
        if out.returncode != 0:
            return (f"{len(commits)} commits; whether their numerics-relevant code differs is unknown (commit "
                    f"{other[:8]} is not in this checkout's history)")
        changed |= set(filter(None, out.stdout.splitlines()))
    if not changed:
        return f"{len(commits)} commits, with the same numerics-relevant code ({', '.join(NUMERICS_PATHS)})"
    shown = ", ".join(sorted(changed)[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    return (f"{len(commits)} commits whose numerics-relevant code differs: {shown} changed; runs of different "
            "commits may not compute the same numbers")


def _normalisation_rows(res: Analysis) -> list[dict[str, Any]]:
    present = {t.key for t in res.data.tasks}
    rows = []
    table = normalisation_table()
    # tasks normalised with bounds measured for this study (`marpo-bench bounds`), or min-max (`--normalise minmax`)
    minmax = res.data.normalisation == "minmax"
    table.update({(t.env, t.task): t.bounds for t in res.data.tasks
                  if t.bounds and ((t.env, t.task) not in table or minmax)})
    for (env, task), b in table.items():
        rows.append({"task": f"{env}:{task}", "kind": "return", "random": fmt(b.random, 2),
                     "reference": fmt(b.reference, 2),
                     "scale": f"{b.scale}, {b.episode_limit}-step episodes" if b.episode_limit else b.scale,
                     "random_source": b.random_source, "reference_source": b.reference_source,
                     "used": f"{env}:{task}" in present})
    for t in res.data.tasks:
        if t.kind == "win_rate":
            rows.append({"task": t.key, "kind": "win rate", "random": "0", "reference": "1", "scale": "win rate",
                         "random_source": "none needed: the evaluation win rate is already in [0, 1]",
                         "reference_source": "", "used": True})
    return rows


def context(res: Analysis, seed_traces: bool = False) -> dict[str, Any]:
    """Everything the template needs, figures included (drawn here)."""
    d = res.data
    figures: dict[str, Figure] = {}

    def add(fid: str, title: str, svg: str, alt: str) -> None:
        figures[fid] = Figure(fid, title, svg_uri(svg), alt)

    if res.aggregates:
        add("aggregates", "Aggregate metrics", plots.aggregates_figure(res),
            "IQM, median, mean and optimality gap per algorithm with 95% CIs")
        add("profiles", "Performance profiles", plots.profiles_figure(res),
            "fraction of runs above each normalised score, per algorithm")
        add("curve", "Sample efficiency", plots.curve_figure(res), "IQM normalised score against env steps")
        if all(c.seconds_per_step == c.seconds_per_step for c in res.cost.values()):
            add("cost", "Cost", plots.cost_figure(res),
                "IQM normalised score against wall-clock hours and CPU-hours per run")
        if res.task_curves:
            add("task_curves", "Sample efficiency per task", plots.task_curves_figure(res),
                "per-task IQM normalised score against env steps")
    if res.diagnostics:
        add("diagnostics", "MARPO's diagnostics", plots.diagnostics_figure(res),
            "MARPO's KL budget, clip bounds, clip fraction and reflection term against env steps, per env family")
    if res.poi:
        add("poi", "Probability of improvement", plots.poi_figure(res), "probability of improvement per pair")
    add("raw_curves", "Evaluation return / win rate per task", plots.raw_curves_figure(res, seed_traces),
        "evaluation return or win rate against env steps per task")

    statuses = Counter(r["status"] for r in d.records)
    used = sum(len(rs) for t in d.tasks for rs in t.runs.values())
    seeds = sorted({r.seed for t in d.tasks for rs in t.runs.values() for r in rs})
    summary_by_task: dict[str, list[Any]] = defaultdict(list)
    for s in res.summary:
        summary_by_task[s.task].append(s)
    poi_matrix = None
    if res.poi:
        full = dict(res.poi)
        for (a, b), e in res.poi.items():
            full[(b, a)] = type(e)(1 - e.point, 1 - e.hi, 1 - e.lo)
        poi_matrix = {"algos": d.algos, "cell": {f"{a}>{b}": full.get((a, b)) for a in d.algos for b in d.algos}}
    families = sorted({t.env for t in d.tasks})
    return {
        "headline": headline(res), "table": table(res), "columns": COLUMNS, "verdict_notes": notes(res),
        "enough_seeds": {a: bool(d.agg_tasks) and min(len(d.task(k).runs[a]) for k in d.agg_tasks) >= MIN_SEEDS
                         for a in d.algos},
        "min_seeds": MIN_SEEDS, "cost_warnings": res.cost_warnings,
        "res": res, "d": d, "figures": figures, "metric_names": METRIC_NAMES,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "tool_versions": provenance.tool_versions(("marpo-bench", "rliable", "numpy", "scipy", "matplotlib",
                                                   "weasyprint")),
        "statuses": sorted(statuses.items()), "runs_used": used, "runs_total": len(d.records), "seeds": seeds,
        "summary_by_task": summary_by_task, "poi_matrix": poi_matrix, "normalisation": _normalisation_rows(res),
        "clipped": sorted(d.clipped(), key=lambda r: (r.env, r.task, r.algo, r.seed)),
        "prov": _provenance(res), "seed_traces": seed_traces, "families": families,
        "win_rate_families": win_rate_families(), "measurement": " ".join(bounds_measurements()),
        "ci": round(100 * res.confidence),
        "timings": res.timings, "colours": plots.colours(d.algos),
        "agg_runs": {a: sum(len(d.task(k).runs[a]) for k in d.agg_tasks) for a in d.algos},
        "budgets": _budgets(d), "commits": _commits(d), "study_file": studyfile.describe(d.path),
    }


def _budgets(d: Any) -> list[str]:
    """Page 1's "what was run": the tasks' common budgets and seeds per algorithm, tasks alike grouped
    ("300,000 env steps, 5 seeds per algorithm: all 6 tasks")."""
    groups: dict[tuple[int, str], list[str]] = defaultdict(list)
    for t in d.tasks:
        seeds = sorted({len(rs) for rs in t.runs.values()})
        groups[(t.budget, str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}")].append(t.key)
    if len(groups) == 1:
        ((budget, n), keys), = groups.items()
        return [f"{budget:,} env steps, {n} seeds per algorithm: all {len(keys)} task{'s' if len(keys) != 1 else ''}"]
    return [f"{budget:,} env steps, {n} seeds per algorithm: {', '.join(keys)}"
            for (budget, n), keys in sorted(groups.items(), reverse=True)]


def _commits(d: Any) -> list[str]:
    """The code commits of the used runs, most runs first, e.g. "cb14955 (25 runs, uncommitted changes)"."""
    used = {r.run_id for t in d.tasks for rs in t.runs.values() for r in rs}
    counts: Counter = Counter()
    for rec in d.records:
        if rec["run_id"] in used:
            counts[(str(rec.get("git_commit") or "unknown")[:7], bool(rec.get("uncommitted_changes")))] += 1
    return [f"{c} ({n} run{'s' if n != 1 else ''}{', uncommitted changes' if dirty else ''})"
            for (c, dirty), n in counts.most_common()]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("marpo_bench.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(fmt=fmt, steps=steps, secs=secs)
    env.globals["secs_range"] = secs_range
    return env


def render_html(res: Analysis, seed_traces: bool = False) -> str:
    """The report as one self-contained HTML document."""
    return _environment().get_template("report.html.j2").render(**context(res, seed_traces))


def html_to_pdf(html: str, path: Path) -> None:
    """Lay out the report HTML as a PDF with WeasyPrint (needs Debian's pango libraries)."""
    try:
        import weasyprint
    except (ImportError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(
            f"PDF output needs weasyprint and the pango libraries ({first}); install them with `make install` "
            f"(apt-get install libpango-1.0-0 libpangoft2-1.0-0) or use --format html"
        ) from None
    for name in ("weasyprint", "fontTools"):  # CSS it ignores and font subsetting chatter
        logging.getLogger(name).setLevel(logging.ERROR)
    _write(path, weasyprint.HTML(string=html).write_pdf())


def _write(path: Path, data: bytes) -> None:
    """Atomic write (store.atomic_write_bytes), then the usual permissions: the temp file it renames
    is created 0600, but a report is meant to be shared (read by a web server, a colleague)."""
    import os

    store.atomic_write_bytes(path, data)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def render_markdown(res: Analysis) -> str:
    """A Markdown summary to paste into a README or a pull request: the verdict, the aggregates by
    group and the per-task table (numbers as in the HTML report)."""
    d = res.data
    ci = round(100 * res.confidence)
    lines = [f"## marpo-bench: {d.study}", "",
             f"{len(d.algos)} algorithms ({', '.join(d.algos)}) · {len(d.tasks)} tasks · final score = mean of the "
             f"last {d.last_k} evaluation points within the last 10% of the budget · {res.reps:,} bootstrap reps, "
             f"{ci}% CIs", "", f"Budgets: {'; '.join(_budgets(d))}. Commits: {'; '.join(_commits(d))}.", "",
             "**Verdict**", ""]
    if res.selection is not None:  # report --select best: which configs, by what rule (before the verdict)
        lines[-2:-2] = [res.selection.statement(), ""]
    lines += [headline(res), ""]
    rows = table(res)
    if rows:
        lines += ["| " + " | ".join(COLUMNS) + " |", "|---|---|---:|---:|---:|---|---:|"]
        lines += ["| " + " | ".join(_md_cell(x) for x in vars(r).values()) + " |" for r in rows]
        lines.append("")
    lines += [f"- {line}" for line in notes(res)]
    if res.groups:
        head = [f"{a} IQM" for a in d.algos]
        others = [a for a in d.algos if a != res.baseline] if res.baseline else []
        head += [f"P({a} > {res.baseline})" for a in others]
        lines += ["", "**Aggregates** (normalised score: return rescaled between a random policy (0) and a "
                      "reference (1), or win rate)", "", "| tasks | " + " | ".join(head) + " |",
                  "|---|" + "---:|" * len(head)]
        for g in res.groups:
            cells = [str(g.aggregates[a]["IQM"]) for a in d.algos]
            cells += [str(g.poi[(a, res.baseline)]) if (a, res.baseline) in g.poi else "-" for a in others]
            lines.append(f"| {g.label} | " + " | ".join(cells) + " |")
    lines += ["", "**Per task** (final evaluation return or win rate, mean over seeds with its CI; normalised score)",
              "", "| task | algorithm | final | score | seeds |", "|---|---|---:|---:|---:|"]
    for s in res.summary:
        flag = " (not learned)" if s.task in d.unlearned else ""
        lines.append(f"| {s.task}{flag} | {s.algo} | {s.mean} | {fmt(s.score)} | {len(s.seeds)} |")
    if res.notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in res.notes]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    """Text for a Markdown table cell (a variant's ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def write_report(
    res: Analysis, out_dir: Path, formats: tuple[str, ...] = FORMATS, seed_traces: bool = False,
) -> dict[str, Path]:
    """Write ``report.html`` / ``report.pdf`` (and ``analysis.json``, the headline numbers) into
    ``out_dir``, atomically; returns the paths written by format."""
    from marpo_bench.analysis.export import dumps

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ReportError(f"unknown format {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    if "md" in formats:
        _write(out_dir / "report.md", render_markdown(res).encode("utf-8"))
        written["md"] = out_dir / "report.md"
    if not {"html", "pdf"} & set(formats):
        _write(out_dir / "analysis.json", dumps(res).encode("utf-8"))
        written["json"] = out_dir / "analysis.json"
        return written
    html = render_html(res, seed_traces)
    if "html" in formats:
        _write(out_dir / "report.html", html.encode("utf-8"))
        written["html"] = out_dir / "report.html"
    _write(out_dir / "analysis.json", dumps(res).encode("utf-8"))
    written["json"] = out_dir / "analysis.json"
    if "pdf" in formats:
        html_to_pdf(html, out_dir / "report.pdf")
        written["pdf"] = out_dir / "report.pdf"
    return written
