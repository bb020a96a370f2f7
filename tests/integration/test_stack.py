"""The stack's servers are real and wired as the design says."""

import asyncio
import os
import pwd
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra import ops_exporter, pgbouncer, postgres, redis, services
from infra.config import StackConfig
from infra.procs import APP_USER, DATABASE_USER, StackError, run
from infra.stack import Stack
from schemas import topics
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration


async def test_kafka_round_trip_through_the_real_broker(config: StackConfig) -> None:
    topic = f"test-roundtrip-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=config.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(20)}
        for key, value in sent.items():
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=config.kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    received: dict[bytes, bytes] = {}
    try:
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=1000)
                for messages in batch.values():
                    received.update({m.key: m.value for m in messages if m.key is not None})
    finally:
        await consumer.stop()
    assert received == sent


async def test_pings_topic_has_twelve_partitions(config: StackConfig) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka_bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topics.PINGS])
    finally:
        await admin.close()
    assert described["error_code"] == 0
    assert len(described["partitions"]) == 12


def test_replica_is_a_streaming_standby_of_the_primary(config: StackConfig) -> None:
    table = f"repl_check_{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex
    with psycopg.connect(postgres.dsn(config, "primary"), autocommit=True) as primary:
        assert primary.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        primary.execute(f"CREATE TABLE {table} (marker text)")
        primary.execute(f"INSERT INTO {table} VALUES (%s)", [marker])
    with psycopg.connect(postgres.dsn(config, "replica"), autocommit=True) as replica:
        assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)

        def replicated() -> bool | None:
            if replica.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,):
                return None
            rows = replica.execute(f"SELECT marker FROM {table}").fetchall()
            return True if rows == [(marker,)] else None

        wait_for(replicated, timeout_s=15)
        # A standby refuses writes: proof that reads routed here cannot mutate data.
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            replica.execute(f"INSERT INTO {table} VALUES ('x')")
    with psycopg.connect(postgres.dsn(config, "primary"), autocommit=True) as primary:
        primary.execute(f"DROP TABLE {table}")


def test_pgbouncer_routes_read_write_to_primary_and_read_only_to_replica(
    config: StackConfig,
) -> None:
    for read_only, in_recovery in ((False, False), (True, True)):
        with psycopg.connect(
            pgbouncer.dsn(config, read_only=read_only), prepare_threshold=None
        ) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (in_recovery,)


async def test_pgbouncer_transaction_mode_serves_psycopg_under_concurrency(
    config: StackConfig,
) -> None:
    # More clients than PgBouncer's pool (default_pool_size = 20), each repeating a
    # parameterised query well past psycopg's default prepare threshold (5): with server-side
    # prepared statements this fails with "prepared statement ... does not exist".
    clients, repeats = 60, 12

    async def client(n: int) -> int:
        total = 0
        async with await psycopg.AsyncConnection.connect(
            pgbouncer.dsn(config, read_only=False), prepare_threshold=None, autocommit=True
        ) as conn:
            for i in range(repeats):
                async with conn.transaction():
                    cur = await conn.execute("SELECT %s::int + %s::int, pg_sleep(0.001)", [n, i])
                    row = await cur.fetchone()
                    assert row is not None
                    total += row[0]
        return total

    results = await asyncio.gather(*(client(n) for n in range(clients)))
    assert results == [n * repeats + sum(range(repeats)) for n in range(clients)]


def _uid(pid: int) -> int:
    """The process's real uid (it may not change it back: no saved root either)."""
    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("Uid:")]
    real, effective, saved, _ = (int(n) for n in line.split()[1:])
    assert real == effective == saved, line
    return real


def test_our_services_run_unprivileged_and_cannot_read_the_stacks_secrets(stack: Stack) -> None:
    # Started by root, our services and the ops exporter run as the system user `telemetry
    # install` makes, PostgreSQL and PgBouncer as postgres; started by a user, as that user.
    root = os.geteuid() == 0
    app_uid = pwd.getpwnam(APP_USER).pw_uid if root else os.geteuid()
    db_uid = pwd.getpwnam(DATABASE_USER).pw_uid if root else os.geteuid()
    ours = {spec.name for spec in services.specs(stack.config)} | {ops_exporter.NAME}
    for name, record in stack.records.items():
        uid = _uid(record.ref.pid)
        if name in ours:
            assert uid == app_uid, name
        elif name.startswith(("postgres-", "pgbouncer", "etcd")):
            assert uid == db_uid, name
        component = stack.components.get(name)
        in_a_container = component is not None and component.command().image is not None
        if stack.config.runtime == "containers" and in_a_container:
            # No container runs as root (the engine itself and the supervisor are the
            # host's: rootful Podman runs the containers, the supervisor restarts them).
            assert uid != 0, name
    if not root:
        return
    assert app_uid != 0
    # The files that hold secrets: the JWT signing key, the database's and Redis's passwords.
    for secret in (
        stack.config.jwt_private_key,
        postgres.pg_root(stack.config) / "password",
        redis.data_dir(stack.config) / "password",
    ):
        assert secret.exists(), secret
        with pytest.raises(StackError, match="Permission denied"):
            run([sys.executable, "-c", f"open({str(secret)!r}).read()"], user=APP_USER)
    # What it must read, it can (the JWT public key), and where it must write, it owns.
    run([sys.executable, "-c", f"open({str(stack.config.jwt_public_key)!r}).read()"], user=APP_USER)
    for path in services.writable_dirs(stack.config):
        assert path.stat().st_uid == app_uid, path
