"""The consumer lag function against the real broker."""

import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from infra.config import StackConfig
from runtime.kafka_lag import consumer_group_lag

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
