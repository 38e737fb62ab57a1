# Two commands are all the set-up: `make run` and `make test`.
# Both bootstrap .venv and contracts/node_modules when missing (or stale).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := contracts/node_modules/.installed
PYTEST_ARGS ?=

.PHONY: run test bootstrap lint typecheck contracts clean

bootstrap: $(VENV_STAMP) $(NODE_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(NODE_STAMP): contracts/package.json contracts/package-lock.json
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: bootstrap
	$(BIN)/ledgerflow up

test: bootstrap
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: bootstrap
	$(BIN)/ruff check ledgerflow workflows activities tests worker.py
	$(BIN)/ruff format --check ledgerflow workflows activities tests worker.py

typecheck: bootstrap
	$(BIN)/mypy

contracts: $(NODE_STAMP)
	cd contracts && node build.js

clean:
	rm -rf .ledgerflow .pytest_cache
