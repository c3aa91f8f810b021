"""The report's figures: matplotlib (Agg) drawn to SVG text, so the HTML embeds them without any
external file and the PDF keeps them as vector graphics.

Text stays text in the SVG (``svg.fonttype = "none"``): smaller files, selectable and searchable
in the PDF. Output is deterministic (fixed hash salt, no date), so re-rendering a study gives the
same file.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed, nothing opened
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from marpo_bench.analysis.study import Analysis  # noqa: E402
from marpo_bench.stats import METRIC_NAMES, Band  # noqa: E402

# Okabe-Ito colour-blind-safe palette; the three suite algorithms keep fixed colours.
FIXED_COLOURS = {"marpo": "#D55E00", "mappo": "#0072B2", "qmix": "#009E73", "marpo_noreflect": "#E69F00",
                 "marpo_symclip": "#CC79A7", "marpo_ppoclip": "#56B4E9"}
SPARE_COLOURS = ["#F0E442", "#000000", "#999999"]

STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "marpo-bench",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "axes.edgecolor": "#555555",
    "lines.linewidth": 1.6,
}


def colours(algos: Sequence[str]) -> dict[str, str]:
    """A stable colour per algorithm: fixed for the suite's, then the spare palette in order."""
    spare = iter(SPARE_COLOURS)
    return {a: FIXED_COLOURS[a] if a in FIXED_COLOURS else next(spare, "#777777") for a in algos}


@contextmanager
def _style() -> Iterator[None]:
    with plt.rc_context(STYLE):
        yield


def to_svg(fig: Figure) -> str:
    """The figure as standalone SVG text; the figure is closed."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: embeddable as is


_STEPS = EngFormatter(sep="")


def _interval_rows(ax: plt.Axes, labels: Sequence[str], ests: Sequence[tuple[float, float, float]],
                   cols: Sequence[str]) -> None:
    """rliable-style interval plot: one horizontal CI bar per row with a tick at the point."""
    for i, ((p, lo, hi), c) in enumerate(zip(ests, cols, strict=True)):
        y = len(labels) - 1 - i
        ax.barh(y, hi - lo, left=lo, height=0.6, color=c, alpha=0.75)
        ax.vlines(p, y - 0.36, y + 0.36, color="black", linewidth=1.6)
        if hi - lo < 0.01:  # a degenerate interval would be invisible: mark the point
            ax.plot([p], [y], marker="D", color=c, markeredgecolor="black", markersize=6, clip_on=False)
    ax.set_yticks(range(len(labels)), list(reversed(labels)))
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.grid(axis="y", visible=False)


def aggregates_figure(res: Analysis) -> str:
    """IQM, median, mean and optimality gap per algorithm with their CIs, one panel each."""
    algos = res.data.algos
    cols = colours(algos)
    with _style():
        fig, axes = plt.subplots(1, 4, figsize=(10, 0.42 * len(algos) + 1.0), sharey=True)
        for ax, m in zip(axes, METRIC_NAMES, strict=True):
            ests = [(res.aggregates[a][m].point, res.aggregates[a][m].lo, res.aggregates[a][m].hi) for a in algos]
            _interval_rows(ax, algos, ests, [cols[a] for a in algos])
            ax.set_title(m + (" (lower is better)" if m == "Optimality gap" else ""))
            lo = min(e[1] for e in ests)
            hi = max(e[2] for e in ests)
            pad = max(0.05, 0.15 * (hi - lo))
            ax.set_xlim(max(-0.02, lo - pad), min(1.02, hi + pad))
            ax.set_xlabel("normalised score")
        fig.tight_layout(w_pad=1.2)
        return to_svg(fig)


def poi_figure(res: Analysis) -> str:
    """P(X > Y) with CI for each pair shown; dashed line at 0.5 (no difference)."""
    cols = colours(res.data.algos)
    labels = [f"P({a} > {b})" for a, b in res.poi_pairs]
    ests = [(res.poi[p].point, res.poi[p].lo, res.poi[p].hi) for p in res.poi_pairs]
    with _style():
        fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(labels) + 0.9))
        _interval_rows(ax, labels, ests, [cols[a] for a, _ in res.poi_pairs])
        ax.axvline(0.5, color="#444444", linestyle="--", linewidth=1)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("probability of improvement (a run of X beats a run of Y on a task)")
        fig.tight_layout()
        return to_svg(fig)


def _band(ax: plt.Axes, band: Band, colour: str, label: str, x: np.ndarray | None = None) -> None:
    xs = band.x if x is None else x
    ax.plot(xs, band.point, color=colour, label=label)
    ax.fill_between(xs, band.lo, band.hi, color=colour, alpha=0.2, linewidth=0)


def profiles_figure(res: Analysis) -> str:
    """Score distributions: fraction of runs with normalised score above tau, with CI bands."""
    cols = colours(res.data.algos)
    with _style():
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for a in res.data.algos:
            _band(ax, res.profiles[a], cols[a], a)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(r"normalised score $\tau$")
        ax.set_ylabel(r"fraction of runs with score $> \tau$")
        ax.legend(frameon=False, loc="upper right")
        fig.tight_layout()
        return to_svg(fig)


def curve_figure(res: Analysis) -> str:
    """Aggregate sample efficiency: IQM normalised score vs env steps, with CI bands."""
    cols = colours(res.data.algos)
    with _style():
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for a in res.data.algos:
            _band(ax, res.curve[a], cols[a], a)
        ax.xaxis.set_major_formatter(_STEPS)
        ax.set_xlabel("env steps")
        ax.set_ylabel("IQM normalised score")
        ax.set_ylim(bottom=0)
        ax.legend(frameon=False, loc="upper left")
        fig.tight_layout()
        return to_svg(fig)


def cost_figure(res: Analysis) -> str:
    """Aggregate IQM normalised score against wall-clock hours and CPU-hours per run: each
    algorithm's IQM curve at its own mean seconds per env step (and torch threads)."""
    cols = colours(res.data.algos)
    with _style():
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 2.9))
        for ax, cpu in zip(axes, (False, True), strict=True):
            for a in res.data.algos:
                c = res.cost[a]
                scale = c.seconds_per_step / 3600 * (c.threads if cpu else 1.0)
                _band(ax, res.curve[a], cols[a], a, x=res.curve[a].x * scale)
            ax.set_xlabel("CPU-hours per run" if cpu else "wall-clock hours per run")
            ax.set_ylabel("IQM normalised score")
            ax.set_ylim(bottom=0)
        axes[0].legend(frameon=False, loc="lower right")
        fig.tight_layout()
        return to_svg(fig)


