"""Session fixtures that start the real stack (Kafka, PostgreSQL primary + replica, PgBouncer,
Redis, and our services) on free ports in a scratch state dir, and stop it afterwards."""

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra import postgres, timescaledb
from infra import stack as stack_module
from infra.config import StackConfig
from infra.stack import Stack
from runtime.auth import issue_token
from schemas.auth import Role

T = TypeVar("T")


def stack_backend() -> str:
    """Where the tests' stacks run their components (TELEMETRY_TEST_BACKEND): local
    processes (the default), or containers through testcontainers (`make
    test-containers`)."""
    backend = os.environ.get("TELEMETRY_TEST_BACKEND", "processes")
    if backend not in ("processes", "containers"):
        raise pytest.UsageError(
            f"TELEMETRY_TEST_BACKEND={backend!r}: expected processes or containers"
        )
    return backend


def session_storage() -> str:
    """The storage this session's stack runs: TELEMETRY_STORAGE, where `auto` means
    TimescaleDB when it is installed (`make test` installs it first), and always on
    containers (the postgres image has it)."""
    chosen = StackConfig().storage
    if chosen == "auto":
        installed = stack_backend() == "containers" or timescaledb.installed()
        return "timescaledb" if installed else "native"
    return chosen


def scratch_config(**overrides: object) -> StackConfig:
    defaults = {"storage": session_storage(), "runtime": stack_backend()}
    return stack_module.scratch_config("telemetry-test-", **(defaults | overrides))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of one storage's own features (`@pytest.mark.timescaledb`, `.native`) are
    deselected, not skipped, when the session runs the other storage."""
    other = "native" if session_storage() == "timescaledb" else "timescaledb"
    deselected = [item for item in items if item.get_closest_marker(other)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker(other)]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Two ingest processes: every test also exercises the scale-out path.
    config = scratch_config(ingest_processes=2)
    running = Stack(config, report=lambda step: print(f"[stack] {step}", flush=True))
    try:
        running.up()
        yield running
    finally:
        running.down()
        if not os.environ.get("TELEMETRY_KEEP_TEST_STATE"):
            shutil.rmtree(config.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def config(stack: Stack) -> StackConfig:
    return stack.config


@pytest.fixture(scope="session")
def token(config: StackConfig) -> Callable[..., str]:
    def make(role: Role, sub: str, **kwargs: object) -> str:
        return issue_token(config.jwt_private_key, sub=sub, role=role, **kwargs)  # type: ignore[arg-type]

    return make


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`, from one process's
    /metrics."""
    text = httpx.get(url + "/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def wait_for(probe: Callable[[], T | None], timeout_s: float = 30.0, interval_s: float = 0.1) -> T:
    """Polls `probe` until it returns something other than None; fails past the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)  # the poll interval; the deadline above bounds the wait


def superuser(config: StackConfig, dbname: str = postgres.DATABASE) -> psycopg.Connection[Any]:
    dsn = postgres.superuser_dsn(config).replace("dbname=postgres", f"dbname={dbname}")
    return psycopg.connect(dsn, autocommit=True)


@pytest.fixture
def fresh_database(config: StackConfig) -> Iterator[str]:
    """An empty database on the stack's primary, owned by the app role."""
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    with superuser(config, "postgres") as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {postgres.APP_USER}")
    try:
        yield postgres.dsn(config, "primary", dbname=name)
    finally:
        with superuser(config, "postgres") as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
