"""The stream's consumer (streams/consumer.py) on the real broker: a rebalance waits for
the batch in flight, and the partitions change hands at its commit."""

import asyncio
import logging
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.config import StackConfig
from runtime.kafka_lag import consumer_group_lag
from streams.config import StreamsSettings
from streams.consumer import PingConsumer
from streams.decode import Raw
from streams.pipeline import Stopping

pytestmark = pytest.mark.integration

PARTITIONS = 4


async def produce(bootstrap: str, topic: str, round_: int, per_partition: int) -> set[bytes]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    sent = set()
    try:
        for p in range(PARTITIONS):
            for i in range(per_partition):
                value = f"{round_}-{p}-{i}".encode()
                await producer.send_and_wait(topic, value, key=b"k", partition=p)
                sent.add(value)
    finally:
        await producer.stop()
    return sent


class Revoking(logging.Handler):
    """Sets `seen` when a consumer logs that it is revoking its partitions."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("revoking"):
            self.seen.set()


async def test_a_rebalance_waits_for_the_batch_in_flight_and_hands_over_at_its_commit(
    config: StackConfig,
) -> None:
    revoking = Revoking()
    consumer_log = logging.getLogger("streams.consumer")
    consumer_log.addHandler(revoking)
    consumer_log.setLevel(logging.INFO)
    topic, group = f"consumer-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        sent = await produce(config.kafka_bootstrap, topic, 0, per_partition=10)
        settings = StreamsSettings(
            kafka_bootstrap=config.kafka_bootstrap,
            pings_topic=topic,
            app_id=group,
            session_timeout_s=6.0,
            rebalance_timeout_s=30.0,
        )
        seen: dict[str, list[bytes]] = {"first": [], "second": []}
        holding, release, all_handled = asyncio.Event(), asyncio.Event(), asyncio.Event()
        expected = 2 * len(sent)  # this round and the next

        def count(member: str, records: list[Raw]) -> None:
            seen[member] += [raw[1] for raw in records]
            if len(seen["first"]) + len(seen["second"]) >= expected:
                all_handled.set()

        async def first(records: list[Raw]) -> None:
            count("first", records)
            holding.set()
            await release.wait()  # a write that takes its time

        async def second(records: list[Raw]) -> None:
            count("second", records)

        def unfinished() -> None:
            pytest.fail("a batch was left unfinished")

        a = PingConsumer(settings, first, unfinished)
        b = PingConsumer(settings, second, unfinished)
        await a.start()
        try:
            await asyncio.wait_for(holding.wait(), timeout=60)
            await b.start()
            # The second member asks to join: the first one's revocation waits for its
            # batch, and the group for the first one. Nothing reaches the second meanwhile.
            await asyncio.wait_for(revoking.seen.wait(), timeout=60)
            assert seen["second"] == []
            release.set()
            sent |= await produce(config.kafka_bootstrap, topic, 1, per_partition=10)
            await asyncio.wait_for(all_handled.wait(), timeout=60)
        finally:
            release.set()
            await b.stop()
            await a.stop()
    finally:
        await admin.close()
        consumer_log.removeHandler(revoking)

    handled = seen["first"] + seen["second"]
    assert sorted(handled) == sorted(sent)  # each record once: the handover was at the commit
    assert seen["second"], "the second member never got partitions"


async def test_a_batch_that_cannot_finish_ends_the_worker_without_a_commit(
    config: StackConfig,
) -> None:
    topic, group = f"consumer-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    await produce(config.kafka_bootstrap, topic, 0, per_partition=3)
    settings = StreamsSettings(
        kafka_bootstrap=config.kafka_bootstrap, pings_topic=topic, app_id=group
    )
    exited = asyncio.Event()

    async def fails(records: list[Raw]) -> None:
        raise Stopping("the batch did not finish within the shutdown grace period")

    consumer = PingConsumer(settings, fails, exited.set)
    await consumer.start()
    try:
        await asyncio.wait_for(exited.wait(), timeout=60)
    finally:
        await consumer.stop()
    lags = await consumer_group_lag(config.kafka_bootstrap, group, [topic])
    assert [lag.committed_offset for lag in lags] == [None] * PARTITIONS
