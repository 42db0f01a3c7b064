# Two commands for a newcomer: `make demo` and `make test`. Both run `make setup` when needed.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
AZURITE := node_modules/.bin/azurite-table
# Debian's chromium: tests/test_review_page.py opens the decisions review page in it, headless.
CHROMIUM := /usr/bin/chromium
# uv installs the dev requirements in a third of pip's time; pip stays for the one --ignore-requires-python line.
UV_SPEC := uv>=0.13,<0.14
# checkov (~290 MB) lives in its own environment, never in .venv. Pinned exactly: new releases add checks.
TOOLS := .tools
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := $(TOOLS)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

.PHONY: setup demo test lint typecheck iac unit bench generate clean

setup: $(STAMP) $(AZURITE) $(CHROMIUM)

$(STAMP): requirements.txt requirements-dev.txt requirements-runtime-indexer.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=/path/to/python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip '$(UV_SPEC)'
	# Compiled now: the environment may forbid writing bytecode later (PYTHONDONTWRITEBYTECODE), and every test
	# subprocess would then compile msgraph and the Azure SDKs from source again.
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements-dev.txt
	# The Functions runtime's indexer declares Python >= 3.13; it runs on 3.11 for the indexing smoke test.
	$(BIN)/python -m pip install --quiet --ignore-requires-python -r requirements-runtime-indexer.txt
	touch $(STAMP)

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

# Installed when missing (sudo only when not root; the package lists are refreshed when the first try fails).
# SKIP_BROWSER_TESTS=1 leaves it out, and the browser tests with it; without it they fail when it is missing.
$(CHROMIUM):
	@if [ "$(SKIP_BROWSER_TESTS)" = 1 ]; then echo "SKIP_BROWSER_TESTS=1: chromium not installed"; exit 0; fi; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	|| { $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; \
	test -x $(CHROMIUM) || { echo "Debian's chromium did not install at $(CHROMIUM)"; exit 1; }

demo: setup
	$(BIN)/python -m restricted_sender demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# A .venv made before uv was part of setup gets it here.
$(BIN)/uv: | $(STAMP)
	$(BIN)/python -m pip install --quiet '$(UV_SPEC)'

$(CHECKOV_STAMP): | $(BIN)/uv
	rm -rf $(CHECKOV_VENV)
	$(BIN)/uv venv --quiet --python $(PYTHON) $(CHECKOV_VENV)
	$(BIN)/uv pip install --quiet --python $(CHECKOV_VENV)/bin/python 'checkov==$(CHECKOV_VERSION)'
	touch $(CHECKOV_STAMP)

# Scans every Bicep file and ARM template under infra/ (the Sentinel playbook included), offline. A finding is
# fixed or skipped in place with its reason. checkov exits 0 on a template it cannot parse, so that fails here.
# Bytecode caching is turned back on for this tool only: without it every run recompiles checkov (~5 s).
iac: $(CHECKOV_STAMP)
	@env -u PYTHONDONTWRITEBYTECODE LOG_LEVEL=ERROR $(CHECKOV_VENV)/bin/checkov --framework bicep,arm \
		--skip-download --quiet --compact -d infra > $(TOOLS)/checkov.txt; status=$$?; cat $(TOOLS)/checkov.txt; \
	if grep -q "Parsing errors" $(TOOLS)/checkov.txt; then echo "checkov could not parse a template under infra/"; exit 1; fi; \
	exit $$status

unit: setup
	$(BIN)/python -m pytest -q -m "not azurite"

# Two workers (one per core of the CI machine), each with its own Azurite; the timing bars then run alone.
test: lint typecheck iac
	$(BIN)/python -m pytest -q -n 2 -m "not bench"
	$(BIN)/python -m pytest -q tests/test_bench.py

bench: setup
	$(BIN)/python bench/webhook_latency.py
	$(BIN)/python bench/import_cost.py
	$(BIN)/python bench/alert_to_unblock.py
	$(BIN)/python bench/burst.py

# Files generated from the code, each checked by a test: policy.schema.json from the policy model
# (restricted_sender/core/policy.py), the route table in simulator/README.md from simulator/routes.py.
generate: setup
	$(BIN)/python -m restricted_sender policy schema > policy.schema.json
	$(BIN)/python -c 'from simulator.routes import main; main(["--write"])'

clean:
	rm -rf $(VENV) $(TOOLS) node_modules .mypy_cache .ruff_cache .pytest_cache
