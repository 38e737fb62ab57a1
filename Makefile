# Two commands are all the set-up: `make run` and `make test`.
# Both bootstrap .venv and contracts/node_modules when missing (or stale); `make test` also builds
# the independent TypeScript verifier in verifiers/ts (its own node_modules and dist/).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := contracts/node_modules/.installed
TS := verifiers/ts
TS_STAMP := $(TS)/node_modules/.installed
TS_BUILT := $(TS)/dist/.built
PYTEST_ARGS ?=

.PHONY: run test bootstrap browser lint typecheck contracts ts-verifier lock clean

bootstrap: $(VENV_STAMP) $(NODE_STAMP)

# Every Python dependency comes pinned, with its hashes, from requirements-dev.lock (compiled
# from the ranges in pyproject.toml by `make lock`); the project itself is installed without
# resolving anything.
$(VENV_STAMP): pyproject.toml bench/pyproject.toml requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . -e bench/
	touch $@

# Refresh both lock files after changing a dependency range in pyproject.toml (or to take newer
# releases within the ranges): one resolution for every supported Python and platform.
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --quiet
lock: $(VENV_STAMP)
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements-dev.lock

$(NODE_STAMP): contracts/package.json contracts/package-lock.json
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(TS_STAMP): $(TS)/package.json $(TS)/package-lock.json
	cd $(TS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(TS_BUILT): $(TS_STAMP) $(TS)/tsconfig.json $(wildcard $(TS)/src/*.ts $(TS)/src/*/*.ts)
	rm -rf $(TS)/dist
	cd $(TS) && npx --no-install tsc -p tsconfig.json
	touch $@

# The TypeScript verifier, built (tsc also type-checks it) for tests/test_ts_verifier.py.
ts-verifier: $(TS_BUILT)

run: bootstrap
	$(BIN)/ledgerflow up

test: bootstrap ts-verifier browser lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser test drives Debian's Chromium (no browser download): install it when we can.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
	      || echo "warning: could not install chromium; the browser test will fail in CI"; \
	  else echo "note: chromium not installed; the browser test is skipped outside CI"; fi; }

lint: bootstrap $(TS_STAMP)
	$(BIN)/ruff check ledgerflow workflows activities bench tests worker.py
	$(BIN)/ruff format --check ledgerflow workflows activities bench tests worker.py
	cd $(TS) && npx --no-install prettier --check --log-level warn src

typecheck: bootstrap ts-verifier
	$(BIN)/mypy

contracts: $(NODE_STAMP)
	cd contracts && node build.js

clean:
	rm -rf .ledgerflow .pytest_cache
