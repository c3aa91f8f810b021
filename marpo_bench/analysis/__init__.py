"""Analysis of a study: load it, then compute everything the report shows.

The pipeline (``docs/algorithms.md``, "Comparison pitfalls"), one concern per module::

    scores.py       what the statistics see of a run: its final score (the mean of the last K
                    evaluation points in the last 10% of a budget, FINAL_WINDOW) and its curve
    load.py         store.read_study -> load_scores: complete runs only (the rest listed with the
                    reason), one task = (env family, task) at its common budget, normalised
                    with the task's bounds (:mod:`marpo_bench.normalisation`)
    compare.py      each algorithm against the baseline on the tasks both ran at a common budget
    cost.py         wall-clock and CPU-hours per algorithm
    diagnostics.py  MARPO's training diagnostics against env steps
    study.py        analyse: IQM / mean / median / optimality gap with stratified-bootstrap CIs,
                    probability of improvement, performance profiles, sample-efficiency curves
                    (:mod:`marpo_bench.stats`)
    export.py       the numbers as JSON (analysis.json)
"""
