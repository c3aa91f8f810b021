"""marl-eval's own numbers for the marl-eval example files under tests/data (the oracle of
``tests/test_marleval_minmax.py``, which checks ``marpo-bench report --normalise minmax`` against them).

Runs marl-eval 0.0.4's pipeline as its README and ``examples/simple_example.py`` do:
``data_process_pipeline(raw, metrics_to_normalize=["return"])`` (min-max normalisation per task),
``create_matrices_for_rliable`` (each run's normalised ``absolute_metrics`` return, runs x tasks)
and ``aggregate_scores`` (rliable's ``get_interval_estimates``, 50,000 stratified-bootstrap
resamples), and writes every algorithm's point estimates and 95% CIs, plus the normalised final
scores, to a JSON file. rliable's bootstrap draws from the global ``np.random``, which is seeded
here (``--seed``) so the CIs repeat.

Needs marl-eval, not this package: it is not run in CI. In a throwaway venv outside the checkout
(``VENV``: any directory there), from the repository root:

    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --no-deps id-marl-eval==0.0.4
    "$VENV/bin/pip" install colorcet==3.0.0 'matplotlib>=3.5.3' 'numpy<2' rliable==1.2.0 'arch<8' \\
        seaborn pandas==1.5.3 Jinja2 colorama tqdm 'importlib-metadata<5.0'
    "$VENV/bin/python" benchmarks/marl_eval_reference.py --out tests/data/marl_eval_reference.json

(id-marl-eval 0.0.4 pins pandas==1.4.4, which has no wheel for Python 3.11 and whose source build
fails there; pandas only formats marl-eval's tables, and neptune only feeds its JSON tools, so
both are replaced or left out as above.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from importlib import metadata
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from marl_eval.plotting_tools.plotting import aggregate_scores  # noqa: E402
from marl_eval.utils.data_processing_utils import create_matrices_for_rliable, data_process_pipeline  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
FILES = ("marl_eval_mock_data.json", "marl_eval_minmax_example.json")
METRICS = ["return"]


def _point(table_cell: str) -> float:
    """A point estimate from marl-eval's returned scores. ``aggregate_scores`` overwrites them with
    its table's text (``tabular_results`` is a shallow copy of the dict it returns), rounded to
    ``rounding_decimals``: 17 decimals keep the float (``str`` of a float round-trips)."""
    return float(table_cell.split(" [")[0])


def reference(path: Path, seed: int, scratch: Path) -> dict:
    """marl-eval's aggregate scores (point, CI) and normalised final scores of every environment
    of one file, as its pipeline computes them."""
    raw = json.loads(path.read_text())
    processed = data_process_pipeline(raw_data=raw, metrics_to_normalize=METRICS)
    out = {}
    for env in raw:
        matrix, _ = create_matrices_for_rliable(processed, env, METRICS)
        np.random.seed(seed)  # rliable's bootstrap uses the global generator
        _, points, cis = aggregate_scores(matrix, "return", METRICS, rounding_decimals=17,
                                          tabular_results_file_path=str(scratch / f"{path.stem}_{env}"))
        tasks = list(processed[env.lower()])
        out[env] = {
            "tasks": tasks,
            "aggregates": {algo: {m: {"point": _point(v), "ci": [float(c) for c in cis[algo][m]]}
                                  for m, v in per.items()} for algo, per in points.items()},
            "final_scores": {algo: {"runs": list(processed[env.lower()][tasks[0]][algo]),
                                    "runs_x_tasks": np.asarray(m).tolist()}
                             for algo, m in matrix["mean_norm_return"].items()},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        files = {name: reference(DATA / name, args.seed, Path(scratch)) for name in FILES}
    result = {
        "what": "marl-eval's own aggregate scores (metric 'return', min-max normalised) of the example files",
        "command": "python benchmarks/marl_eval_reference.py --out tests/data/marl_eval_reference.json",
        "bootstrap": {"reps": 50_000, "confidence": 0.95, "np.random.seed": args.seed},
        "versions": {p: metadata.version(p) for p in ("id-marl-eval", "rliable", "numpy", "arch", "scipy")},
        "sources": {
            "marl_eval_mock_data.json": "instadeepai/marl-eval tests/mock_data_test.json at tag 0.0.4 (commit "
                                        "0829a636817e3cc67cb47b71612301fdacb5819c), re-serialised without "
                                        "indentation; Copyright 2022 InstaDeep Ltd., Apache License 2.0",
            "marl_eval_minmax_example.json": "made for these tests: two tasks on different scales, and one "
                                             "absolute_metrics list that sets a new minimum and a new maximum at "
                                             "once (Robots/push/mappo/2), which marl-eval's min-max scan misses",
        },
        "files": files,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
