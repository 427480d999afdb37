# Everything a fresh machine needs is installed by these targets.
#   make demo   - the main job: a 32-task job array against the embedded sandbox
#   make demo-user - the same array in user context: one device login, one refresh
#   make test   - the whole test suite (with Redis and a local Slurm cluster)
#   make check  - lint, formatting, types (strict) and the built distributions, as CI runs them
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-user test check bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m compileall -q src >/dev/null
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/qlam-hpc demo

demo-user: $(STAMP)
	$(BIN)/qlam-hpc demo --user-context

# The integration tests need Redis and a local Slurm: installed from Debian's packages
# and started here when missing, stopped afterwards whatever the outcome.
test: $(STAMP)
	scripts/test-services.sh start
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; scripts/test-services.sh stop; exit $$status

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	scripts/check-dist.sh

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .demo
