"""benchmarks/mutation_check.py stays honest: every planted bug's target text occurs exactly once in
today's code (a mutation whose pattern went missing checks nothing: it once hid four of them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mutations():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "benchmarks" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module.MUTATIONS


@pytest.mark.parametrize("mutation", _mutations(), ids=lambda m: m.id)
def test_every_planted_bug_targets_text_that_occurs_exactly_once(mutation):
    text = (ROOT / mutation.file).read_text()
    assert text.count(mutation.old) == 1, f"{mutation.id}: update its pattern in benchmarks/mutation_check.py"
    assert mutation.new != mutation.old
    for test in mutation.tests:
        assert (ROOT / test).is_file(), f"{mutation.id} names {test}, which does not exist"
