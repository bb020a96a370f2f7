"""The test stack's helpers: where it runs and on which storage, a scratch configuration,
a service's metric, a bounded poll, a superuser connection."""

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra import postgres, timescaledb
from infra import stack as stack_module
from infra.config import StackConfig

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


async def until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    """Lets the event loop run until `condition` holds; fails past the deadline."""
    async with asyncio.timeout(timeout_s):
        # Polled: the conditions are other tasks' plain state, with no event to wait on.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # the poll interval, bounded by the deadline


@contextlib.contextmanager
def running_stack(config: StackConfig, tag: str = "stack") -> Iterator[stack_module.Stack]:
    """A stack up for the block, then down and its state dir removed (kept when
    TELEMETRY_KEEP_TEST_STATE is set, to read after a failure)."""
    running = stack_module.Stack(config, report=lambda step: print(f"[{tag}] {step}", flush=True))
    try:
        running.up()
        yield running
    finally:
        running.down()
        if not os.environ.get("TELEMETRY_KEEP_TEST_STATE"):
            shutil.rmtree(config.state_dir, ignore_errors=True)


def superuser(config: StackConfig, dbname: str = postgres.DATABASE) -> psycopg.Connection[Any]:
    dsn = postgres.superuser_dsn(config).replace("dbname=postgres", f"dbname={dbname}")
    return psycopg.connect(dsn, autocommit=True)
