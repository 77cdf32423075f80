# riskstream — the two commands: `make run` (live demo on a real local stack) and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack

.PHONY: install asyncapi-tools deploy-tools run test test-faults test-unit stack-up stack-down bench bench-peer soak model clean

$(BIN)/riskstream: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "make: $(PY) not found: install Python 3.11+" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev,train]'
	@# compile the numba kernels into their on-disk cache now, not in the first worker (≈ 7 s cold)
	$(BIN)/python -c 'from stream.core.warmup import warm_up; print(f"kernels compiled in {warm_up():.1f} s")'
	@touch $@

install: $(BIN)/riskstream

# The official AsyncAPI parser (npm @asyncapi/parser, pinned by the lockfile) for the check of
# docs/asyncapi.yaml in tests/unit/test_contracts.py. No install scripts run.
ASYNCAPI := tools/asyncapi
$(ASYNCAPI)/node_modules/.package-lock.json: $(ASYNCAPI)/package.json $(ASYNCAPI)/package-lock.json
	@command -v npm >/dev/null && node -e 'process.exit(parseInt(process.versions.node) < 18 ? 1 : 0)' \
	  || { echo "make: Node.js 18+ with npm is needed for the AsyncAPI check (apt-get install nodejs npm)" >&2; exit 1; }
	cd $(ASYNCAPI) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

asyncapi-tools: $(ASYNCAPI)/node_modules/.package-lock.json

# The deployment manifests' checks (tests/unit/test_deploy_manifests.py): kustomize, pinned, built
# from its Go module into tools/bin; the KEDA CRDs (ScaledObject, TriggerAuthentication, whose
# openAPIV3Schema the KEDA objects are validated against) and the Kafka scaler's source (whose field
# tags name the trigger's metadata keys) from the KEDA Go module, pinned, into tools/keda-crds/VERSION
# (with KEDA's LICENSE). Both come from the Go module proxy; Go 1.22+ needed.
TOOLS_BIN := tools/bin
KUSTOMIZE_VERSION := v5.7.1
KEDA_VERSION := v2.21.0
KEDA_CRDS := tools/keda-crds/$(KEDA_VERSION)
NEED_GO = @command -v go >/dev/null || { echo "make: Go 1.22+ is needed for the deployment checks (kustomize, KEDA CRDs)" >&2; exit 1; }

$(TOOLS_BIN)/.kustomize-$(KUSTOMIZE_VERSION):
	$(NEED_GO)
	GOBIN=$(CURDIR)/$(TOOLS_BIN) GOFLAGS=-buildvcs=false go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	@touch $@

$(KEDA_CRDS)/keda.sh_scaledobjects.yaml:
	$(NEED_GO)
	@dir=$$(go mod download -json github.com/kedacore/keda/v2@$(KEDA_VERSION) \
	  | $(PY) -c 'import json,sys; d=json.load(sys.stdin); sys.exit("make: " + d["Error"]) if d.get("Error") else print(d["Dir"])') \
	  && mkdir -p $(KEDA_CRDS) \
	  && install -m 0644 "$$dir/LICENSE" "$$dir/config/crd/bases/keda.sh_triggerauthentications.yaml" \
	       "$$dir/pkg/scalers/kafka_scaler.go" $(KEDA_CRDS)/ \
	  && install -m 0644 "$$dir/config/crd/bases/keda.sh_scaledobjects.yaml" $@ \
	  && echo "KEDA $(KEDA_VERSION) CRDs in $(KEDA_CRDS)"

deploy-tools: $(TOOLS_BIN)/.kustomize-$(KUSTOMIZE_VERSION) $(KEDA_CRDS)/keda.sh_scaledobjects.yaml

stack-up:
	$(STACK) up
	$(STACK) up --cluster
	$(STACK) up --secure

stack-down:
	$(STACK) down --secure
	$(STACK) down --cluster
	$(STACK) down

# The live demo: stack, topics, a worker, simulated users streamed in accelerated time, alerts.
run: install
	$(BIN)/python -m stream.tools.demo

# All tests: unit, contract (memory, Redis, Redis Cluster) and integration on the real stack.
test: install asyncapi-tools deploy-tools stack-up
	$(BIN)/python -m pytest -q

# Long fault-injection tests (a broker SIGKILLed or frozen mid-stream, 75-120 s each) on the cluster stack;
# `make test` runs the rest (pytest deselects the `faults` marker by default).
test-faults: install stack-up
	$(BIN)/python -m pytest -q -m faults tests/integration

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

bench: install
	$(BIN)/python bench/offline_bench.py

# The peer in the bench (issue #17): the worker against a Faust no-op agent and Quix Streams apps on the
# same topics (the stack must be up; Quix Streams goes into its own venv under ~/.cache/riskstream).
# A short run: make bench-peer PEER_ARGS='--events 100000 --repeats 1'
PEER_ARGS ?=
bench-peer: install
	$(BIN)/python bench/peer_bench.py $(PEER_ARGS)

# The soak (issue #13): 30 min at a steady input rate, two workers, a rolling restart half-way; RSS, Redis
# memory, lag and decidable→ack p99 every 10 s; a table, test-artifacts/soak/soak.{csv,png}. The stack
# must be up. A short run: make soak SOAK_ARGS='--minutes 5 --warmup-min 1'
SOAK_ARGS ?=
soak: install
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	$(STACK) clean --secure || true
	$(STACK) clean --cluster || true
	$(STACK) clean || true
