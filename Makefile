# Two commands do all the set-up on a fresh machine (README.md):
#   make demo   -> creates .venv, installs torch 2.13.0 (CPU) then the package, runs the default study
#   make test   -> the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/marpo-bench run

lint: install
	$(VENV)/bin/ruff check .

# The full suite, slow learning checks included (they fit in CI's time on 2 cores).
test: install lint
	$(PY) -m pytest -q

# Without the slow learning checks: for quick iterations.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
