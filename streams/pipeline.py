"""The stream's batch step: decode, write (isolating poison), dead-letter, publish
positions. It returns only when all of that is durable, so the consumer around it
(streams/consumer.py) commits the batch's offsets only after everything the batch produced
is stored or acked by Kafka."""

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from runtime.clock import Clock, SystemClock
from runtime.kafka import error_header
from runtime.logging import REQUEST_ID_KAFKA_HEADER
from schemas.positions import PositionUpdate
from streams.clean import FUTURE, LATE, TELEPORT, CleanBatch, CleanPing
from streams.decode import Incoming, Poison, Raw, split_batch
from streams.errors import BadData, SendFailed, SinkUnavailable
from streams.metrics import StreamsMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class Sink(Protocol):
    """Where a batch is stored (streams/sink.py: PostgreSQL). `write` stores it in one transaction,
    idempotently (a replay changes nothing), and raises SinkUnavailable (transient) or BadData
    (the rows), having written nothing. For one event loop's tasks."""

    async def write(self, batch: list[Incoming]) -> CleanBatch:
        """Stores the records in one transaction; SinkUnavailable or BadData otherwise."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record the batch step sends after its write: a moved position or a dead letter."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class Sender(Protocol):
    """Where the batch step's records go (Kafka). `send_all` returns once every record is acked,
    SendFailed otherwise (some may have been sent: consumers are idempotent)."""

    async def send_all(self, messages: list[Outgoing]) -> None:
        """Returns once Kafka acked every message; SendFailed otherwise."""


class Stopping(Exception):
    """The worker is stopping and the batch is not done: it must not be acknowledged."""


class _KeepsFailing(Exception):
    """A step raised unexpected errors so many times in a row that its input is the cause."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: after an outage, workers do not retry in step."""

    initial_s: float = 0.1
    max_s: float = 5.0

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_s, self.initial_s * 2**attempt))


@dataclass
class Health:
    """What /healthz tells: a batch waiting unwritten past a threshold is a stall."""

    pending_since: float | None = None
    last_write: float | None = None

    def stalled_for(self, now: float) -> float:
        return 0.0 if self.pending_since is None else now - self.pending_since


@dataclass
class _Written:
    moved: dict[str, CleanPing] = field(default_factory=dict)
    pings: list[CleanPing] = field(default_factory=list)
    dead: list[Poison] = field(default_factory=list)

    def merge(self, other: "_Written") -> "_Written":
        moved = dict(self.moved)
        for driver, ping in other.moved.items():
            if driver not in moved or ping.ping.ts >= moved[driver].ping.ts:
                moved[driver] = ping
        return _Written(moved, self.pings + other.pings, self.dead + other.dead)


def flushes(incoming: list[Incoming], max_pings: int) -> list[list[Incoming]]:
    """The batch as transactions of at most `max_pings` pings (a larger record alone), each
    partition's records in their order. A partition is split only when it alone is larger;
    otherwise whole partitions share a flush, so flushes lock partitions no other flush
    does, and run side by side. Parts of one partition are spread out, not adjacent: they
    share a lock and would wait on each other."""
    groups: dict[int, list[Incoming]] = {}
    for i in incoming:
        groups.setdefault(-1 if i.partition is None else i.partition, []).append(i)
    whole: list[list[Incoming]] = []
    rounds: list[list[list[Incoming]]] = [whole]
    pings = 0
    for records in groups.values():
        parts = by_pings(records, max_pings)
        if len(parts) > 1:
            rounds.append(parts)
            continue
        size = sum(len(i.record.pings) for i in records)
        if not whole or pings + size > max_pings:
            whole.append([])
            pings = 0
        whole[-1].extend(records)
        pings += size
    longest = max(len(r) for r in rounds)
    return [r[n] for n in range(longest) for r in rounds if n < len(r)]


def by_pings(incoming: list[Incoming], max_pings: int) -> list[list[Incoming]]:
    """The records in order, in runs of at most `max_pings` pings (a larger record alone)."""
    runs: list[list[Incoming]] = []
    current: list[Incoming] = []
    pings = 0
    for i in incoming:
        n = len(i.record.pings)
        if current and pings + n > max_pings:
            runs.append(current)
            current, pings = [], 0
        current.append(i)
        pings += n
    if current:
        runs.append(current)
    return runs


