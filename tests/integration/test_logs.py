"""Structured logs on the real stack (docs/ops.md): every line every service process wrote
is one JSON object with the agreed fields; a request's id is answered by ingest, rides its
Kafka record's header, and is on the stream's lines about that record and on its
dead letter."""

import asyncio
import functools
import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from infra import ops_exporter, supervisor
from infra.config import StackConfig
from infra.stack import Stack
from runtime.auth import issue_token
from runtime.logging import FIELDS
from schemas import topics
from schemas.auth import Role
from tests.support.driving import ping_at, wait_stored
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration

OURS = ("ingest-", "api-", "streams-", "notifier-", "photo-worker-")


def log_lines(config: StackConfig, name: str) -> list[str]:
    path = config.logs_dir / f"{name}.log"
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_every_service_process_logs_json_lines_with_the_agreed_fields(stack: Stack) -> None:
    names = [n for n in stack.records if n.startswith(OURS)]
    names += [supervisor.NAME, ops_exporter.NAME]
    assert len(names) >= 7
    for name in names:
        # A process is ready before its first line (the supervisor's is its first round).
        lines = wait_for(functools.partial(written, stack.config, name), timeout_s=30)
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{name}: not a JSON line: {line[:300]!r}")
            missing = set(FIELDS) - set(entry)
            assert not missing, f"{name}: {missing} missing in {line[:300]}"
            assert entry["level"] in ("debug", "info", "warning", "error", "critical"), line


def written(config: StackConfig, name: str) -> list[str] | None:
    return log_lines(config, name) or None


async def records_with(
    bootstrap: str, topic: str, header: str, value: bytes, timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of `topic` whose `header` is `value` (read from the beginning)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    assert partitions, f"no topic {topic}: {described}"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[ConsumerRecord[bytes, bytes]] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not found and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                found += [r for r in records if (header, value) in list(r.headers or ())]
        return found
    finally:
        await consumer.stop()


def test_the_request_id_travels_from_ingest_in_a_kafka_header_through_the_stream(
    stack: Stack,
) -> None:
    config = stack.config
    driver = f"drv-rid-{uuid.uuid4().hex[:6]}"
    token = issue_token(config.jwt_private_key, sub=driver, role=Role.DRIVER)
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    r = httpx.post(
        f"{stack.public_url()}/v1/pings",
        json={"pings": [ping_at(datetime.now(UTC), 0.0)]},
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id},
    )
    assert r.status_code == 202, r.text
    assert r.headers["X-Request-ID"] == request_id
    wait_stored(config, driver, 1)
    # Ingest put it on the record it produced.
    on_record = asyncio.run(
        records_with(config.kafka_bootstrap, topics.PINGS, "request_id", request_id.encode())
    )
    assert len(on_record) == 1

    # A record the stream cannot decode, carrying an id: the stream's line about it and its
    # dead letter carry the id too.
    poison_id = f"trace-{uuid.uuid4().hex[:12]}"

    async def produce_poison() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=config.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.PINGS,
                b"not a ping batch",
                key=driver.encode(),
                headers=[("request_id", poison_id.encode())],
            )
        finally:
            await producer.stop()

    asyncio.run(produce_poison())
    dead = asyncio.run(
        records_with(
            config.kafka_bootstrap, topics.dlq(topics.PINGS), "request_id", poison_id.encode()
        )
    )
    assert len(dead) == 1

    def stream_line() -> dict[str, object] | None:
        for name in (n for n in stack.records if n.startswith("streams-")):
            for line in log_lines(config, name):
                entry = json.loads(line)
                if entry.get("request_id") == poison_id:
                    return dict(entry)
        return None

    line = wait_for(stream_line, timeout_s=30)
    assert line["level"] == "warning" and "DLQ" in str(line["msg"])
    assert line["service"] == "streams"
