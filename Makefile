# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_STAMP := .cache/.system-deps
# kustomize renders deploy/k8s/ for tests/unit/deploy/test_k8s.py: built from source
# with the Go toolchain through the Go module proxy (no binary download), pinned here
# (the test reads this line) and kept in .cache/bin under its version.
KUSTOMIZE_VERSION := v5.8.2
KUSTOMIZE := .cache/bin/kustomize-$(KUSTOMIZE_VERSION)

.PHONY: bootstrap up down status demo test test-unit test-integration lint bench chaos clean

bootstrap: $(STAMP) $(SYSTEM_STAMP) $(KUSTOMIZE) ## virtualenv, package, redis-server, prometheus, Kafka jars, kustomize
	@$(PY) -m devstack kafka-jars

# Three distributions, one venv: the contract (producers/ + schemas/), the worker
# (processors/, devstack/, the omni CLI) and the bench; one pip command, so the
# worker's and the bench's dependency on the contract resolve to this checkout.
$(STAMP): pyproject.toml contract/pyproject.toml bench/pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e ./contract -e ".[dev]" -e ./bench
	@touch $@

$(SYSTEM_STAMP):
	@mkdir -p .cache
	@if ! command -v redis-server >/dev/null || ! command -v promtool >/dev/null; then \
	  echo "installing redis-server and prometheus (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server prometheus >/dev/null; \
	fi
	@command -v java >/dev/null || { echo "Java (JDK 17+) is needed for the local Kafka broker: install openjdk-17-jre-headless"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is needed to resolve the Kafka jars: install maven"; exit 1; }
	@touch $@

$(KUSTOMIZE):
	@command -v go >/dev/null || { echo "Go 1.26+ is needed to build kustomize $(KUSTOMIZE_VERSION): install golang"; exit 1; }
	@echo "building kustomize $(KUSTOMIZE_VERSION) into .cache/bin (go install, once)"
	@rm -rf .cache/bin/.kustomize-build && mkdir -p .cache/bin/.kustomize-build
	@GOBIN="$(abspath .cache/bin/.kustomize-build)" go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	@mv .cache/bin/.kustomize-build/kustomize $@ && rm -rf .cache/bin/.kustomize-build

up: bootstrap ## start Kafka, Redis and the worker in the background; returns when ready
	@$(PY) -m devstack up

down: ## stop everything `make up` started
	@test -x $(PY) && $(PY) -m devstack down || true

status:
	@$(PY) -m devstack status

demo: bootstrap ## bring the stack up, play stories S1 and S5, show triggers live
	@$(PY) -m processors.tools.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy processors producers schemas devstack bench

test: bootstrap lint ## the whole suite: unit, schemas, deploy files, end-to-end on real Kafka+Redis
	$(VENV)/bin/pytest -q

test-unit: $(STAMP) $(KUSTOMIZE)
	$(VENV)/bin/pytest -q tests/unit

test-integration: bootstrap
	$(VENV)/bin/pytest -q tests/integration

bench: bootstrap ## benchmark: preload events, measure throughput and latency (figures, not a test)
	$(PY) -m bench.run

chaos: bootstrap ## faults on a schedule against the worker, scored against an oracle (~20 min)
	$(PY) -m bench.chaos

clean: down
	rm -rf .omni