def position_update(moved: CleanPing) -> PositionUpdate:
    p = moved.ping
    return PositionUpdate(
        driver_id=moved.driver_id, ping_id=p.ping_id, ts=p.ts, lat=p.lat, lon=p.lon,
        speed_mps=p.speed_mps, heading_deg=p.heading_deg, job_id=p.job_id,
    )  # fmt: skip


class PingBatchProcessor:
    """The batch step: decode, store through the Sink (retried with backoff, poison isolated by
    bisection and dead-lettered), then send moved positions and dead letters; only then may the
    batch's offsets be committed. Raises Stopping when the worker stops before the batch is done.
    For one event loop's tasks."""

    def __init__(
        self,
        sink: Sink,
        sender: Sender,
        *,
        positions_topic: str,
        dlq_topic: str,
        metrics: StreamsMetrics,
        backoff: Backoff,
        shutdown_grace_s: float,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        unexpected_retries: int = 3,
        max_pings: int = 5_000,
        concurrent_flushes: int = 1,
    ) -> None:
        self._sink = sink
        self._sender = sender
        self._positions_topic = positions_topic
        self._dlq_topic = dlq_topic
        self._metrics = metrics
        self._backoff = backoff
        self._grace_s = shutdown_grace_s
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        # Unexpected write errors in a row before the batch is searched for a poison record.
        self._unexpected_retries = unexpected_retries
        # Pings per sink transaction: the consumer's batches are cut to this.
        self._max_pings = max_pings
        # A batch's flushes run this many at a time, each in its own transaction: while
        # one waits on the database, the next is cleaned and copied.
        self._flushing = asyncio.Semaphore(concurrent_flushes)
        self._stopping = asyncio.Event()
        self.health = Health()

    def request_stop(self) -> None:
        """From the worker's signal handler: finish within the grace period or give up."""
        self._stopping.set()

    async def process(self, messages: Sequence[Raw]) -> None:
        """Stores or dead-letters every record and publishes the moved positions; returns
        only when all of it is durable. Raises Stopping if the worker stops first."""
        self.health.pending_since = started = self._clock.monotonic()
        incoming, poison = split_batch(messages)
        for bad in poison:
            log.warning(
                "undecodable record, to the DLQ: %.300s",
                bad.error,
                extra={"request_id": bad.request_id},
            )
        written = _Written()
        for flushed in await asyncio.gather(
            *(self._write(flush) for flush in flushes(incoming, self._max_pings))
        ):
            written = written.merge(flushed)
        stored_at = self._clock.now()
        dead = poison + written.dead
        outgoing = [self._dead_letter(p) for p in dead] + [
            Outgoing(
                self._positions_topic,
                moved.driver_id.encode(),
                position_update(moved).model_dump_json().encode(),
            )
            for moved in written.moved.values()
        ]
        # After the commit: the notifier only ever hears of positions that are stored.
        if outgoing:
            await self._retry("send", lambda: self._sender.send_all(outgoing))
        self._count(len(incoming), written, dead, stored_at)
        self._metrics.flush_latency.observe(self._clock.monotonic() - started)
        self.health.pending_since = None
        self.health.last_write = self._clock.monotonic()

    async def _write(self, incoming: list[Incoming]) -> _Written:
        async with self._flushing:
            return await self._write_retrying(incoming)

    async def _write_retrying(self, incoming: list[Incoming]) -> _Written:
        try:
            return await self._retry(
                "write", lambda: self._write_isolating(incoming), self._unexpected_retries
            )
        except _KeepsFailing:
            # The same batch raised something unforeseen write after write: a record in it
            # makes us raise (a bug meeting one input). Find it as a refused one is found,
            # and dead-letter it; everything else is stored (the sink is idempotent).
            return await self._retry("write", lambda: self._isolate_unexpected(incoming))

    async def _write_isolating(
        self, incoming: list[Incoming], *, isolate_unexpected: bool = False
    ) -> _Written:
        """Writes the records; when the database refuses their data (or, with
        `isolate_unexpected`, when the write raises anything not transient), splits the
        batch until the offending record is alone, and dead-letters it with the error."""
        try:
            batch = await self._sink.write(incoming)
        except (SinkUnavailable, Stopping):
            raise
        except Exception as exc:
            if not (isinstance(exc, BadData) or isolate_unexpected):
                raise
            if len(incoming) == 1:
                alone = incoming[0]
                if isinstance(exc, BadData):
                    error, why = str(exc), "refused by the database"
                else:
                    error, why = f"{type(exc).__name__}: {exc}", "failed unexpectedly alone"
                log.warning(
                    "record %s, to the DLQ: %s", why, error, extra={"request_id": alone.request_id}
                )
                return _Written(dead=[Poison(alone.key, alone.value, error, alone.request_id)])
            half = len(incoming) // 2
            first = await self._write_isolating(
                incoming[:half], isolate_unexpected=isolate_unexpected
            )
            rest = await self._write_isolating(
                incoming[half:], isolate_unexpected=isolate_unexpected
            )
            return first.merge(rest)
        return _Written(dict(batch.moved), list(batch.pings))

    async def _isolate_unexpected(self, incoming: list[Incoming]) -> _Written:
        written = await self._write_isolating(incoming, isolate_unexpected=True)
        if len(incoming) > 1 and len(written.dead) == len(incoming):
            # Every record fails alone as well: the cause is not in the records (an outage
            # of a kind we do not know). Nothing is dead-lettered; the batch is retried.
            raise RuntimeError("every record of the batch fails: not one record's fault")
        return written

    def _dead_letter(self, poison: Poison) -> Outgoing:
        headers: tuple[tuple[str, bytes], ...] = (error_header(poison.error),)
        if poison.request_id is not None:
            headers += ((REQUEST_ID_KAFKA_HEADER, poison.request_id.encode()),)
        return Outgoing(self._dlq_topic, poison.key, poison.value, headers)

    async def _retry(
        self, what: str, operation: Callable[[], Awaitable[T]], unexpected_limit: int = 0
    ) -> T:
        """Runs `operation` until it succeeds. Transient failures and unexpected errors
        alike are retried with jittered backoff: a batch is never given up (acked) unwritten.
        With `unexpected_limit`, that many unexpected errors in a row raise _KeepsFailing.
        When the worker stops, raises Stopping after the grace period."""
        attempt = 0
        unexpected = 0
        while True:
            try:
                return await self._unless_stopping(operation())
            except Stopping:
                raise
            except (SinkUnavailable, SendFailed) as exc:
                self._metrics.batch_failures.labels(what, "transient").inc()
                log.warning("%s failed, retrying: %s", what, exc)
                unexpected = 0
            except Exception as exc:
                self._metrics.batch_failures.labels(what, "unexpected").inc()
                log.exception("%s failed unexpectedly, retrying (the batch stays unacked)", what)
                unexpected += 1
                if unexpected == unexpected_limit:
                    raise _KeepsFailing(what) from exc
            if self._stopping.is_set():
                raise Stopping(f"stopping while the batch's {what} is not done")
            delay = self._backoff.delay_s(attempt, self._rng)
            attempt += 1
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                continue
            raise Stopping(f"stopping while the batch's {what} is not done")

    async def _unless_stopping(self, work: Awaitable[T]) -> T:
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                # Asked to stop mid-write: a healthy write finishes within the grace period.
                await asyncio.wait({task}, timeout=self._grace_s)
            if not task.done():
                task.cancel()
                raise Stopping("the batch did not finish within the shutdown grace period")
            return task.result()
        finally:
            stop.cancel()

    def _count(
        self, records: int, written: _Written, dead: list[Poison], stored_at: datetime
    ) -> None:
        # Freshness per record (a driver's request), from its newest fix: per ping, the
        # histograms cost more than the rest of a ping's accounting.
        newest: dict[tuple[str, datetime], datetime] = {}
        flagged: collections.Counter[str] = collections.Counter()
        for clean in written.pings:
            key = (clean.driver_id, clean.received_at)
            if key not in newest or clean.ping.ts > newest[key]:
                newest[key] = clean.ping.ts
            if clean.flags:
                flagged.update(clean.flags)
        for (_, received_at), fix in newest.items():
            self._metrics.fix_to_stored.observe(max((stored_at - fix).total_seconds(), 0.0))
            receipt_age = (stored_at - received_at).total_seconds()
            self._metrics.received_to_stored.observe(max(receipt_age, 0.0))
        self._metrics.records.inc(records)
        self._metrics.pings.inc(len(written.pings))
        self._metrics.poison.inc(len(dead))
        for flag in (FUTURE, LATE, TELEPORT):
            self._metrics.flagged.labels(flag).inc(flagged[flag])
