# The two set-up commands of the README; each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/demo

.PHONY: demo test lint typecheck bench clean

$(VENV)/.hvae-installed: pyproject.toml requirements/constraints.txt scripts/setup-venv.sh
	bash scripts/setup-venv.sh $(VENV)

demo: $(VENV)/.hvae-installed
	$(VENV)/bin/hvae train --config configs/default.yaml --out $(RUN) --overwrite
	$(VENV)/bin/hvae eval $(RUN)
	$(VENV)/bin/hvae report $(RUN)

# the habits tools hold (ruff's rules and format, the import-linter contracts: pyproject.toml), then the tests;
# mypy (make typecheck) runs in CI beside it (.ci/run): a cold mypy cache costs a minute
test: $(VENV)/.hvae-installed
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

bench: $(VENV)/.hvae-installed
	$(PY) -m benchmarks.run

# test's static checks alone
lint: $(VENV)/.hvae-installed
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

# mypy over src/ with pyproject.toml's [tool.mypy] (CI runs it before test)
typecheck: $(VENV)/.hvae-installed
	$(PY) -m mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .import_linter_cache .grimp_cache
