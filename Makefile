# One target per task. `make up` and `make test` install whatever is missing first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install install-test system up down status simulate test test-containers images test-unit test-integration lint format typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP) ## the Python environment, Debian packages, Kafka's jars and TimescaleDB
	$(BIN)/telemetry install

SIMULATE ?= 200
up: install ## start the whole platform with a simulated fleet of $(SIMULATE) drivers
	$(BIN)/telemetry up --simulate $(SIMULATE) $(UP_ARGS)

down: $(STAMP)
	$(BIN)/telemetry down

status: $(STAMP)
	$(BIN)/telemetry status

# The whole suite on the installed storage (TimescaleDB where it builds), then the
# storage-specific tests again on native PostgreSQL.
install-test: $(STAMP) ## install, and what the tests need (Chromium)
	$(BIN)/telemetry install --test-tools

test: install-test ## unit and integration tests; the integration tests start their own stack
	$(BIN)/pytest $(PYTEST_ARGS)
	TELEMETRY_STORAGE=native $(BIN)/pytest -m storage tests/integration $(PYTEST_ARGS)

# Integration tests again with every component in a container of its image (Podman, through
# testcontainers): by default the stack's own, the skeleton path, the stream's and
# ingest's fault tests and PostgreSQL's failover (what CI runs); CONTAINER_TESTS=
# tests/integration runs them all. The images are built first, once (`telemetry images`).
CONTAINER_TESTS ?= tests/integration/test_stack.py tests/integration/test_stack_lifecycle.py \
	tests/integration/test_skeleton.py tests/integration/test_streams_reliability.py \
	tests/integration/test_ingest_faults.py tests/integration/test_postgres_ha.py
test-containers: install-test ## integration tests on containers (Podman)
	$(BIN)/telemetry images
	TELEMETRY_TEST_BACKEND=containers $(BIN)/pytest $(CONTAINER_TESTS) $(PYTEST_ARGS)

images: install ## build the container images that are not built yet
	$(BIN)/telemetry images

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install-test
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	@# The migrations, with squawk (long locks, unsafe types, steps that cannot run twice).
	$(BIN)/python -m infra.migrate lint
	@# The Alertmanager configuration the stack writes, with amtool check-config.
	$(BIN)/python -m infra.alertmanager check
	@# The load generator's Go, where there is a Go (bench/loadgen installs one when it runs).
	@if command -v go >/dev/null; then cd bench/loadgen && go vet . && test -z "$$(gofmt -l .)"; fi
	@# The AsyncAPI document, with AsyncAPI's own parser (Node.js, pinned in its lock file).
	npm ci --prefix tools/asyncapi --no-audit --no-fund --loglevel=error
	node tools/asyncapi/validate.mjs docs/asyncapi.yaml

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	@if command -v go >/dev/null; then gofmt -w bench/loadgen; fi

clean: down
	rm -rf .telemetry
