# Two commands are all the set-up: `make run` and `make test`.
# Both bootstrap .venv and contracts/node_modules when missing (or stale).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := contracts/node_modules/.installed
SLITHER_VENV := .venv-slither
SLITHER_STAMP := $(SLITHER_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test bootstrap browser lint typecheck contracts slither clean

bootstrap: $(VENV_STAMP) $(NODE_STAMP)

$(VENV_STAMP): pyproject.toml bench/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e bench/
	touch $@

$(NODE_STAMP): contracts/package.json contracts/package-lock.json
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: bootstrap
	$(BIN)/ledgerflow up

test: bootstrap browser lint typecheck slither
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser test drives Debian's Chromium (no browser download): install it when we can.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
	      || echo "warning: could not install chromium; the browser test will fail in CI"; \
	  else echo "note: chromium not installed; the browser test is skipped outside CI"; fi; }

lint: bootstrap
	$(BIN)/ruff check ledgerflow workflows activities bench tests worker.py
	$(BIN)/ruff format --check ledgerflow workflows activities bench tests worker.py

typecheck: bootstrap
	$(BIN)/mypy

contracts: $(NODE_STAMP)
	cd contracts && node build.js

# Slither has its own venv (it pins web3<8; ledgerflow needs web3 8) and compiles through
# contracts/tools/solc (the pinned solc-js); any finding above informational that
# contracts/tools/slither-triage.json does not accept fails the build.
$(SLITHER_STAMP): contracts/tools/slither-requirements.txt
	test -x $(SLITHER_VENV)/bin/python || $(PYTHON) -m venv $(SLITHER_VENV)
	$(SLITHER_VENV)/bin/python -m pip install --quiet -r contracts/tools/slither-requirements.txt
	touch $@

slither: $(NODE_STAMP) $(SLITHER_STAMP)
	$(SLITHER_VENV)/bin/python contracts/tools/slither_check.py

clean:
	rm -rf .ledgerflow .pytest_cache
