"""The stream's batch step with in-memory fakes: nothing is acknowledged unwritten, poison
is isolated, dead letters and positions are acked before the batch returns."""

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from schemas.pings import Ping, PingBatchRecord
from streams.clean import CleanBatch, clean
from streams.decode import Incoming
from streams.errors import BadData, SendFailed, SinkUnavailable
from streams.metrics import StreamsMetrics
from streams.pipeline import Backoff, Outgoing, PingBatchProcessor, Stopping

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
FAST = Backoff(initial_s=0.001, max_s=0.005)


def message(driver: str, seconds: float = 0.0) -> tuple[bytes, bytes]:
    ping = Ping(ping_id=uuid.uuid4(), ts=NOW + timedelta(seconds=seconds), lat=12.9, lon=77.5)
    record = PingBatchRecord(driver_id=driver, received_at=NOW, pings=[ping])
    return driver.encode(), record.model_dump_json().encode()


class FakeSink:
    """Stores records; fails as told: `fail_times` transient/unexpected errors first, and
    BadData for any batch holding a driver in `refuse`."""

    def __init__(
        self, errors: list[Exception] | None = None, refuse: frozenset[str] = frozenset()
    ) -> None:
        self.errors = list(errors or [])
        self.refuse = refuse
        self.stored: list[str] = []
        self.calls = 0
        self.retried = asyncio.Event()

    async def write(self, batch: list[Incoming]) -> CleanBatch:
        records = [i.record for i in batch]
        self.calls += 1
        if self.calls >= 3:
            self.retried.set()
        if self.errors:
            raise self.errors.pop(0)
        if any(r.driver_id in self.refuse for r in records):
            raise BadData("value out of range")
        self.stored.extend(r.driver_id for r in records)
        return clean(records, {}, timedelta(seconds=30))


class FakeSender:
    def __init__(self, failures: int = 0, log: list[str] | None = None) -> None:
        self.failures = failures
        self.acked: list[Outgoing] = []
        self.log = log if log is not None else []

    async def send_all(self, messages: list[Outgoing]) -> None:
        self.log.append("send")
        if self.failures:
            self.failures -= 1
            raise SendFailed("broker down")
        self.acked.extend(messages)


def processor(sink: FakeSink, sender: FakeSender, grace_s: float = 0.05) -> PingBatchProcessor:
    return PingBatchProcessor(
        sink,
        sender,
        positions_topic="positions.v1",
        dlq_topic="pings.v1.dlq",
        metrics=StreamsMetrics(),
        backoff=FAST,
        shutdown_grace_s=grace_s,
        rng=random.Random(1),
    )


async def test_an_unexpected_error_is_retried_never_skipped() -> None:
    sink = FakeSink(errors=[RuntimeError("a bug"), SinkUnavailable("db down")])
    sender = FakeSender()
    await processor(sink, sender).process([message("a"), message("b")])
    assert sink.calls == 3
    assert sink.stored == ["a", "b"]
    assert {m.key for m in sender.acked if m.topic == "positions.v1"} == {b"a", b"b"}


def dead_letters(sender: FakeSender) -> list[Outgoing]:
    """What the processor sent to the pings' dead-letter topic."""
    return [m for m in sender.acked if m.topic == "pings.v1.dlq"]


async def test_a_failing_dead_letter_send_is_retried_and_the_valid_records_are_stored() -> None:
    sink = FakeSink()
    sender = FakeSender(failures=3)
    await processor(sink, sender).process([message("a"), (b"x", b"\xff not json")])
    assert sink.stored == ["a"]
    dead = dead_letters(sender)
    assert [(m.key, m.value) for m in dead] == [(b"x", b"\xff not json")]
    assert dict(dead[0].headers)["error"]
    assert len(sender.log) == 4


async def test_sends_happen_after_the_write() -> None:
    order: list[str] = []

    class Recording(FakeSink):
        async def write(self, batch: list[Incoming]) -> CleanBatch:
            order.append("write")
            return await super().write(batch)

    await processor(Recording(), FakeSender(log=order)).process([message("a"), (None, b"junk")])
    assert order == ["write", "send"]


