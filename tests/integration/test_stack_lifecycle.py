"""`up` fails clearly leaving nothing behind; `up` twice is harmless; status tells the truth."""

import shutil
import socket
import time
import uuid
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from infra import postgres, services
from infra.procs import StackError
from infra.stack import Stack
from runtime.auth import issue_token
from runtime.heartbeat import fresh
from schemas.auth import Role
from tests.support.stack import scratch_config, wait_for

pytestmark = pytest.mark.integration


def test_taken_port_fails_clearly_and_stops_what_was_started() -> None:
    config = scratch_config(startup_timeout_s=60)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", config.redis_port))
    blocker.listen()
    stack = Stack(config)
    try:
        with pytest.raises(StackError) as failure:
            stack.up()
        message = str(failure.value)
        assert str(config.redis_port) in message
        assert "TELEMETRY_REDIS_PORT" in message
        # Kafka was started before Redis failed: it must have been stopped again.
        assert stack.records == {}
        assert Stack(config).records == {}
    finally:
        blocker.close()
        stack.down()
        shutil.rmtree(config.state_dir, ignore_errors=True)


def test_up_again_is_idempotent_and_status_reports_every_component(stack: Stack) -> None:
    pids = {name: record.ref.pid for name, record in stack.records.items()}
    again = Stack(stack.config)
    again.up()
    assert {name: record.ref.pid for name, record in again.records.items()} == pids
    status = again.status()
    database = (
        ("etcd", "postgres-1", "postgres-2", "haproxy-db")
        if stack.config.postgres_ha
        else ("postgres-primary", "postgres-replica")
    )
    for name in ("kafka", *database, "pgbouncer", "redis", "ingest-1", "streams-1", "api-1"):
        assert status[name]["healthy"], name
        assert status[name]["pid"] == pids[name]
    assert status["kafka"]["bootstrap"] == stack.config.kafka_bootstrap
    assert "dbname=telemetry_ro" in status["pgbouncer"]["dsn_read_only"]


def test_every_ingest_process_serves(stack: Stack) -> None:
    # The test stack runs `--ingest 2`: both processes accept pings on their own ports.
    urls = [r.endpoint["url"] for n, r in stack.records.items() if n.startswith("ingest-")]
    assert len(urls) == 2
    token = issue_token(stack.config.jwt_private_key, sub="drv-scale", role=Role.DRIVER)
    for url in urls:
        ping = {
            "ping_id": str(uuid.uuid4()),
            "ts": datetime.now(UTC).isoformat(),
            "lat": 1.5,
            "lon": 2.5,
        }
        r = httpx.post(
            f"{url}/v1/pings", json={"pings": [ping]}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 202, url
    assert stack.status()["ingest-2"]["healthy"]


def test_every_service_process_proves_its_loop_turns(stack: Stack) -> None:
    # The supervisor forgives a late /healthz only while this file is fresh: each kind of
    # service must write it (uvicorn's, the notifier's and Faust's loops alike).
    names = {spec.name: spec.heartbeat for spec in services.specs(stack.config)}
    assert {name.rsplit("-", 1)[0] for name in names} == {
        "ingest", "streams", "api", "photo-worker", "notifier"
    }  # fmt: skip

    def all_fresh() -> bool | None:
        return all(b is not None and fresh(b, time.time()) for b in names.values()) or None

    wait_for(all_fresh, timeout_s=10)


def test_the_simulated_fleet_of_up_simulate_gets_its_pings_stored(stack: Stack) -> None:
    def stored_sim_pings() -> int:
        with psycopg.connect(postgres.dsn(stack.config, "primary")) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pings WHERE driver_id LIKE 'sim-%%'"
                " AND received_at > now() - interval '10 minutes'"
            ).fetchone()
        return int(row[0]) if row else 0

    before = stored_sim_pings()
    stack.start_simulator(5, interval_s=1.0)
    try:
        wait_for(lambda: True if stored_sim_pings() > before + 10 else None, timeout_s=90)
    finally:
        stack.stop("simulator")
    assert not stack.running("simulator")
