# ahi_torch developer commands. `make test` builds .venv from nothing when it is missing or stale.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip on this machine prints one warning per local index without the package; keep the log readable.
PIP_QUIET := 2>&1 | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }

.PHONY: venv test test-fast lint typecheck unit demo bench bench-quick mutate clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch==2.13.0 (CPU wheel) and ahi-torch[dev] into $(VENV)"
	$(BIN)/python -m pip install -q torch==2.13.0 $(PIP_QUIET)
	$(BIN)/python -m pip install -q -e '.[dev]' $(PIP_QUIET)
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ahi_torch tests bench
	$(BIN)/ruff format --check ahi_torch tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck unit

# The tests that need no local AHI (pure functions, formats, samplers, the cache on disk): seconds, not minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not service and not slow"

demo: $(STAMP)
	$(BIN)/ahi-torch demo

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

# Mutation testing (not part of `make test`): cosmic-ray plants bugs in the modules named in
# mutation/<group>.toml and runs the tests that guard them. `make mutate MUTATE=samplers` runs one
# group; MUTATE_SAMPLE=30 runs a seeded random sample of 30 mutants per group. It edits files in
# place while it runs: commit first and do not edit meanwhile (or run it in a copy of the tree).
MUTATE ?= samplers geometry cache ratelimit fetch index shared_table datasets integrations local client slides counters
MUTATE_SAMPLE ?=
mutate: $(STAMP)
	@for group in $(MUTATE); do \
	  rm -f .mutation-$$group.sqlite; \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cosmic-ray init mutation/$$group.toml .mutation-$$group.sqlite; \
	  if [ -n "$(MUTATE_SAMPLE)" ]; then $(BIN)/python mutation/sample.py .mutation-$$group.sqlite $(MUTATE_SAMPLE); fi; \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cosmic-ray exec mutation/$$group.toml .mutation-$$group.sqlite; \
	  echo "== $$group"; $(BIN)/cr-report .mutation-$$group.sqlite --show-pending | tail -n 3; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis .mutation-*.sqlite
