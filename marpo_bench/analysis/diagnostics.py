"""MARPO's training diagnostics (KL budget, clip bounds, clip fraction, reflection term) against env
steps, per env family, for the report's diagnostics figure."""

from __future__ import annotations

import numpy as np

from marpo_bench.analysis.scores import StudyScores
from marpo_bench.stats import Band, mean_band, rng_for

DIAGNOSTICS: dict[str, str] = {
    "kl_delta": "δ (KL budget)",
    "clip_low_p5": "lower bound x1, 5th percentile",
    "clip_high_p95": "upper bound x2, 95th percentile",
    "clip_fraction": "clip fraction",
    "reflection_term": "reflection term α·L1",
}
"""MARPO's training diagnostics (docs/algorithms.md §4) the report draws when a study has them."""


def diagnostics(data: StudyScores, reps: int, confidence: float, seed: int,
                grid_points: int = 21) -> dict[str, dict[str, dict[str, Band]]]:
    """Per env family, per diagnostic, per algorithm that logs it: the mean over its runs (all the
    family's tasks) against env steps, with bootstrap bands; {} when no run logs ``kl_delta``."""
    out: dict[str, dict[str, dict[str, Band]]] = {}
    for fam in sorted({t.env for t in data.tasks}):
        tasks = [t for t in data.tasks if t.env == fam]
        grid = np.linspace(0, min(t.budget for t in tasks), grid_points)
        for metric in DIAGNOSTICS:
            for a in data.algos:
                rows = []
                for t in tasks:
                    for r in t.runs.get(a, []):
                        df = data.frames.get(r.run_id)
                        if df is None or metric not in df:
                            continue
                        ok = df[metric].notna().to_numpy()
                        if ok.sum() >= 2:
                            rows.append(np.interp(grid, df["env_steps"].to_numpy(np.float64)[ok],
                                                  df[metric].to_numpy(np.float64)[ok]))
                if rows:
                    out.setdefault(fam, {}).setdefault(metric, {})[a] = mean_band(
                        np.stack(rows), grid, reps, confidence, rng_for(seed, "diagnostics", fam, metric, a))
    return {fam: d for fam, d in out.items() if "kl_delta" in d}