async def test_a_record_the_database_refuses_is_isolated_and_the_rest_stored() -> None:
    sink = FakeSink(refuse=frozenset({"bad"}))
    sender = FakeSender()
    batch = [message(f"d{i}") for i in range(7)]
    batch.insert(3, message("bad"))
    await processor(sink, sender).process(batch)
    assert sorted(sink.stored) == sorted(f"d{i}" for i in range(7))
    dead = dead_letters(sender)
    assert [m.key for m in dead] == [b"bad"]
    assert b"value out of range" in dict(dead[0].headers)["error"]


class RaisingSink(FakeSink):
    """Raises `error` for any batch holding a driver in `poison` (a bug one input meets)."""

    def __init__(self, poison: frozenset[str], error: Exception) -> None:
        super().__init__()
        self.poison = poison
        self.error = error
        self.raised_often = asyncio.Event()

    async def write(self, batch: list[Incoming]) -> CleanBatch:
        if any(i.record.driver_id in self.poison for i in batch):
            self.calls += 1
            if self.calls >= 20:  # past the unexpected retries and isolation, several times
                self.raised_often.set()
            raise self.error
        return await super().write(batch)


async def test_a_record_raising_an_unexpected_error_is_isolated_and_the_rest_stored() -> None:
    sink = RaisingSink(frozenset({"poison"}), TypeError("unsupported operand"))
    sender = FakeSender()
    batch = [message(f"d{i}") for i in range(7)]
    batch.insert(5, message("poison"))
    await processor(sink, sender).process(batch)
    assert sorted(sink.stored) == sorted(f"d{i}" for i in range(7))
    dead = dead_letters(sender)
    assert [m.key for m in dead] == [b"poison"]
    assert dict(dead[0].headers)["error"] == b"TypeError: unsupported operand"


async def test_an_unexpected_error_of_every_record_dead_letters_none_and_is_retried() -> None:
    # Not one record's fault (an outage of an unknown kind): nothing goes to the DLQ, the
    # batch stays unwritten and unacked until it passes or the worker stops.
    sink = RaisingSink(frozenset({"a", "b"}), RuntimeError("connection in a bad state"))
    sender = FakeSender()
    proc = processor(sink, sender)
    task = asyncio.ensure_future(proc.process([message("a"), message("b")]))
    await asyncio.wait_for(sink.raised_often.wait(), timeout=5)
    proc.request_stop()
    with pytest.raises(Stopping):
        await asyncio.wait_for(task, timeout=2)
    assert sink.stored == [] and sender.acked == []


async def test_a_stop_during_an_outage_gives_up_without_returning() -> None:
    sink = FakeSink(errors=[SinkUnavailable("db down")] * 10_000)
    proc = processor(sink, FakeSender())
    task = asyncio.ensure_future(proc.process([message("a")]))
    await asyncio.wait_for(sink.retried.wait(), timeout=2)
    assert proc.health.pending_since is not None
    proc.request_stop()
    with pytest.raises(Stopping):
        await asyncio.wait_for(task, timeout=2)
    assert sink.stored == []


async def test_a_stop_lets_a_healthy_write_finish_within_the_grace_period() -> None:
    release, entered = asyncio.Event(), asyncio.Event()

    class Slow(FakeSink):
        async def write(self, batch: list[Incoming]) -> CleanBatch:
            entered.set()
            await release.wait()
            return await super().write(batch)

    sink = Slow()
    proc = processor(sink, FakeSender(), grace_s=5.0)
    task = asyncio.ensure_future(proc.process([message("a")]))
    await asyncio.wait_for(entered.wait(), timeout=2)  # the write is in flight
    proc.request_stop()
    release.set()
    await asyncio.wait_for(task, timeout=2)
    assert sink.stored == ["a"]
    assert proc.health.pending_since is None


def test_backoff_is_jittered_and_bounded() -> None:
    rng = random.Random(7)
    delays = [Backoff(0.1, 5.0).delay_s(n, rng) for n in range(20)]
    assert all(0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) == len(delays)
