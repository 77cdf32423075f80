# riskstream — the two commands: `make run` (live demo on a real local stack) and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack

.PHONY: install run test test-unit stack-up stack-down bench model clean

$(BIN)/riskstream: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "make: $(PY) not found: install Python 3.11+" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev,train]'
	@touch $@

install: $(BIN)/riskstream

stack-up:
	$(STACK) up
	$(STACK) up --cluster

stack-down:
	$(STACK) down --cluster
	$(STACK) down

# The live demo: stack, topics, a worker, simulated users streamed in accelerated time, alerts.
run: install
	$(BIN)/python -m stream.tools.demo

# All tests: unit, contract (memory, Redis, Redis Cluster) and integration on the real stack.
test: install stack-up
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

bench: install
	$(BIN)/python bench/offline_bench.py

clean:
	$(STACK) clean --cluster || true
	$(STACK) clean || true
