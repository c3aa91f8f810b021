"""The study report: HTML (one self-contained file) and PDF with the statistics of
:mod:`marpo_bench.analysis`.

API::

    res = analysis.study.analyse(Path("results/default"), reps=50_000, baseline="mappo")
    paths = report.write_report(res, Path("results/default/report"), formats=("html", "pdf"))
"""

from marpo_bench.report.render import FORMATS, ReportError, render_html, write_report

__all__ = ["FORMATS", "ReportError", "render_html", "write_report"]
