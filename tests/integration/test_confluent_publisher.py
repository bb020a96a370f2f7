"""The confluent-kafka publisher (ingest/confluent_publisher.py) against the real broker:
an acked record is in `pings.v1` on the partition aiokafka would have chosen, and a broker
that is not there gives BrokerUnavailable within the deadline."""

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.config import StackConfig
from infra.procs import free_port
from ingest.confluent_publisher import ConfluentPublisher, producer_config
from ingest.errors import BrokerUnavailable
from ingest.metrics import IngestMetrics
from runtime.kafka import key_partition
from schemas import topics

pytestmark = pytest.mark.integration


def publisher(bootstrap: str, timeout_s: float = 1.5) -> ConfluentPublisher:
    config = producer_config(bootstrap, client_id="test", timeout_s=timeout_s)
    return ConfluentPublisher(config, topics.PINGS, IngestMetrics(), timeout_s=timeout_s)


async def test_an_acked_record_is_on_the_partition_of_its_key(config: StackConfig) -> None:
    keys = [f"drv-{uuid.uuid4().hex[:8]}".encode() for _ in range(20)]
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    pub = publisher(config.kafka_bootstrap)
    try:
        partitions = [
            TopicPartition(topics.PINGS, p) for p in range(topics.DRIVER_TOPIC_PARTITIONS)
        ]
        consumer.assign(partitions)
        for tp, offset in (await consumer.end_offsets(partitions)).items():
            consumer.seek(tp, offset)
        await pub.start()
        assert await pub.ready()
        await asyncio.gather(*(pub.publish(k, b"value-" + k, (("h", b"1"),)) for k in keys))
        seen: dict[bytes, int] = {}
        async with asyncio.timeout(20):
            while len(seen) < len(keys):
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    for r in records:
                        if r.key in keys:
                            assert r.value == b"value-" + r.key and r.headers == (("h", b"1"),)
                            seen[r.key] = tp.partition
    finally:
        await pub.close()
        await consumer.stop()
    # murmur2, as aiokafka and the Java clients: a driver's records stay on one partition
    # whichever client wrote them.
    assert seen == {k: key_partition(k, topics.DRIVER_TOPIC_PARTITIONS) for k in keys}


async def test_no_broker_gives_broker_unavailable_within_the_deadline() -> None:
    pub = publisher(f"127.0.0.1:{free_port()}", timeout_s=1.0)
    await pub.start()
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await pub.publish(b"drv-1", b"{}")
        # The deadline, plus the loop's and the polling thread's turn.
        assert time.monotonic() - started < 1.0 + 0.5
        assert not await pub.ready()
    finally:
        await pub.close()
