# rtvoice: the two front-door commands are `make demo` and `make test`.
# Both bootstrap a fresh Debian machine (Python 3.11, Node.js, root): virtualenv, the
# package with its dev extras, Debian's redis-server, and (for the tests) the Cosmos emulator's
# Node packages and promtool.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EMULATOR_DIR := tests/cosmos_emulator

.PHONY: test test-fast demo bench install lint typecheck pytest system-deps test-tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# $(call debian,COMMAND,PACKAGE): unless COMMAND is on PATH, install Debian's PACKAGE (without
# its recommends; a container starts no service), then fail if COMMAND is still missing.
define debian
	@command -v $(1) >/dev/null 2>&1 || { \
	  echo "installing $(1) (Debian package $(2))"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(2) >/dev/null; }
	@command -v $(1) >/dev/null 2>&1 || { echo "$(1) could not be installed" >&2; exit 1; }
endef

system-deps:
	$(call debian,redis-server,redis-server)

# promtool checks gateway/deploy/prometheus-rules.yaml in the tests.
test-tools:
	$(call debian,promtool,prometheus)

$(EMULATOR_DIR)/node_modules/.installed: $(EMULATOR_DIR)/package.json $(EMULATOR_DIR)/package-lock.json
	cd $(EMULATOR_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

pytest: install system-deps test-tools $(EMULATOR_DIR)/node_modules/.installed
	$(BIN)/pytest

test: lint typecheck pytest

# The inner loop: everything but the tests marked `slow` (local Ray, whole simulated calls,
# Cosmos restarts); `make test` still runs them all.
test-fast: install system-deps test-tools $(EMULATOR_DIR)/node_modules/.installed
	$(BIN)/pytest -m "not slow"

demo: install system-deps
	$(BIN)/rtvoice demo

# Every benchmark (bench/RESULTS.md); the Cosmos emulator's packages too, for `archive`.
bench: install system-deps $(EMULATOR_DIR)/node_modules/.installed
	$(BIN)/rtvoice bench all

clean:
	rm -rf $(VENV) $(EMULATOR_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache
