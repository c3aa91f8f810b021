# Two commands do all the set-up on a fresh machine (README.md):
#   make demo   -> creates .venv, installs torch 2.13.0 (CPU) then the package, runs the default study
#                  (two runs at a time: one per core)
#   make test   -> the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

# Debian packages: pango for WeasyPrint (PDF reports), chromium for the report's headless render
# test, a font for both. Installed with apt-get where it exists and we are root (CI, fresh machines);
# elsewhere skipped with a note (PDF output then fails with a clear message, the browser test skips).
APT_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core chromium

$(STAMP): pyproject.toml
	@if command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done | tr '\n' ' '); \
	  if [ -n "$${missing% }" ]; then \
	    echo "apt-get install -y $$missing"; \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; } >/dev/null \
	      || echo "warning: apt-get could not install $$missing; PDF reports / the browser test may not work"; \
	  fi; \
	else \
	  echo "note: no apt-get or not root: install $(APT_PACKAGES) for PDF reports and the browser test"; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Trains the embedded default study, then writes its report (HTML, Markdown) and prints the verdict
# and the per-task table.
demo: install
	$(VENV)/bin/marpo-bench run --workers 2
	$(VENV)/bin/marpo-bench report results/default --format html,md

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
