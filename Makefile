# The two commands: `make run` and `make test`. Both set up what they need, once.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MODEL_PACKAGES := $(sort $(dir $(wildcard models/*/pyproject.toml)))
STAMP := $(VENV)/.installed

.PHONY: setup run test bench lint clean brokers stop-brokers

setup: $(STAMP)
	@scripts/system_deps.sh

$(STAMP): pyproject.toml $(addsuffix pyproject.toml,$(MODEL_PACKAGES))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[all,test]" \
		$(foreach package,$(MODEL_PACKAGES),-e $(package))
	touch $@

run: setup brokers
	$(BIN)/hostd run host.yaml

# Tansu (Kafka) on :9092 and Redis on :6379 for host.yaml, unless something already listens there.
brokers: setup
	scripts/brokers.sh start

stop-brokers:
	scripts/brokers.sh stop

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The load tests: `make bench`, or `make bench ARGS="--vs mlserver"` (see benchmarks/__main__.py).
bench: setup $(VENV)/.bench-installed
	@scripts/system_deps.sh bench
	$(BIN)/python -m benchmarks $(ARGS)

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	touch $@

lint: setup
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check hostd plugins tests models
	$(BIN)/mypy hostd plugins

clean:
	rm -rf $(VENV) build *.egg-info
