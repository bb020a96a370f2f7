"""A compacted Kafka topic read whole into memory, then followed: a small table every
process holds (the device registry), without a database of its own. Keys are strings; a
record without a value (a tombstone) deletes its key. No consumer group, no commits: each
reader reads the topic from its beginning."""

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from runtime.clock import Clock

log = logging.getLogger(__name__)
V = TypeVar("V")
# A topic whose partitions are not assigned by then is missing (or the broker is away).
ASSIGNMENT_TIMEOUT_S = 10.0


def table_consumer(bootstrap: str, topic: str, client_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=client_id,
    )


class KafkaTable(Generic[V]):
    """The table of `topic`: `rows` once `loaded` (every partition read to the end it had
    when the reader started), kept current after. A record `decode` raises on is skipped
    and counted by `on_bad` (a bad row never stops the table; its key keeps what it had).
    `run_forever` reconnects after a broker failure and reads the table again whole."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        decode: Callable[[bytes], V],
        clock: Clock,
        *,
        client_id: str,
        on_bad: Callable[[], None] = lambda: None,
        retry_s: float = 1.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._decode = decode
        self._clock = clock
        self._client_id = client_id
        self._on_bad = on_bad
        self._retry_s = retry_s
        self.rows: dict[str, V] = {}
        self.loaded = asyncio.Event()

    async def run_forever(self) -> None:
        while True:
            try:
                await self._run(follow=True)
            except (KafkaError, OSError) as exc:
                log.warning("table %s: reader failed, reading it again: %r", self._topic, exc)
            except Exception:
                log.exception("table %s: reader failed, reading it again", self._topic)
            await self._clock.sleep(self._retry_s)

    async def read_once(self) -> dict[str, V]:
        """The table as the topic holds it now (for tooling)."""
        await self._run(follow=False)
        return self.rows

    async def _run(self, follow: bool) -> None:
        # No group: the consumer takes every partition of the topic, and with nothing
        # committed it starts at the beginning.
        consumer = table_consumer(self._bootstrap, self._topic, self._client_id)
        await consumer.start()
        try:
            rows: dict[str, V] = {}
            # Read whole into a fresh dict, then swapped in: a reader that starts again
            # (the broker came back) never shows a half-read table.
            deadline = self._clock.monotonic() + ASSIGNMENT_TIMEOUT_S
            while not consumer.assignment():
                if self._clock.monotonic() > deadline:
                    raise KafkaError(f"topic {self._topic}: no partition assigned")
                self._apply(rows, await consumer.getmany(timeout_ms=200))
            ends = await consumer.end_offsets(list(consumer.assignment()))
            while not await self._at(consumer, ends):
                self._apply(rows, await consumer.getmany(timeout_ms=500))
            self.rows = rows
            self.loaded.set()
            log.info("table %s: %d rows", self._topic, len(rows))
            while follow:
                self._apply(self.rows, await consumer.getmany(timeout_ms=1000))
        finally:
            await consumer.stop()

    @staticmethod
    async def _at(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return False
        return True

    def _apply(self, rows: dict[str, V], batch: dict[TopicPartition, list]) -> None:  # type: ignore[type-arg]
        for records in batch.values():
            for record in records:
                try:
                    key = record.key.decode()
                    if record.value is None:
                        rows.pop(key, None)
                    else:
                        rows[key] = self._decode(record.value)
                except Exception:
                    log.exception("table %s: record %d skipped", self._topic, record.offset)
                    self._on_bad()
