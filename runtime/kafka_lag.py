"""Consumer lag per group and partition: end offset, committed offset, lag in messages and
in seconds (the age of the oldest record not yet committed). Reused by ops and benchmarks."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError

from runtime.clock import Clock, SystemClock


@dataclass(frozen=True)
class PartitionLag:
    """One partition's lag for one consumer group: end and committed offsets, lag in messages and in
    seconds."""

    group: str
    topic: str
    partition: int
    end_offset: int
    committed_offset: int | None  # None: the group never committed here
    lag_messages: int
    lag_seconds: float


def lag_messages(end_offset: int, committed: int | None, beginning: int) -> int:
    """Records not yet committed; from the log's start when nothing was committed."""
    start = committed if committed is not None else beginning
    return max(0, end_offset - start)


async def consumer_group_lag(
    bootstrap: str,
    group: str,
    topics: list[str],
    *,
    timeout_s: float = 5.0,
    clock: Clock | None = None,
) -> list[PartitionLag]:
    """Lag of `group` on every partition of `topics` (in seconds: by `clock`'s wall time)."""
    async with _clients(bootstrap, timeout_s) as (admin, consumer):
        return await _lag(admin, consumer, group, topics, timeout_s, clock or SystemClock())


@contextlib.asynccontextmanager
async def _clients(
    bootstrap: str, timeout_s: float
) -> AsyncIterator[tuple[AIOKafkaAdminClient, AIOKafkaConsumer]]:
    """An admin client and a group-less consumer, both started, both closed after."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout_s * 1000),
    )
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        try:
            yield admin, consumer
        finally:
            await asyncio.wait_for(consumer.stop(), timeout_s)
    finally:
        await asyncio.wait_for(admin.close(), timeout_s)


async def _lag(
    admin: AIOKafkaAdminClient,
    consumer: AIOKafkaConsumer,
    group: str,
    topics: list[str],
    timeout_s: float,
    clock: Clock,
) -> list[PartitionLag]:
    described = await asyncio.wait_for(admin.describe_topics(topics), timeout_s)
    partitions: list[TopicPartition] = []
    for topic in described:
        if topic["error_code"] != 0:
            raise LookupError(f"topic {topic['topic']!r}: Kafka error {topic['error_code']}")
        ids = sorted(p["partition"] for p in topic["partitions"])
        partitions += [TopicPartition(topic["topic"], p) for p in ids]
    committed_raw = await _committed_offsets(admin, group, timeout_s, clock)
    committed = {tp: meta.offset for tp, meta in committed_raw.items() if meta.offset >= 0}
    ends = await asyncio.wait_for(consumer.end_offsets(partitions), timeout_s)
    beginnings = await asyncio.wait_for(consumer.beginning_offsets(partitions), timeout_s)
    lagging = {
        tp: committed.get(tp, beginnings[tp])
        for tp in partitions
        if lag_messages(ends[tp], committed.get(tp), beginnings[tp]) > 0
    }
    oldest_ms = await _oldest_timestamps(consumer, lagging, timeout_s, clock)
    now = clock.wall()
    return [
        PartitionLag(
            group=group,
            topic=tp.topic,
            partition=tp.partition,
            end_offset=ends[tp],
            committed_offset=committed.get(tp),
            lag_messages=lag_messages(ends[tp], committed.get(tp), beginnings[tp]),
            lag_seconds=max(0.0, now - oldest_ms[tp] / 1000.0) if tp in oldest_ms else 0.0,
        )
        for tp in partitions
    ]


async def _committed_offsets(
    admin: AIOKafkaAdminClient, group: str, timeout_s: float, clock: Clock
) -> dict[TopicPartition, Any]:
    # A fresh cluster creates __consumer_offsets on the first coordinator lookup and says
    # "coordinator not available" until it is ready: retry that within the deadline.
    deadline = clock.monotonic() + timeout_s
    while True:
        try:
            result: dict[TopicPartition, Any] = await asyncio.wait_for(
                admin.list_consumer_group_offsets(group), timeout_s
            )
            return result
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
            if clock.monotonic() > deadline:
                raise
            await clock.sleep(0.2)


async def _oldest_timestamps(
    consumer: AIOKafkaConsumer,
    positions: dict[TopicPartition, int],
    timeout_s: float,
    clock: Clock,
) -> dict[TopicPartition, int]:
    """The timestamp (ms) of the record at each partition's position."""
    if not positions:
        return {}
    consumer.assign(list(positions))
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    found: dict[TopicPartition, int] = {}
    deadline = clock.monotonic() + timeout_s
    while len(found) < len(positions) and clock.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=200, max_records=len(positions) * 4)
        for tp, records in batch.items():
            if tp not in found and records:
                found[tp] = records[0].timestamp
                consumer.pause(tp)
    return found


async def group_members(bootstrap: str, group: str, *, timeout_s: float = 5.0) -> int:
    """How many consumers the group has now (0: nobody consumes; an unknown group too)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        [response] = await asyncio.wait_for(admin.describe_consumer_groups([group]), timeout_s)
    finally:
        await asyncio.wait_for(admin.close(), timeout_s)
    # DescribeGroups' answer: (error_code, group_id, state, protocol_type, protocol, members)
    return sum(len(described[5]) for described in response.groups if described[0] == 0)


async def topic_end_offsets(
    bootstrap: str, topics: list[str], *, timeout_s: float = 5.0
) -> dict[str, int]:
    """How many records each topic has ever had (its partitions' end offsets summed); a
    topic not created yet has had none."""
    async with _clients(bootstrap, timeout_s) as (admin, consumer):
        described = await asyncio.wait_for(admin.describe_topics(topics), timeout_s)
        partitions = [
            TopicPartition(topic["topic"], p["partition"])
            for topic in described
            if topic["error_code"] == 0
            for p in topic["partitions"]
        ]
        ends = await asyncio.wait_for(consumer.end_offsets(partitions), timeout_s)
    totals = dict.fromkeys(topics, 0)
    for tp, end in ends.items():
        totals[tp.topic] += end
    return totals
