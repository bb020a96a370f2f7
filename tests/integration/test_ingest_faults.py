"""Ingest when the broker dies: 503 within 2 s, recovery without a restart, bounded shutdown.

These tests kill brokers, so they get a stack of their own (Kafka and ingest only; without
Redis each ingest process holds drivers to its own buckets)."""

import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from infra import install, kafka, keys, runtimes, services
from infra.config import StackConfig
from infra.containers import engine
from infra.procs import ProcessRef, stop, wait_until
from runtime.auth import issue_token
from schemas.auth import Role
from tests.support.stack import scratch_config, wait_for

pytestmark = pytest.mark.integration

# The contract: a 503 within 2 s when Kafka is unavailable. The client gives up after that,
# so a slower answer fails the test as a timeout.
CONTRACT_TIMEOUT = httpx.Timeout(2.0)


def start_kafka(config: StackConfig) -> ProcessRef:
    kafka.prepare(config)
    return runtimes.spawn(config, kafka.command(config))


@dataclass
class BrokerAndIngest:
    config: StackConfig
    broker: ProcessRef
    ingest: ProcessRef
    spec: services.ServiceSpec

    def start_broker(self) -> None:
        self.broker = start_kafka(self.config)
        assert wait_until(lambda: kafka.ready(self.config), 90, 0.25), "Kafka did not come back"

    def start_ingest(self) -> None:
        self.ingest = services.start(self.config, self.spec)
        wait_for(lambda: True if services.url_ready(self.spec.url, self.spec.name) else None, 60)


@pytest.fixture
def broker_and_ingest() -> Iterator[BrokerAndIngest]:
    config = scratch_config()
    install.ensure_kafka_jars(config)
    keys.ensure(config)
    [spec] = [s for s in services.specs(config) if s.module == "ingest"]
    try:
        # The container engine's API, on the container backend (the test has no stack).
        with engine.serving(config):
            setup = BrokerAndIngest(config, start_kafka(config), ProcessRef(0, 0), spec)
            try:
                assert wait_until(lambda: kafka.ready(config), 90, 0.25), "Kafka did not start"
                kafka.create_topics(config)
                setup.start_ingest()
                yield setup
            finally:
                stop(setup.ingest, timeout_s=15)
                stop(setup.broker, timeout_s=30)
    finally:
        shutil.rmtree(config.state_dir, ignore_errors=True)


def post(setup: BrokerAndIngest, token: str) -> httpx.Response:
    body = {
        "pings": [
            {
                "ping_id": str(uuid.uuid4()),
                "ts": datetime.now(UTC).isoformat(),
                "lat": 12.9,
                "lon": 77.6,
            }
        ]
    }
    return httpx.post(
        f"{setup.spec.url}/v1/pings",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=CONTRACT_TIMEOUT,
    )


def alive(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def driver_token(setup: BrokerAndIngest) -> str:
    return issue_token(
        setup.config.jwt_private_key, sub=f"drv-{uuid.uuid4().hex[:6]}", role=Role.DRIVER
    )


def test_broker_down_gives_503_in_time_and_recovers_without_restarting_ingest(
    broker_and_ingest: BrokerAndIngest,
) -> None:
    setup = broker_and_ingest
    token = driver_token(setup)
    assert post(setup, token).status_code == 202
    ingest_pid = setup.ingest.pid

    stop(setup.broker, sig=signal.SIGKILL)
    for _ in range(3):
        down = post(setup, token)
        assert down.status_code == 503
        assert 1 <= int(down.headers["Retry-After"]) <= 3  # spread: not all back at once
        assert down.json()["error"]["code"] == "unavailable"
    # Readiness asks the broker (a metadata request), so it says the broker is gone.
    ready = httpx.get(f"{setup.spec.url}/readyz", timeout=CONTRACT_TIMEOUT)
    assert ready.status_code == 503

    setup.start_broker()
    recovered: Callable[[], httpx.Response | None] = lambda: (  # noqa: E731
        r if (r := post(setup, token)).status_code == 202 else None
    )
    assert wait_for(recovered, timeout_s=60).json()["accepted"] == 1
    assert httpx.get(f"{setup.spec.url}/readyz", timeout=CONTRACT_TIMEOUT).status_code == 200
    assert setup.ingest.pid == ingest_pid and setup.ingest.alive()


def test_ingest_started_while_the_broker_is_down_serves_once_it_is_up(
    broker_and_ingest: BrokerAndIngest,
) -> None:
    setup = broker_and_ingest
    stop(setup.ingest)
    stop(setup.broker, sig=signal.SIGKILL)
    setup.ingest = services.start(setup.config, setup.spec)
    wait_for(lambda: True if alive(setup.spec.url) else None, 30)
    token = driver_token(setup)
    assert post(setup, token).status_code == 503
    assert httpx.get(f"{setup.spec.url}/readyz", timeout=CONTRACT_TIMEOUT).status_code == 503
    setup.start_broker()
    wait_for(lambda: True if post(setup, token).status_code == 202 else None, timeout_s=60)


def test_shutdown_completes_within_10_s_with_the_broker_down(
    broker_and_ingest: BrokerAndIngest,
) -> None:
    setup = broker_and_ingest
    token = driver_token(setup)
    assert post(setup, token).status_code == 202
    stop(setup.broker, sig=signal.SIGKILL)
    assert post(setup, token).status_code == 503
    os.kill(setup.ingest.pid, signal.SIGTERM)
    assert wait_until(lambda: not setup.ingest.alive(), 10.0), (
        "ingest still running 10 s after SIGTERM"
    )
