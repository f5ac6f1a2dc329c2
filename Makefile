# mcp-sandbox-runner — developer entry points. `make help` lists them.
# Every target sets up what it needs itself (virtualenv, Docker engine, images) and says so.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=
# Empty: the settings file's `listen:` (else MCP_RUNNER_LISTEN, else 127.0.0.1:50051); set, it wins over both.
LISTEN ?=
BACKEND ?=
# `make run BACKEND=kubernetes` without CONFIG: settings sized for the test cluster's one 2-CPU node.
KUBERNETES_RUN_CONFIG := scripts/kubernetes/run-settings.yaml
RUN_CONFIG := $(or $(CONFIG),$(if $(filter kubernetes,$(BACKEND)),$(KUBERNETES_RUN_CONFIG)))
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv docker images images-kubernetes run test test-unit test-integration lint proto bench clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "[make] creating the virtualenv in $(VENV) and installing the project (editable, with dev tools)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create the virtualenv and install the project

docker: ## Make sure a Docker engine answers (installs docker.io and starts dockerd on Debian as root)
	@bash scripts/ensure-docker.sh

images: venv docker ## Build the sandbox images that are missing (offline, content-hashed tags)
	@echo "[make] checking sandbox images (only missing ones are built)..."
	@$(BIN)/mcp-runner images build

run: images $(if $(filter kubernetes,$(BACKEND)),images-kubernetes) ## Start the service (CONFIG=settings file, LISTEN=host:port, BACKEND=kubernetes: sandboxes as pods on the test cluster)
	@echo "[make] starting mcp-runner on $(or $(LISTEN),$(if $(RUN_CONFIG),the listen: address of $(RUN_CONFIG),127.0.0.1:50051))$(if $(BACKEND), with sandboxes on $(BACKEND)) — Ctrl-C stops it and removes its sandboxes"
	@$(BIN)/mcp-runner serve $(if $(LISTEN),--listen $(LISTEN)) $(if $(BACKEND),--backend $(BACKEND)) $(if $(RUN_CONFIG),--config $(RUN_CONFIG))

images-kubernetes: images kubernetes ## Load the images that are missing into the test cluster's runtime (no registry needed)
	@echo "[make] loading images into the test cluster (only missing ones are imported)..."
	@$(BIN)/mcp-runner images load --kubernetes

.PHONY: mcp-tools
mcp-tools: ## Install the pinned MCP test tools (Node 22, conformance suite, Inspector CLI) into /var/cache/mcp-runner
	@bash scripts/mcp-tools.sh

test: images lint images-kubernetes mcp-tools ## Run lint, then every test: unit, integration (Docker and the test cluster, real servers, the MCP conformance suite), hostile servers
	@echo "[make] running the whole test suite"
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv ## Run the unit tests only (no Docker needed)
	@$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: venv ## ruff and mypy --strict on runner/
	@$(BIN)/ruff check runner tests
	@$(BIN)/mypy

proto: venv ## Regenerate the gRPC stubs from proto/
	@bash scripts/gen-proto.sh

bench: images $(if $(filter kubernetes,$(BACKEND)),images-kubernetes) ## Benchmark every section beside its baseline (BACKEND=kubernetes adds pods beside containers)
	@echo "[make] running every bench section with its defaults (several minutes; figures are wall clock on this machine)"
	@$(BIN)/mcp-runner bench $(if $(BACKEND),--backend $(BACKEND))

.PHONY: kubernetes kubernetes-down
kubernetes: ## Bring up (or find up) the single-node test cluster, Kubernetes v1.20.2 offline; kubeconfig ~/.kube/mcp-runner-test.yaml
	@bash scripts/kubernetes.sh up

kubernetes-down: ## Stop the test cluster by pid and remove pods' leftovers (cached binaries, certificates, etcd data, images stay)
	@bash scripts/kubernetes.sh down

clean: ## Remove the virtualenv and caches (images stay; `docker image rm` them by hand)
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache build