def diagnostics_figure(res: Analysis) -> str:
    """MARPO's diagnostics: one row per env family, one panel per diagnostic, a line per algorithm
    that logs it (mean over runs with bootstrap bands)."""
    from marpo_bench.analysis.diagnostics import DIAGNOSTICS

    cols = colours(res.data.algos)
    fams = list(res.diagnostics)
    metrics = [m for m in DIAGNOSTICS if any(m in res.diagnostics[f] for f in fams)]
    with _style():
        fig, axes = plt.subplots(len(fams), len(metrics), figsize=(2.6 * len(metrics), 2.3 * len(fams) + 0.5),
                                 squeeze=False)
        for i, fam in enumerate(fams):
            for j, m in enumerate(metrics):
                ax = axes[i][j]
                for a, band in res.diagnostics[fam].get(m, {}).items():
                    _band(ax, band, cols[a], a)
                ax.set_title(f"{fam}: {DIAGNOSTICS[m]}", fontsize=8)
                ax.xaxis.set_major_formatter(_STEPS)
                ax.tick_params(labelsize=7)
        shown = [a for a in res.data.algos if any(a in d for f in fams for d in res.diagnostics[f].values())]
        _legend(fig, shown, cols)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
        return to_svg(fig)


def _grid(n: int, ncols: int = 3, w: float = 3.4, h: float = 2.5) -> tuple[Figure, list[plt.Axes]]:
    """``n`` panels, ``ncols`` per row, each about ``w`` x ``h`` inches."""
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows + 0.5), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend(fig: Figure, algos: Sequence[str], cols: Mapping[str, str]) -> None:
    handles = [plt.Line2D([], [], color=cols[a], linewidth=2) for a in algos]
    fig.legend(handles, list(algos), loc="upper center", ncol=len(algos), frameon=False,
               bbox_to_anchor=(0.5, 1.0))


def task_curves_figure(res: Analysis) -> str:
    """Per-task sample efficiency: IQM over seeds of the normalised score vs env steps."""
    cols = colours(res.data.algos)
    keys = list(res.task_curves)
    with _style():
        fig, axes = _grid(len(keys))
        for ax, k in zip(axes, keys, strict=True):
            for a in res.data.algos:
                _band(ax, res.task_curves[k][a], cols[a], a)
            ax.set_title(k)
            ax.xaxis.set_major_formatter(_STEPS)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("env steps")
            ax.set_ylabel("IQM score")
        _legend(fig, res.data.algos, cols)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
        return to_svg(fig)


def raw_curves_figure(res: Analysis, seed_traces: bool = False) -> str:
    """Per task: evaluation return (or win rate) vs env steps, mean over seeds with a CI band;
    with ``seed_traces`` every seed's curve is drawn as a thin line too."""
    cols = colours(res.data.algos)
    with _style():
        fig, axes = _grid(len(res.data.tasks))
        for ax, td in zip(axes, res.data.tasks, strict=True):
            for a, (band, per_seed) in res.raw_curves[td.key].items():
                if seed_traces:
                    for row in per_seed:
                        ax.plot(band.x, row, color=cols[a], linewidth=0.6, alpha=0.45)
                _band(ax, band, cols[a], a)
            ax.set_title(td.key)
            ax.xaxis.set_major_formatter(_STEPS)
            ax.set_xlabel("env steps")
            ax.set_ylabel("eval win rate" if td.kind == "win_rate" else "eval return")
            if td.kind == "win_rate":
                ax.set_ylim(-0.02, 1.02)
            else:  # the untrained policy's first evaluation would set the scale: fit the rest
                lo = min(float(np.min(b.lo[1:])) for b, _ in res.raw_curves[td.key].values())
                hi = max(float(np.max(b.hi[1:])) for b, _ in res.raw_curves[td.key].values())
                pad = 0.06 * (hi - lo or 1.0)
                ax.set_ylim(lo - pad, hi + pad)
        _legend(fig, res.data.algos, cols)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
        return to_svg(fig)
