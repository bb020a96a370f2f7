"""The live reader: every notifier process reads every partition of `job-events.v1` and
`positions.v1` itself (no consumer group, no commits, from the end at start), so any
process can serve any job's subscribers. The cost grows with the processes: each one
fetches and filters every record (positions by their key before decoding, so only the
drivers of watched jobs cost a decode). What a process missed before it started, or while
it lagged, a resume takes from the retained log or PostgreSQL. When the reader restarts
(the broker went away), it goes on from where it was, not from the end: a final
`job.completed` produced meanwhile still reaches the job's subscribers."""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from notifier.event_log import EventLog
from notifier.frames import event_frame
from notifier.hub import Hub
from notifier.metrics import NotifierMetrics
from runtime.clock import Clock, SystemClock
from schemas.jobs import JobEvent
from schemas.positions import PositionUpdate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderSettings:
    """Where the live reader reads: the bootstrap servers and the two topics."""

    bootstrap: str
    job_events_topic: str
    positions_topic: str
    retry_s: float = 1.0
    max_records: int = 2000
    stop_timeout_s: float = 5.0


ConsumerFactory = Callable[[ReaderSettings], AIOKafkaConsumer]


def live_consumer(s: ReaderSettings) -> AIOKafkaConsumer:
    # No group: the consumer takes every partition of both topics, and with nothing
    # committed it starts at their end.
    return AIOKafkaConsumer(
        s.job_events_topic,
        s.positions_topic,
        bootstrap_servers=s.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        client_id="notifier-live",
    )


class LiveReader:
    """Reads `job-events.v1` and `positions.v1` from the end, every partition, no consumer group,
    and hands each record to the hub (job events are appended to the Redis log first).
    `run_forever` reconnects after a broker failure; one per process."""

    def __init__(
        self,
        settings: ReaderSettings,
        hub: Hub,
        event_log: EventLog,
        metrics: NotifierMetrics,
        consumer_factory: ConsumerFactory = live_consumer,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._settings = settings
        self._hub = hub
        self._log = event_log
        self._metrics = metrics
        self._consumer_factory = consumer_factory
        self.assigned = False  # every partition assigned: the process hears live events
        # The offset to read next in each partition, kept across restarts of the consumer.
        self._next: dict[TopicPartition, int] = {}

    async def run_forever(self) -> None:
        while True:  # the broker may be down at start, or go away
            try:
                await self._run()
            except (KafkaError, OSError) as exc:
                log.warning("live reader failed, restarting: %r", exc)
            except Exception:
                # A bug must not end live delivery for the process's lifetime.
                log.exception("live reader failed unexpectedly, restarting")
            self.assigned = False
            await self._clock.sleep(self._settings.retry_s)

    async def _run(self) -> None:
        s = self._settings
        consumer = self._consumer_factory(s)
        await consumer.start()
        try:
            resumed = False
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=s.max_records)
                assignment = consumer.assignment()
                if not assignment:
                    continue
                if not resumed:
                    resumed = True
                    where = {tp: offset for tp, offset in self._next.items() if tp in assignment}
                    if where:
                        for tp, offset in where.items():
                            consumer.seek(tp, offset)
                        log.info("live reader resumes %d partitions where it was", len(where))
                        continue  # what was fetched from the end comes again, in order
                if not self.assigned:
                    self.assigned = True
                    log.info("live reader on %d partitions", len(assignment))
                for tp, records in batch.items():
                    if tp.topic == s.job_events_topic:
                        await self._job_events(records)
                    else:
                        self._positions(records)
                for tp in assignment:
                    self._next[tp] = await consumer.position(tp)
        finally:
            # aiokafka's stop can hang with the broker gone (aiokafka issue 1101).
            with contextlib.suppress(TimeoutError, KafkaError):
                async with asyncio.timeout(s.stop_timeout_s):
                    await consumer.stop()

    async def _job_events(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        topic = self._settings.job_events_topic
        self._metrics.consumed.labels(topic).inc(len(records))
        consumed: list[tuple[JobEvent, bytes]] = []
        for record in records:
            try:
                event = JobEvent.model_validate_json(record.value or b"")
            except ValidationError:
                self._metrics.undecodable.labels(topic).inc()
                continue
            driver = event.data.get("driver_id")
            try:
                self._hub.job_event(event_frame(event), driver if isinstance(driver, str) else None)
            except Exception:
                self._skip(record, topic)
                continue
            consumed.append((event, record.value or b""))
        # After the fan-out: the log serves later resumes, the live subscribers come first.
        await self._log.append(consumed)

    def _positions(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        topic = self._settings.positions_topic
        self._metrics.consumed.labels(topic).inc(len(records))
        for record in records:
            if record.key is None:
                continue
            # The key is the driver id: most records are of drivers nobody here watches.
            driver = record.key.decode(errors="replace")
            self._hub.remember(driver, record.value or b"")
            if not self._hub.watches_driver(driver):
                continue
            try:
                update = PositionUpdate.model_validate_json(record.value or b"")
            except ValidationError:
                self._metrics.undecodable.labels(topic).inc()
                continue
            try:
                self._hub.position(update)
            except Exception:
                self._skip(record, topic)

    def _skip(self, record: ConsumerRecord[bytes, bytes], topic: str) -> None:
        """One record that makes us raise is logged, counted and skipped: the reader goes
        on. It stays in its topic (nothing here commits, so there is nothing to dead-letter
        past); a subscriber gets what it missed on the job's next event or a resume."""
        self._metrics.poison.labels(topic).inc()
        log.exception("record %s-%d@%d failed, skipped", topic, record.partition, record.offset)
