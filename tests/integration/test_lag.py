"""The consumer lag function against the real broker, and `telemetry lag` on the stack
with its stream worker stopped."""

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from cli.main import main
from infra.config import StackConfig
from infra.stack import Stack
from runtime.auth import issue_token
from runtime.kafka_lag import consumer_group_lag
from schemas import topics
from schemas.auth import Role
from tests.support.driving import ping_at, post, wait_stored
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration


async def test_lag_counts_uncommitted_records_and_their_age(config: StackConfig) -> None:
    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka_bootstrap, acks="all")
    await producer.start()
    written_at = time.time()
    try:
        for i in range(10):
            await producer.send_and_wait(
                topic, b"x", partition=0, timestamp_ms=int(written_at * 1000) - 60_000 + i
            )
        for _ in range(4):
            await producer.send_and_wait(topic, b"y", partition=1)
    finally:
        await producer.stop()

    # Nothing committed yet: everything is lag, partition 0's oldest record a minute old.
    lags = {
        p.partition: p for p in await consumer_group_lag(config.kafka_bootstrap, group, [topic])
    }
    assert (lags[0].lag_messages, lags[1].lag_messages) == (10, 4)
    assert lags[0].committed_offset is None
    assert 55 < lags[0].lag_seconds < 600

    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await consumer.commit(
            {
                TopicPartition(topic, 0): OffsetAndMetadata(7, ""),
                TopicPartition(topic, 1): OffsetAndMetadata(4, ""),
            }
        )
    finally:
        await consumer.stop()
    lags = {
        p.partition: p for p in await consumer_group_lag(config.kafka_bootstrap, group, [topic])
    }
    assert (lags[0].end_offset, lags[0].committed_offset, lags[0].lag_messages) == (10, 7, 3)
    assert (lags[1].lag_messages, lags[1].lag_seconds) == (0, 0.0)
    assert lags[0].lag_seconds > 55  # the record at offset 7 is still about a minute old


def streams_lag(stack: Stack, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """What `telemetry lag --json` says of the stream's group (three looks, 0.3 s apart)."""
    capsys.readouterr()  # what was printed before (the stack's own reports) is not ours
    assert main(["lag", "--json", "--window", "3", "--interval", "0.3"]) == 0
    view: dict[str, Any] = json.loads(capsys.readouterr().out)
    return dict(view["groups"][topics.STREAMS_GROUP])


def prometheus_query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(stack.config.prometheus_url + "/api/v1/query", params={"query": expr})
    assert r.status_code == 200, r.text
    return list(r.json()["data"]["result"])


def api_lag(url: str, headers: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(url, headers=headers, timeout=15)
    assert r.status_code == 200, r.text
    return dict(r.json()["groups"][topics.STREAMS_GROUP])


def test_lag_shows_within_seconds_when_the_stream_is_stopped(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Stopped, not frozen: a worker frozen past the group's session timeout (10 s) is
    # evicted mid-batch, and what the stream does after that belongs to its own tests.
    monkeypatch.setenv("TELEMETRY_STATE_DIR", str(stack.config.state_dir))
    key = stack.config.jwt_private_key
    stack.stop("streams-1")  # the group's only member leaves it
    drivers = [f"drv-lag-{uuid.uuid4().hex[:6]}" for _ in range(6)]
    try:
        for i, driver in enumerate(drivers):
            token = issue_token(key, sub=driver, role=Role.DRIVER)
            post(stack.config, token, [ping_at(datetime.now(UTC), i)])
        stopped = wait_for(
            lambda: view if (view := streams_lag(stack, capsys))["status"] == "STOP" else None,
            timeout_s=20,
        )
        assert stopped["lag_messages"] >= 6 and stopped["members"] == 0
        assert stopped["lag_seconds"] > 0
        # The api's ops view says the same, through the public port, to the ops role only.
        ops = {"Authorization": f"Bearer {issue_token(key, sub='ops-1', role=Role.OPS)}"}
        url = f"{stack.public_url()}/v1/ops/lag"
        wait_for(lambda: True if api_lag(url, ops)["status"] == "STOP" else None, 30)
        customer = issue_token(key, sub="cust-lag", role=Role.CUSTOMER)
        r = httpx.get(url, headers={"Authorization": f"Bearer {customer}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert httpx.get(url).status_code == 401
        # And Prometheus, from the ops exporter's looks: the stopped partitions, their lag.
        stopped_series = (
            'telemetry_consumer_partition_status{group="telemetry-streams",status="STOP"} == 1'
        )
        # Six looks 5 s apart must all see lag before the exporter says STOP.
        wait_for(lambda: True if prometheus_query(stack, stopped_series) else None, 75)
        lagging = prometheus_query(
            stack, 'sum(telemetry_consumer_lag_messages{group="telemetry-streams"})'
        )
        assert float(lagging[0]["value"][1]) >= 6
    finally:
        stack.start("streams-1")
    caught_up = wait_for(
        lambda: view if (view := streams_lag(stack, capsys))["lag_messages"] == 0 else None,
        timeout_s=90,
    )
    assert caught_up["status"] == "OK" and caught_up["members"] == 1
    for driver in drivers:
        wait_stored(stack.config, driver, 1)
