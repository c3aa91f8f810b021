"""Regression check against a stored reference: did a code change alter behaviour, or make it worse?

A *reference* (committed under ``results/reference/``) holds real runs of a small, fixed *suite*
(``suites.SUITES``), produced by ``marpo-bench regress --update`` on the project's CI machine kind::

    <reference>/reference.json         manifest: suite + its definition, schema version, machine, history
    <reference>/README.md              how it was produced (the exact command), machine kind, history
    <reference>/suite/runs/<run_id>/   the suite's runs (run.json + metrics.parquet; no checkpoint.pt)
    <reference>/exact/runs/<run_id>/   the exact slice's runs

Two checks, two questions (``--mode exact|stat|both``):

- **exact** ("did behaviour change?"): re-trains the suite's short *exact slice* (one seed per
  algorithm on one task, a few thousand env steps) on CPU with one torch thread and
  ``torch.use_deterministic_algorithms(True)``, and compares every stored metric bit for bit
  (``wall_seconds`` aside) and the resolved config (a setting added since the reference was
  recorded counts as a change only when it departs from the value older runs ran with: the
  config's ``LEGACY_VALUES``, else its default). Any difference is reported as the first
  differing run, metric and env step (with the distance in ulps). A change is not a verdict on
  quality: an intended change is recorded with ``--update --reason``. Bits are only comparable on
  the reference's CPU kind (``provenance.cpu_kind``: model and vector-ISA flags) with the same package
  versions: the same code and versions on two AVX-512 hosts of the CI machine kind differed at the
  1e-7 level (2026-12). On another
  machine kind, or against a reference that does not record its CPU, differences are shown but do
  not set the exit code (``reference.exact_is_binding``); the stat check still decides.
- **stat** ("did it get worse?"): re-trains the whole suite (same seeds; or reads ``--candidate
  STUDY``) and compares, per algorithm, the normalised *final* score (mean of the last K evaluation
  points, as in the report) and the normalised *area under the learning curve* (AUC: the mean of
  the clipped normalised curve over the budget) with the reference's, using the report's
  statistics (:mod:`marpo_bench.stats`): IQM with stratified-bootstrap CIs and the probability
  of improvement P(candidate > reference). The rule (per algorithm and score):

      worse  if  IQM(cand) - IQM(ref) < -tolerance  and  the CI of P(cand > ref) lies below 1/2
      better if  IQM(cand) - IQM(ref) > +tolerance  and  the CI of P(cand > ref) lies above 1/2
      same   otherwise

  An algorithm is *worse* when its final or its AUC score is worse, or when any of its runs
  failed. Re-running the suite's own seeds on the reference's machine kind reproduces the
  reference bit for bit on its CPU kind (the table says so), so the unmodified code passes there with
  Δ = 0 and P = 1/2;
  the tolerance (``compare.DEFAULT_TOLERANCE``) only has to absorb seed-to-seed noise for candidates
  run with other seeds or on other machines, and both conditions must hold, so noise alone
  rarely trips it while a broken learner (P near 0) does.

  Calibration (smoke suite, when its reference was first made): the suite re-trained with seeds
  3-5 instead of 0-2 gave |Δ IQM| <= 0.032 for every algorithm and score (final and AUC) and
  P(cand > ref) CIs that all contain 1/2: "same" everywhere, the tolerance being 3x the largest
  re-seeding difference. MAPPO with the sign of its advantages flipped (tests/test_regress.py,
  tiny suite) scores 0.000 against 0.190 (final) with P = 0: "worse". A drop of 0.10 is about a
  quarter of the smoke suite's scores (0.22-0.49); smaller regressions are beyond what 3 seeds
  at short budgets resolve.

Exit codes: 0 pass, 1 worse (or a run failed), 2 bad input (one-line error), 3 behaviour changed
but nothing is worse. ``--update`` re-trains the suite and the slice and replaces the reference,
appending a dated entry with ``--reason`` to its history (manifest and README).

Runs train through the executors' pool (``executors.pool.run_jobs``, ``deterministic=True``): in
this process (``workers=1``: monkeypatches in tests reach them) or in spawned processes with the
same deterministic settings; both give the same numbers.

Modules: :mod:`.suites` (what is stored and re-trained), :mod:`.compare` (the exact and the
statistical comparison, on studies read once), :mod:`.reference` (the reference on disk, its
README), :mod:`.check` (validate a request once, run it, print the verdict).
"""

from marpo_bench.regress.check import (
    EXIT_BAD_INPUT,
    EXIT_CHANGED,
    EXIT_OK,
    EXIT_WORSE,
    MODES,
    RegressResult,
    Request,
    check,
    print_result,
    run_regress,
    validate_request,
)
from marpo_bench.regress.compare import DEFAULT_TOLERANCE, Study, compare_exact, first_difference, judge
from marpo_bench.regress.reference import (
    MANIFEST,
    README,
    Reference,
    check_update_args,
    exact_is_binding,
    load_reference,
    read_manifest,
    render_readme,
    write_reference,
)
from marpo_bench.regress.suites import EXACT_STUDY, SUITE_STUDY, SUITES, RegressError, Suite, get_suite

__all__ = [
    "DEFAULT_TOLERANCE", "EXACT_STUDY", "EXIT_BAD_INPUT", "EXIT_CHANGED", "EXIT_OK", "EXIT_WORSE", "MANIFEST", "MODES",
    "README", "SUITES", "SUITE_STUDY", "Reference", "RegressError", "RegressResult", "Request", "Study", "Suite",
    "check", "check_update_args", "compare_exact", "exact_is_binding", "first_difference", "get_suite", "judge",
    "load_reference", "print_result", "read_manifest", "render_readme", "run_regress", "validate_request",
    "write_reference",
]
