# The two set-up commands of the README; each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/demo

.PHONY: demo test lint bench clean

$(VENV)/.hvae-installed: pyproject.toml requirements/constraints.txt scripts/setup-venv.sh
	bash scripts/setup-venv.sh $(VENV)

demo: $(VENV)/.hvae-installed
	$(VENV)/bin/hvae train --config configs/default.yaml --out $(RUN) --overwrite
	$(VENV)/bin/hvae eval $(RUN)
	$(VENV)/bin/hvae report $(RUN)

test: $(VENV)/.hvae-installed
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest

bench: $(VENV)/.hvae-installed
	$(PY) -m benchmarks.run

lint: $(VENV)/.hvae-installed
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
