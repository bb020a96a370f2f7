"""The notifier's pure parts: the per-subscriber sequencing (exactly once, in order, across
live events, held events and fetched ones), the bounded send queue, and the protocol's
client messages."""

import asyncio
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from notifier.errors import BadMessage
from notifier.frames import EventFrame, event_frame
from notifier.metrics import NotifierMetrics
from notifier.send_queue import WRITE_NOW_BELOW_BYTES, Budget, SendQueue
from notifier.sequencing import Sequencer
from notifier.session import _parse
from schemas.jobs import JobEvent, JobStatus
from schemas.notifier import Auth, Subscribe

JOB = uuid.uuid4()


def frame(seq: int, job: uuid.UUID = JOB) -> EventFrame:
    return event_frame(
        JobEvent(
            job_id=job, seq=seq, type="job.status", status=JobStatus.ASSIGNED,
            at=datetime.now(UTC), data={"driver_id": "d-1"},
        )
    )  # fmt: skip


def seqs(frames: list[EventFrame]) -> list[int]:
    return [f.seq for f in frames]


def test_live_events_in_order_duplicates_dropped_and_a_gap_stops_live() -> None:
    s = Sequencer(0)
    s.start_at(3)
    s.live = True
    assert seqs(s.offer(frame(4)) or []) == [4]
    assert s.offer(frame(4)) == [] and s.offer(frame(2)) == []
    assert s.offer(frame(7)) is None  # 5 and 6 missing: catch up
    assert not s.live and s.wanted_seq == 7
    ready, live = s.merge([frame(5), frame(6)], target_seq=7)
    assert seqs(ready) == [5, 6, 7] and live and s.sent_seq == 7


def test_merge_stays_held_until_the_target_and_the_gaps_are_filled() -> None:
    s = Sequencer(0)
    for seq in (9, 10):  # live events while the snapshot (seq 6) is read
        s.offer(frame(seq))
    s.start_at(4)  # the client's last_seq
    ready, live = s.merge([frame(5), frame(6)], target_seq=6)
    assert seqs(ready) == [5, 6] and not live  # 7 and 8 are missing before 9
    ready, live = s.merge([frame(7), frame(8), frame(9)], target_seq=6)
    assert seqs(ready) == [7, 8, 9, 10] and live


def test_start_at_drops_held_events_the_client_has() -> None:
    s = Sequencer(0)
    for seq in (3, 4, 5):
        s.offer(frame(seq))
    s.start_at(4)
    ready, live = s.merge([], target_seq=4)
    assert seqs(ready) == [5] and live


def test_held_events_are_bounded_keeping_the_newest() -> None:
    s = Sequencer(0, max_held=3)
    for seq in range(10, 20):
        s.offer(frame(seq))
    assert sorted(s.held) == [17, 18, 19]


