# One entry point for people and CI. `make demo` runs the main DAG against the local sandbox;
# `make test` installs everything and runs lint, types and every test (what .ci/run calls).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
UV := $(PYTHON) -m uv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup lint test test-fast mutation mutation-check mutation-score demo sandbox lock dist clean

$(STAMP): requirements.lock pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	$(UV) venv -q --allow-existing --python "$$($(PYTHON) -c 'import sys; print(sys.executable)')" $(VENV)
	# --compile-bytecode: installed packages ship their .pyc, as pip-built images do. Without them every
	# Airflow process (each task, each CLI call) compiles Airflow from source: `import airflow.sdk` 5-6 s.
	$(UV) pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

setup: $(STAMP) ## Create .venv/ with the locked versions and the provider installed (editable).

lint: setup ## ruff (incl. Airflow AIR rules) and mypy --strict.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint ## Everything: lint, unit tests and the slow end-to-end tests.
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

test-fast: setup ## Unit tests only (no real Airflow runs, no PostgreSQL).
	@rc=0; $(BIN)/pytest -m "not slow" $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

MUTATION_ARGS ?= --max-children 2
mutation: setup ## Mutation testing of the secret- and credit-critical modules (slow, not in `make test`); see docs/mutation.md.
	# .mutation/ is kept between runs: mutmut keeps each mutant's verdict there, so modules can be run one at a time.
	mkdir -p .mutation
	for path in $$(ls -A | grep -vx -e .git -e .venv -e .mutation -e plugins); do ln -sfn ../$$path .mutation/$$path; done
	ln -sfn ../plugins .mutation/src
	cd .mutation && ../$(BIN)/mutmut run $(MUTATION_ARGS); rc=$$?; ../$(BIN)/mutmut results; exit $$rc
	$(MAKE) -s mutation-score

mutation-check: setup ## Re-check one mutant by hand: make mutation-check MUTANT='<name>' TESTS='<tests and pytest options>'.
	cd .mutation && MUTANT_UNDER_TEST='$(MUTANT)' PYTHONPATH=mutants/src ../$(BIN)/python -m pytest -q -x -p no:cacheprovider $(TESTS)

mutation-score: ## Per-module counts of the last `make mutation` run (killed, survived, timeout, not checked).
	@cd .mutation && ../$(BIN)/mutmut results --all true | sed -E 's/^ +//' \
	| awk -F': ' '{m = $$1; sub(/[.]x(_|ǁ).*/, "", m); n[m ": " $$2]++} END {for (k in n) print k, n[k]}' | sort

demo: setup ## Run coinstats_portfolio_sync twice against the local sandbox and SQLite (DATASETS=chart,snapshot or all adds opt-in datasets).
	$(BIN)/python -m include.demo $(if $(DATASETS),--datasets $(DATASETS))

sandbox: setup ## Start the local CoinStats sandbox on http://127.0.0.1:8765 (Ctrl-C stops it).
	$(BIN)/python -m include.coinstats_sandbox --port 8765

lock: ## Re-resolve requirements.lock from requirements-dev.in (needs the package registry).
	$(UV) pip compile requirements-dev.in --python-version 3.11 -o requirements.lock

dist: setup ## Build the sdist and wheel into dist/ and check them with twine (uv installs the build backend).
	rm -rf dist
	PATH="$$(dirname "$$($(PYTHON) -c 'import uv; print(uv.find_uv_bin())')"):$$PATH" \
		$(BIN)/python -m build --installer uv --outdir dist .
	rm -rf build plugins/*.egg-info
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) .airflow .mutation .pytest_cache .mypy_cache .ruff_cache dist
