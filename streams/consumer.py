"""`pings.v1` in batches from aiokafka's `getmany`, inside the Faust worker.

Faust's agent path wraps every record in an Event, passes it through a queue and acks it:
with single-ping records that was a third of the worker's CPU. Here a batch is whatever
the consumer has fetched when the previous one is done (up to `batch_max` records):
large under a backlog, a few records at a trickle, with no wait added. Its offsets are
committed once the processor returns, that is once the batch is durable; a worker that
dies before that leaves the batch to be replayed, which changes nothing (the sink is
idempotent).

A rebalance waits for the batch in flight: partitions are revoked only after it is
written and its offsets committed. Records of a revoked partition fetched before the
rebalance may still be written (their new owner writes them too, after the partition's
lock; the second write inserts nothing); only the offsets of partitions still assigned
are committed."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import mode
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError

from runtime.logging import REQUEST_ID_KAFKA_HEADER
from streams.config import StreamsSettings
from streams.decode import Raw

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


def request_id(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    """The ingest request's id from a record's headers, if it carries one."""
    for name, value in headers or ():
        if name == REQUEST_ID_KAFKA_HEADER and isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return None


def raw_records(batch: Batch) -> list[Raw]:
    """What the processor takes, partition by partition in offset order."""
    return [
        (r.key, r.value, request_id(r.headers), tp.partition)
        for tp, records in batch.items()
        for r in records
    ]


def next_offsets(batch: Batch) -> dict[TopicPartition, int]:
    """The offsets to commit once the batch is durable: each partition's next record."""
    return {tp: records[-1].offset + 1 for tp, records in batch.items() if records}


def merge(into: Batch, more: Batch) -> int:
    """Appends `more` to `into`; returns how many records it added."""
    added = 0
    for tp, records in more.items():
        into.setdefault(tp, []).extend(records)
        added += len(records)
    return added


class _WaitForTheBatch(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds a rebalance until the batch in flight is written and committed."""

    def __init__(self, busy: asyncio.Lock) -> None:
        self._busy = busy

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if revoked:
            log.info("revoking partitions %s", sorted(tp.partition for tp in revoked))
        async with self._busy:
            pass

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))


class PingConsumer(mode.Service):
    """The worker's consumer of `pings.v1` in the group `settings.app_id`: hands each batch
    to `handle` and commits its offsets after. If `handle` raises (it retries until it
    succeeds or the worker stops), calls `on_unfinished_batch`, which must not commit."""

    def __init__(
        self,
        settings: StreamsSettings,
        handle: Callable[[list[Raw]], Awaitable[None]],
        on_unfinished_batch: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._handle = handle
        self._on_unfinished_batch = on_unfinished_batch
        self._busy = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        s = self._settings
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.app_id,
            client_id="streams",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A worker killed without goodbye holds its partitions until this runs out.
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.session_timeout_s * 1000 / 5),
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
        )
        await self._consumer.start()
        # After start: subscribed before, start would wait for the first assignment.
        self._consumer.subscribe([s.pings_topic], listener=_WaitForTheBatch(self._busy))

    async def on_stop(self) -> None:
        # The batch in flight finishes (or gives up after the processor's grace period,
        # and the worker exits without committing); then the group hears we left.
        async with self._busy:
            if self._consumer is not None:
                await self._consumer.stop()

    @mode.Service.task
    async def _consume(self) -> None:
        assert self._consumer is not None
        try:
            await self._consume_until_stopped(self._consumer)
        except ConsumerStoppedError:
            pass  # on_stop stopped it
        except Exception:
            # A batch that could not finish (the worker stopping past its grace period),
            # or a consumer that failed: the worker exits without committing, the
            # supervisor starts it again, and the partitions replay from their last commit.
            log.critical("consumer stopped; exiting without committing", exc_info=True)
            self._on_unfinished_batch()
            raise

    async def _consume_until_stopped(self, consumer: AIOKafkaConsumer) -> None:
        while not self.should_stop:
            batch = await self._next_batch(consumer)
            if not batch:
                continue
            async with self._busy:
                if self.should_stop:
                    return  # not written: replayed by the partitions' next owner
                await self._handle(raw_records(batch))
                await self._commit(consumer, next_offsets(batch))

    async def _next_batch(self, consumer: AIOKafkaConsumer) -> Batch:
        """Waits up to `batch_within_s` for the first records, then takes what is already
        fetched without waiting, up to `batch_max` records."""
        s = self._settings
        batch: Batch = await consumer.getmany(
            timeout_ms=int(s.batch_within_s * 1000), max_records=s.batch_max
        )
        count = sum(len(records) for records in batch.values())
        while 0 < count < s.batch_max:
            fetched = await consumer.getmany(timeout_ms=0, max_records=s.batch_max - count)
            added = merge(batch, fetched)
            if not added:
                break
            count += added
        return batch

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        assigned = consumer.assignment()
        owned = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not owned:
            return
        try:
            await consumer.commit(owned)
        except CommitFailedError as exc:
            # The group moved on without us (we missed its deadline): the partitions' new
            # owners replay from their last commit, and the replay changes nothing.
            log.warning("offsets not committed, the group rebalanced: %s", exc)
