# kloop — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo ">> installing Python dependencies into $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## Create .venv with kloop and its dev tools

lint: $(STAMP) ## ruff, mypy (strict) and the import contracts
	$(VENV)/bin/ruff check operator tests e2e
	$(VENV)/bin/ruff format --check operator tests e2e
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: $(STAMP) ## Format and autofix
	$(VENV)/bin/ruff format operator tests e2e
	$(VENV)/bin/ruff check --fix operator tests e2e

crds: $(STAMP) ## Regenerate crds/ from the pydantic models
	$(PY) -m kloop.api.crdgen crds

admission: $(STAMP) ## Regenerate deploy/admission/ from the chart's admission policies
	$(PY) -m e2e.admission

dashboard: $(STAMP) ## Regenerate the chart's Grafana dashboard from e2e/dashboard.py
	$(PY) -m e2e.dashboard

# Both pytest runs share one cluster; it is stopped at the end only if it was not up before (and
# KLOOP_KEEP_CLUSTER is not 1). Both runs always run; the target fails if either failed.
test: lint ## Lint, build (cluster, test model, images), the whole suite, then the engine e2e in-cluster
	$(PY) -m e2e.cluster build
	$(PY) -m e2e.llm build
	$(PY) -m e2e.image --no-import
	@was_up=1; $(PY) -c 'from e2e.cluster import local; raise SystemExit(not local.any_running())' \
	  || was_up=0; \
	failed=0; \
	KLOOP_KEEP_CLUSTER=1 $(PY) -m pytest -m 'not bench' tests e2e || failed=1; \
	echo ">> the engine's e2e tests again, operator installed from the chart"; \
	KLOOP_KEEP_CLUSTER=1 KLOOP_E2E_OPERATOR=chart $(PY) -m pytest -m both_modes e2e || failed=1; \
	if [ $$was_up = 0 ] && [ "$$KLOOP_KEEP_CLUSTER" != 1 ]; then $(PY) -m e2e.cluster down; fi; \
	exit $$failed

test-unit: $(STAMP) ## Only the pure unit tests (no cluster)
	$(PY) -m pytest -m unit tests

image: $(STAMP) ## Build the operator and kit images (buildah) and import them into the local node
	$(PY) -m e2e.image

wheels: $(STAMP) ## Only prepare image/ (wheels, kubectl) for a `docker build` without the index
	$(PY) -m e2e.image --context-only

cluster-up: $(STAMP) ## Build (cached) and start the local cluster
	$(PY) -m e2e.cluster up

cluster-down: $(STAMP) ## Stop the local cluster and remove its state
	$(PY) -m e2e.cluster down

cluster-status: $(STAMP) ## Show which local cluster components run
	$(PY) -m e2e.cluster status

demo: $(STAMP) ## Start the cluster if needed, install CRDs, run the operator and a sample Loop
	$(PY) -m e2e.demo

demo-fleet: $(STAMP) ## The multi-cluster example on a local fleet of three clusters, stage by stage
	$(PY) -m e2e.demo_fleet

install: $(STAMP) ## Images, then the chart with Helm into the local cluster; waits until Ready
	$(PY) -m e2e.install install

uninstall: $(STAMP) ## Remove the release, its CRDs and namespace; fails if anything is left
	$(PY) -m e2e.install uninstall

bench: $(STAMP) ## Benchmarks, both modes (< 15 min); results go to docs/BENCHMARKS.md
	$(PY) -m e2e.bench

bench-scale: $(STAMP) ## 1,000 concurrent LoopRuns, operator only (< 20 min); docs/BENCHMARKS-scale.md
	KLOOP_BENCH_TARGET=bench-scale $(PY) -m e2e.bench --scale

.PHONY: help venv lint fmt crds admission dashboard image wheels install uninstall test test-unit cluster-up cluster-down cluster-status demo demo-fleet bench bench-scale
