# Two commands for a newcomer: `make demo` and `make test`. Both run `make setup` when needed.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
AZURITE := node_modules/.bin/azurite-table

.PHONY: setup demo test lint typecheck unit bench clean

setup: $(STAMP) $(AZURITE)

$(STAMP): requirements.txt requirements-dev.txt requirements-runtime-indexer.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=/path/to/python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# The Functions runtime's indexer declares Python >= 3.13; it runs on 3.11 for the indexing smoke test.
	$(BIN)/python -m pip install --quiet --ignore-requires-python -r requirements-runtime-indexer.txt
	touch $(STAMP)

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

demo: setup
	$(BIN)/python -m restricted_sender demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -q -m "not azurite"

# Two workers (one per core of the CI machine), each with its own Azurite; the timing bars then run alone.
test: lint typecheck
	$(BIN)/python -m pytest -q -n 2 -m "not bench"
	$(BIN)/python -m pytest -q -m bench

bench: setup
	$(BIN)/python bench/webhook_latency.py
	$(BIN)/python bench/import_cost.py
	$(BIN)/python bench/alert_to_unblock.py
	$(BIN)/python bench/burst.py

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