@given(
    last_seq=st.integers(0, 20),
    newest=st.integers(0, 40),
    live=st.lists(st.integers(1, 45), max_size=30),
    fetched_until=st.integers(0, 45),
    seed=st.integers(0, 1000),
)
def test_every_path_sends_each_event_once_in_order(
    last_seq: int, newest: int, live: list[int], fetched_until: int, seed: int
) -> None:
    """Whatever mix of live events (repeated, out of order) and partial fetches, what is
    sent is the run after `last_seq`, without a gap or a repeat."""
    rng = random.Random(seed)
    s = Sequencer(0)
    sent: list[int] = []
    for seq in live[: len(live) // 2]:
        s.offer(frame(seq))
    s.start_at(last_seq)
    target = max(newest, last_seq)
    fetch = [frame(q) for q in range(last_seq + 1, min(fetched_until, target) + 1)]
    rng.shuffle(fetch)
    ready, is_live = s.merge(fetch, target)
    sent += seqs(ready)
    for seq in live[len(live) // 2 :]:
        out = s.offer(frame(seq))
        if out is None or not is_live:
            # a catch-up fetches everything up to what is known to exist
            ready, is_live = s.merge(
                [frame(q) for q in range(s.sent_seq + 1, s.wanted_seq + 1)], target
            )
            sent += seqs(ready)
        else:
            sent += seqs(out)
    assert sent == list(range(last_seq + 1, last_seq + 1 + len(sent)))


async def until(condition: Callable[[], bool]) -> None:
    """Lets the send queue's tasks run until `condition` holds (1 s deadline)."""
    async with asyncio.timeout(1):
        while not condition():  # noqa: ASYNC110 - plain state of other tasks
            await asyncio.sleep(0)  # one turn of the loop; the deadline bounds the poll


class FakeSocket:
    """A socket whose client is keeping up (`backlog` 0) or not (bytes left unsent in
    its buffer; `send` then waits, as the real one does above its high-water mark)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.backlog = 0
        self.drained = asyncio.Event()
        self.drained.set()

    def stall(self, backlog: int = WRITE_NOW_BELOW_BYTES) -> None:
        self.backlog = backlog
        self.drained.clear()

    def drain(self) -> None:
        self.backlog = 0
        self.drained.set()

    def write_now(self, message: bytes) -> None:
        self.sent.append(message)

    async def send(self, message: bytes, *, text: bool) -> None:
        await self.drained.wait()
        self.sent.append(message)

    def buffered_bytes(self) -> int:
        return self.backlog


async def never_slow() -> None:
    raise AssertionError("not slow")


def never_revoked(sub: object, error: object) -> None:
    raise AssertionError(f"not revoked: {error}")


def test_a_client_keeping_up_gets_each_frame_at_once() -> None:
    sock = FakeSocket()
    counted: list[str] = []
    box = SendQueue(
        sock, max_unsent_bytes=10_000, on_slow=never_slow, on_sent=lambda k, _: counted.append(k)
    )
    box.push(b"e1", "job.status")
    box.push_position(JOB, b"p1", 0.0)
    assert sock.sent == [b"e1", b"p1"] and counted == ["job.status", "position"]


async def test_a_lagging_client_gets_events_in_order_and_the_newest_position_only() -> None:
    sock = FakeSocket()
    counted: list[str] = []
    box = SendQueue(
        sock, max_unsent_bytes=10**6, on_slow=never_slow, on_sent=lambda k, _: counted.append(k)
    )
    sock.stall()
    box.push(b"e1", "job.status")
    box.push(b"e2", "job.status")
    for i in range(50):
        box.push_position(JOB, f"p{i}".encode(), 0.0)
    assert sock.sent == []
    sock.drain()
    await until(lambda: len(sock.sent) == 3)
    assert sock.sent == [b"e1", b"e2", b"p49"]
    assert counted == ["job.status", "job.status", "position"]


async def test_a_send_queue_past_its_limit_closes_and_keeps_nothing() -> None:
    sock = FakeSocket()
    sock.stall()  # the client stopped reading: 64 KiB already unsent
    slow_calls: list[int] = []

    async def slow() -> None:
        slow_calls.append(1)

    box = SendQueue(sock, max_unsent_bytes=70_000, on_slow=slow, on_sent=lambda k, _: None)
    for _ in range(100):
        box.push(b"x" * 100, "job.status")
    await until(lambda: bool(slow_calls))
    assert slow_calls == [1] and box.closed and sock.sent == []
    sock.drain()
    assert box.unsent_bytes() == 0
    box.push(b"more", "job.status")  # ignored once closed
    assert box.unsent_bytes() == 0 and sock.sent == []


async def test_the_socket_buffer_counts_against_the_limit() -> None:
    sock = FakeSocket()
    sock.stall(990)  # unsent bytes the kernel would not take

    async def slow() -> None:
        pass

    box = SendQueue(sock, max_unsent_bytes=1000, on_slow=slow, on_sent=lambda k, _: None)
    box.push(b"x" * 20, "job.status")
    assert box.closed


async def test_the_process_budget_closes_the_connection_whose_frame_would_cross_it() -> None:
    from notifier.send_queue import Budget

    budget = Budget(1500)  # all connections together; each alone may hold far more
    socks = [FakeSocket(), FakeSocket()]
    slow: list[int] = []
    boxes = []
    for i, sock in enumerate(socks):
        sock.stall()  # neither client reads: frames queue

        async def on_slow(i: int = i) -> None:
            slow.append(i)

        # One budget for both, as the process's sessions share it.
        boxes.append(
            SendQueue(
                sock,
                max_unsent_bytes=10**6,
                on_slow=on_slow,
                on_sent=lambda k, _: None,
                budget=budget,
            )
        )
    for _ in range(8):
        boxes[0].push(b"x" * 100, "job.status")  # 800 queued
    for _ in range(8):
        boxes[1].push(b"y" * 100, "job.status")  # the 8th would take the process past 1500
    await until(lambda: slow == [1])
    assert boxes[1].closed and not boxes[0].closed
    assert budget.used <= 800  # the closed one's queue is given back
    socks[0].drain()
    await until(lambda: budget.used == 0 and len(socks[0].sent) == 8)


def test_client_messages_parse_or_say_what_is_wrong() -> None:
    assert _parse('{"type":"auth","token":"t"}') == Auth(type="auth", token="t")
    job = str(uuid.uuid4())
    parsed = _parse(orjson.dumps({"type": "subscribe", "job_id": job, "last_seq": 3}))
    assert isinstance(parsed, Subscribe) and parsed.last_seq == 3
    for bad, words in [
        ("{", "Invalid JSON"),
        ('{"type":"nope"}', "does not match any of the expected tags"),
        ('{"type":"subscribe","job_id":"not-a-uuid"}', "job_id"),
        (f'{{"type":"subscribe","job_id":"{job}","last_seq":-1}}', "last_seq"),
        (f'{{"type":"subscribe","job_id":"{job}","x":1}}', "x"),
    ]:
        with pytest.raises(BadMessage, match=words):
            _parse(bad)


async def test_the_hub_routes_events_and_positions_of_the_jobs_driver_only() -> None:
    from prometheus_client import CollectorRegistry

    from notifier.hub import Hub, Subscription
    from notifier.metrics import NotifierMetrics
    from schemas.positions import PositionUpdate

    metrics = NotifierMetrics(CollectorRegistry())
    caught_up: list[Subscription] = []
    hub = Hub(metrics, caught_up.append, revoke=never_revoked)

    async def end(_: object) -> None:
        raise AssertionError("not ended")

    socks = [FakeSocket(), FakeSocket()]  # a user's connection, a share link's
    user, shared = (
        Subscription(
            JOB,
            SendQueue(sock, max_unsent_bytes=10**6, on_slow=never_slow, on_sent=lambda k, _: None),
            end,
            share=share,
            max_held=10,
        )
        for sock, share in zip(socks, (False, True), strict=True)
    )
    for sub in (user, shared):
        hub.watch(sub)
        sub.seq.start_at(1)
        sub.seq.live = sub.snapshot_sent = True
    hub.know_job(JOB, JobStatus.CREATED, None, 1)

    def fix(driver: str, second: int) -> PositionUpdate:
        ts = datetime(2026, 11, 28, 12, 0, second, tzinfo=UTC)
        return PositionUpdate(driver_id=driver, ping_id=uuid.uuid4(), ts=ts, lat=1.0, lon=2.0)

    hub.position(fix("d-1", 1))  # nobody assigned yet: not this job's driver
    hub.job_event(frame(2), "d-1")  # assigned to d-1
    hub.position(fix("d-2", 2))
    hub.position(fix("d-1", 3))
    hub.position(fix("d-1", 3))  # a replay: positions only move forward
    hub.job_event(frame(4), None)  # 3 is missing: a catch-up, nothing sent
    await until(lambda: all(len(sock.sent) == 2 for sock in socks))
    sent = [[orjson.loads(m) for m in sock.sent] for sock in socks]
    for messages in sent:
        assert [(m["type"], m.get("seq")) for m in messages] == [
            ("job.status", 2),
            ("position", None),
        ]
        assert messages[1]["ts"] == "2026-11-28T12:00:03Z"
    assert sent[0][0]["data"] == {"driver_id": "d-1"} and sent[1][0]["data"] == {}
    assert len(caught_up) == 2 and set(caught_up) == {user, shared}  # each caught up once
    assert hub.watches_driver("d-1") and not hub.watches_driver("d-2")
    for sub in (user, shared):
        hub.unwatch(sub)
    assert not hub.watches_driver("d-1") and hub.feeds == 0


def test_keepalives_are_spread_over_the_interval_and_repeat() -> None:
    from notifier.heartbeat import Schedule

    schedule: Schedule[int] = Schedule(25.0, random.Random(3))
    for item in range(1000):  # a storm: a thousand connections in the same instant
        schedule.add(item, now=0.0)
    per_second = [len(schedule.due(float(t))) for t in range(1, 26)]
    assert sum(per_second) == 1000 and max(per_second) < 80  # about 40 a second, not 1000
    schedule.remove(7)
    again = [i for t in range(26, 51) for i in schedule.due(float(t))]
    assert sorted(again) == [i for i in range(1000) if i != 7] and len(schedule) == 999


async def test_a_fix_that_came_before_the_assignment_is_sent_after_its_event() -> None:
    from prometheus_client import CollectorRegistry

    from notifier.hub import Hub, Subscription
    from notifier.metrics import NotifierMetrics
    from runtime.clock import ManualClock
    from schemas.positions import PositionUpdate

    clock = ManualClock(datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC).timestamp())
    hub = Hub(
        NotifierMetrics(CollectorRegistry()),
        lambda _: None,
        revoke=never_revoked,
        recent_drivers=2,
        clock=clock,
    )

    async def end(_: object) -> None:
        raise AssertionError("not ended")

    send_queues: list[SendQueue] = []

    def nothing_pending() -> bool:
        """The hub hands frames over synchronously: with nothing queued now, nothing more
        can arrive from what it was given."""
        return all(send_queue.unsent_bytes() == 0 for send_queue in send_queues)

    def watcher(job: uuid.UUID) -> FakeSocket:
        """A live subscriber of `job`, created and not yet assigned; its socket."""
        sock = FakeSocket()
        send_queue = SendQueue(
            sock, max_unsent_bytes=10**6, on_slow=never_slow, on_sent=lambda k, _: None
        )
        send_queues.append(send_queue)
        sub = Subscription(job, send_queue, end, share=False, max_held=10)
        hub.watch(sub)
        sub.seq.start_at(1)
        sub.seq.live = sub.snapshot_sent = True
        hub.know_job(job, JobStatus.CREATED, None, 1)
        return sock

    sock = watcher(JOB)

    def raw(driver: str, second: int) -> bytes:
        ts = datetime(2026, 11, 28, 12, 0, second, tzinfo=UTC)
        update = PositionUpdate(driver_id=driver, ping_id=uuid.uuid4(), ts=ts, lat=1.0, lon=2.0)
        return update.model_dump_json().encode()

    # The positions topic won the race: d-1's fix is read before the job's assignment.
    hub.remember("d-1", raw("d-1", 20))
    hub.remember("d-2", raw("d-2", 21))
    hub.job_event(frame(2), "d-1")
    await until(lambda: len(sock.sent) == 2)
    sent = [orjson.loads(m) for m in sock.sent]
    assert [m["type"] for m in sent] == ["job.status", "position"]  # the event first
    assert sent[1]["ts"] == "2026-11-28T12:00:20Z"
    # The same fix read again (a replay) is not sent twice.
    hub.position(PositionUpdate.model_validate_json(raw("d-1", 20)))
    assert nothing_pending() and len(sock.sent) == 2

    # Bounded: a third driver pushes the oldest (d-1) out.
    hub.remember("d-3", raw("d-3", 0))
    evicted, stale = uuid.UUID(int=JOB.int + 1), uuid.UUID(int=JOB.int + 2)
    sockets = {evicted: watcher(evicted), stale: watcher(stale)}
    hub.job_event(frame(2, job=evicted), "d-1")
    # A fix older than five minutes is not where the driver is.
    clock.advance(6 * 60)
    hub.job_event(frame(2, job=stale), "d-3")
    await until(lambda: all(len(sock.sent) == 1 for sock in sockets.values()))
    assert nothing_pending()
    for sock in sockets.values():
        assert [orjson.loads(m)["type"] for m in sock.sent] == ["job.status"]


async def test_the_live_reader_skips_a_record_that_makes_it_raise_and_delivers_the_rest() -> None:
    from aiokafka import ConsumerRecord
    from prometheus_client import CollectorRegistry

    from notifier.consumer import LiveReader, ReaderSettings
    from notifier.metrics import NotifierMetrics

    poison_job, good_job = uuid.uuid4(), uuid.uuid4()

    class Hub:
        def __init__(self) -> None:
            self.delivered: list[str] = []

        def job_event(self, frame: EventFrame, driver: str | None) -> None:
            if str(frame.job_id) == str(poison_job):
                raise TypeError("a bug one event meets")
            self.delivered.append(str(frame.job_id))

    class Log:
        def __init__(self) -> None:
            self.appended: list[JobEvent] = []

        async def append(self, consumed: list[tuple[JobEvent, bytes]]) -> None:
            self.appended.extend(event for event, _ in consumed)

    def record(offset: int, job_id: uuid.UUID) -> ConsumerRecord[bytes, bytes]:
        event = JobEvent(
            job_id=job_id, seq=1, type="job.created", status=JobStatus.CREATED, at=datetime.now(UTC)
        )
        value = event.model_dump_json().encode()
        return ConsumerRecord(
            "job-events.v1", 0, offset, 0, 0, str(job_id).encode(), value, None, 0, len(value), []
        )

    registry = CollectorRegistry()
    settings = ReaderSettings("127.0.0.1:1", "job-events.v1", "positions.v1")
    hub, log = Hub(), Log()
    reader = LiveReader(settings, hub, log, NotifierMetrics(registry))  # type: ignore[arg-type]
    await reader._job_events([record(0, poison_job), record(1, good_job)])
    assert hub.delivered == [str(good_job)]
    assert [e.job_id for e in log.appended] == [good_job]
    failed = registry.get_sample_value("notifier_records_failed_total", {"topic": "job-events.v1"})
    assert failed == 1


def event(seq: int, status: JobStatus, driver: str | None = None) -> EventFrame:
    data = {"driver_id": driver} if driver else {}
    return event_frame(
        JobEvent(
            job_id=JOB, seq=seq, type="job.status", status=status, at=datetime.now(UTC), data=data
        )
    )


def live_watcher(hub: object, viewer: object = None) -> tuple[FakeSocket, object]:
    from notifier.hub import Hub, Subscription

    assert isinstance(hub, Hub)

    async def end(_: object) -> None:
        raise AssertionError("ended through the hub's revoke only")

    sock = FakeSocket()
    send_queue = SendQueue(
        sock, max_unsent_bytes=10**6, on_slow=never_slow, on_sent=lambda k, _: None
    )
    sub = Subscription(JOB, send_queue, end, share=False, max_held=10, viewer=viewer)  # type: ignore[arg-type]
    hub.watch(sub)
    sub.seq.start_at(1)
    sub.seq.live = sub.snapshot_sent = True
    return sock, sub


async def test_a_late_snapshot_never_rolls_the_feed_back() -> None:
    # A snapshot read before the job completed, arriving after the completion: positions
    # must not flow again (once they did, to every subscriber of the process).
    from prometheus_client import CollectorRegistry

    from notifier.hub import Hub
    from notifier.metrics import NotifierMetrics
    from schemas.positions import PositionUpdate

    hub = Hub(NotifierMetrics(CollectorRegistry()), lambda _: None, revoke=never_revoked)
    sock, _ = live_watcher(hub)
    hub.know_job(JOB, JobStatus.PICKED_UP, "d-1", 1)
    hub.job_event(event(2, JobStatus.COMPLETED), None)
    hub.know_job(JOB, JobStatus.PICKED_UP, "d-1", 1)  # the late snapshot
    fix = PositionUpdate(driver_id="d-1", ping_id=uuid.uuid4(), ts=datetime.now(UTC), lat=1, lon=2)
    hub.position(fix)
    await until(lambda: len(sock.sent) == 1)
    assert [orjson.loads(m)["type"] for m in sock.sent] == ["job.status"]  # no position after


async def test_a_driver_taken_off_a_job_is_ended_before_the_new_driver_shows() -> None:
    from prometheus_client import CollectorRegistry

    from notifier.errors import Forbidden
    from notifier.hub import Hub
    from notifier.metrics import NotifierMetrics
    from schemas.auth import Principal, Role

    revoked: list[tuple[object, object]] = []
    hub = Hub(
        NotifierMetrics(CollectorRegistry()),
        lambda _: None,
        revoke=lambda sub, error: revoked.append((sub, error)),
    )
    old_sock, old = live_watcher(hub, Principal(sub="d-1", role=Role.DRIVER))
    boss_sock, _ = live_watcher(hub, Principal(sub="disp", role=Role.DISPATCHER))
    hub.know_job(JOB, JobStatus.ASSIGNED, "d-1", 1)
    hub.job_event(event(2, JobStatus.ASSIGNED, "d-2"), "d-2")  # reassigned to d-2
    await until(lambda: len(boss_sock.sent) == 1)
    assert [(sub, type(error)) for sub, error in revoked] == [(old, Forbidden)]
    assert old_sock.sent == []  # never saw the event naming the new driver
    assert orjson.loads(boss_sock.sent[0])["data"] == {"driver_id": "d-2"}
    hub.job_event(event(3, JobStatus.PICKED_UP), None)
    await until(lambda: len(boss_sock.sent) == 2)
    assert old_sock.sent == [] and len(revoked) == 1


async def test_the_live_reader_restarts_where_it_was_not_at_the_end() -> None:
    # A `job.completed` produced while the broker was away must still be read after it.
    from aiokafka import ConsumerRecord, TopicPartition
    from aiokafka.errors import KafkaConnectionError
    from prometheus_client import CollectorRegistry

    from notifier.consumer import LiveReader, ReaderSettings
    from notifier.metrics import NotifierMetrics

    tp = TopicPartition("job-events.v1", 0)

    def record(offset: int) -> ConsumerRecord[bytes, bytes]:
        job_event = JobEvent(
            job_id=JOB, seq=offset + 1, type="job.status", status=JobStatus.PICKED_UP,
            at=datetime.now(UTC),
        )  # fmt: skip
        raw = job_event.model_dump_json().encode()
        return ConsumerRecord(
            tp.topic, 0, offset, 0, 0, str(JOB).encode(), raw, None, 0, len(raw), []
        )

    class Consumer:
        """Reads offsets 0-2, then the broker goes; the next one starts at the end (5)."""

        runs = 0

        def __init__(self) -> None:
            Consumer.runs += 1
            self.run = Consumer.runs
            self.at = 0 if self.run == 1 else 5
            self.sought: list[tuple[TopicPartition, int]] = []

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        def assignment(self) -> set[TopicPartition]:
            return {tp}

        def seek(self, partition: TopicPartition, offset: int) -> None:
            self.sought.append((partition, offset))
            self.at = offset

        async def position(self, partition: TopicPartition) -> int:
            return self.at

        async def getmany(self, **_: object) -> dict[TopicPartition, list[Any]]:
            if self.run == 1 and self.at == 3:
                raise KafkaConnectionError("the broker went away")
            if self.at >= 6:
                await asyncio.Event().wait()  # nothing more: the test ends here
            batch = [record(o) for o in range(self.at, min(self.at + 3, 6))]
            self.at += len(batch)
            return {tp: batch}

    consumers: list[Consumer] = []

    def factory(_: ReaderSettings) -> Any:
        consumers.append(Consumer())
        return consumers[-1]

    read: list[int] = []

    class Hub:
        def job_event(self, frame: EventFrame, driver: str | None) -> None:
            read.append(frame.seq - 1)

    class Log:
        async def append(self, consumed: object) -> None: ...

    settings = ReaderSettings("127.0.0.1:1", "job-events.v1", "positions.v1", retry_s=0)
    hub: Any = Hub()
    log: Any = Log()
    reader = LiveReader(settings, hub, log, NotifierMetrics(CollectorRegistry()), factory)
    task = asyncio.ensure_future(reader.run_forever())
    try:
        await until(lambda: read == [0, 1, 2, 3, 4, 5])
    finally:
        task.cancel()
    assert consumers[1].sought == [(tp, 3)]  # not 5, the end it started at


def test_the_send_queues_bytes_and_their_bound_are_scraped() -> None:
    registry = CollectorRegistry()
    metrics = NotifierMetrics(registry)
    budget = Budget(1000)
    metrics.watch(budget)
    budget.used = 300  # what the queues hold now, read at each scrape
    assert registry.get_sample_value("notifier_queued_bytes") == 300
    assert registry.get_sample_value("notifier_queued_bytes_limit") == 1000
