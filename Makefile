# The two commands a user needs: `docker compose up` (run) and `make test` (test).
# Everything else here is for developing the project.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := -e shared -e services/producer -e services/consumer -e services/topic_admin -e services/inmemory -e services/console
STAMP := $(VENV)/.installed

.PHONY: help install lint typecheck check test unit integration e2e reliability bench kafka kafka-jars lock clean

help:
	@echo "make install      create .venv with the library, the four services and the dev tools"
	@echo "make test         lint, type checks and the whole test suite (starts its own Kafka)"
	@echo "make unit         unit tests only (no Kafka)"
	@echo "make integration  integration tests against a real Kafka started from the pinned jars"
	@echo "make e2e          end-to-end: docker-compose.yml on Docker, or on podman it sets up itself (root)"
	@echo "make reliability  fault scenarios (full profile) -> reliability-report.json and a table"
	@echo "make bench        benchmarks against kcat and Kafka's perf tools -> benchmark-report.json and tables"
	@echo "make kafka        run a single KRaft Kafka node on localhost:9092 in the foreground"
	@echo "make lock         re-resolve constraints.txt (the locked dependency set)"

install: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt shared/pyproject.toml services/*/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt $(PACKAGES) -r requirements-dev.txt
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck

# The Helm chart's tools (tests/deploy/helm_tools.py: a Go build and a checkov venv, minutes on a
# new machine, cached after) are made in the background while the other tests run; the chart's
# tests wait for them.
test: install
	@mkdir -p build && ($(BIN)/python -m tests.deploy.helm_tools > build/helm-tools.log 2>&1 &)
	$(MAKE) check
	$(BIN)/pytest tests

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

e2e: install
	$(BIN)/pytest tests/e2e -m e2e

reliability: install
	RELIABILITY_PROFILE=full $(BIN)/pytest tests/integration/test_reliability.py

bench: install
	BENCH_PROFILE=full $(BIN)/pytest tests/benchmarks

kafka: install
	$(BIN)/python deploy/kafka/local_kafka.py run

kafka-jars:
	$(PYTHON) deploy/kafka/local_kafka.py fetch

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet $(PACKAGES) -r requirements-dev.txt
	.lock-venv/bin/pip freeze --exclude-editable > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
