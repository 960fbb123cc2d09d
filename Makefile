# ocean-c2d developer commands. `make help` lists them.
# The two commands a newcomer needs (README): `make run` and `make test`. Both set up everything
# they use: the Python virtualenv, and the Go-built cluster binaries (cached outside the repo).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KUBECONFIG_LOCAL = $(shell e2e/cluster/cluster.sh kubeconfig)
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create the virtualenv and install the package with its dev tools

# What the local cluster (with its real node: kubelet is in kubernetes, kube-router) and `make run` need
# (versitygw: the demo's S3 server); the rest (kubo, ct, prometheus, actionlint) is for the tests.
CLUSTER_TOOLS := kubernetes etcd kwok kube-router helm versitygw

.PHONY: toolchain
toolchain: ## build every Go tool (cluster, test servers, ct, promtool, actionlint) not cached yet
	toolchain/build.sh

.PHONY: cluster-up
cluster-up: ## start the local cluster (no-op when it runs); prints where its kubeconfig is
	toolchain/build.sh $(CLUSTER_TOOLS)
	e2e/cluster/cluster.sh up

# The local cluster, unless KUBECONFIG names a cluster that answers (the e2e suite then uses that one).
.PHONY: local-cluster
local-cluster: toolchain
	@if [ -n "$${KUBECONFIG:-}" ] && PATH="$$(toolchain/build.sh --path kubernetes):$$PATH" \
	    kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then \
	  echo "make: using the cluster KUBECONFIG names"; \
	else e2e/cluster/cluster.sh up; fi

.PHONY: cluster-down
cluster-down: ## stop the local cluster and delete its state
	e2e/cluster/cluster.sh down

.PHONY: run
run: venv cluster-up ## the main job: local cluster, operator, a sample Workflow until it finishes
	PATH="$$(toolchain/build.sh --path):$$PATH" kubectl --kubeconfig "$(KUBECONFIG_LOCAL)" get nodes -o wide
	KUBECONFIG="$(KUBECONFIG_LOCAL)" samples/run-demo.sh
	@echo "The cluster keeps running: export KUBECONFIG=$(KUBECONFIG_LOCAL); stop it with 'make cluster-down'."

.PHONY: lint
lint: venv ## ruff (lint + format check), mypy, import-linter (layers), shellcheck, hadolint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/shellcheck -x toolchain/*.sh e2e/cluster/*.sh e2e/images/*.sh e2e/kind/*.sh samples/*.sh .ci/run
	$(BIN)/hadolint Dockerfile

# The package's import graph as grimp (import-linter's graph) reads it: each module and what it imports.
.PHONY: imports
imports: venv ## print the package's import graph: each module, then the package modules it imports
	@$(BIN)/python -c 'import grimp; g = grimp.build_graph("ocean_c2d"); \
	  [print(m.removeprefix("ocean_c2d."), "->", " ".join(sorted(i.removeprefix("ocean_c2d.") \
	   for i in g.find_modules_directly_imported_by(m)))) for m in sorted(g.modules)]'

.PHONY: lock
lock: ## regenerate requirements.lock (the image's runtime dependencies, pinned with their hashes) from pyproject.toml
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet pip-tools==7.6.2
	.lock-venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	  --no-emit-find-links --output-file requirements.lock pyproject.toml && rm -rf .lock-venv

.PHONY: unit
unit: venv ## unit tests only (no cluster; helm, ct, promtool, actionlint, and local S3/IPFS servers)
	toolchain/build.sh helm chart-testing prometheus actionlint kubo versitygw
	$(BIN)/pytest unit_tests $(PYTEST_ARGS)

# The local cluster (with its real node and images) is started before pytest, not inside its first
# test's fixture: a cold start builds images for a minute or more, several on a busy machine, which is
# no test's time limit to spend. It keeps running afterwards (make cluster-down).
.PHONY: e2e
e2e: venv toolchain local-cluster ## e2e tests only, on the cluster KUBECONFIG names or the local one
	$(BIN)/pytest e2e $(PYTEST_ARGS)

# The API's load (e2e/test_api_load.py): 200 concurrent signed polls while 50 Workflows run; it prints
# latency percentiles and the API-server requests per poll. Sizes: API_LOAD_WORKFLOWS, _POLLERS, _ROUNDS.
.PHONY: bench-api
bench-api: venv toolchain local-cluster ## benchmark the API's status polls under load (prints numbers)
	$(BIN)/pytest e2e/test_api_load.py -q -s $(PYTEST_ARGS)

# The benchmark harness (benchmarks/bench.py; README "Benchmarks"): scenarios S0 (no-logic baseline), S2
# (queued burst at maxJobs 10 and 50), S3 (writes by client, audit log), S4 (idle), S5 (start-up with finished
# Workflows), S6 (SIGKILL and restart) at the issue's sizes (1,000 Workflows: allow an hour or more on 2
# cores); results.json, results.md and PNG plots under .artifacts/bench/<run id>/ (and .artifacts/bench/latest).
# BENCH_ARGS passes options, e.g. BENCH_ARGS="--scenarios S0,S2 --max-jobs 50".
BENCH_ARGS ?=
.PHONY: bench
bench: venv toolchain local-cluster ## the benchmark harness at the issue's sizes (results in .artifacts/bench/latest)
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

.PHONY: bench-small
bench-small: venv toolchain local-cluster ## the benchmark harness at CI's size (100 Workflows; a few minutes)
	$(BIN)/python -m benchmarks.bench --workflows 100 --max-jobs 10 --idle-seconds 10 --finished 0,100 \
	  --in-flight 20 --in-flight-run-for 3s $(BENCH_ARGS)

# Argo Workflows beside ocean-c2d (benchmarks/argo.py): its workflow-controller, built on first use from
# the Go module toolchain/versions.env pins (about 5 minutes on 2 cores), moves Workflows of the same
# 3-step shape on the local cluster. ARGO_ARGS passes options, e.g. ARGO_ARGS="--unthrottled".
ARGO_ARGS ?=
.PHONY: bench-argo
bench-argo: venv toolchain local-cluster ## Argo Workflows' controller on the same cluster and shape (prints numbers)
	toolchain/build.sh argo-workflows
	PATH="$$(toolchain/build.sh --path kubernetes):$$PATH" KUBECONFIG="$(KUBECONFIG_LOCAL)" \
	  $(BIN)/python -m benchmarks.argo --json .artifacts/bench/argo.json $(ARGO_ARGS)

.PHONY: kind-e2e
kind-e2e: ## for machines with Docker and kind: the e2e suite with the operator in-cluster (e2e/kind/run.sh)
	e2e/kind/run.sh $(PYTEST_ARGS)

.PHONY: test
test: venv toolchain lint local-cluster ## every check and test: lint, unit and e2e in one pytest run
	$(BIN)/pytest unit_tests e2e -rfEs $(PYTEST_ARGS)
