"""The stream under failure, on a stack of its own: a worker killed with SIGKILL, the
database stopped for a while, a second worker joining and leaving. Every time, every
accepted ping ends up stored exactly once and the aggregates equal a recomputation."""

import asyncio
import contextlib
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from infra import pgbouncer, postgres
from infra.config import StackConfig
from infra.stack import Stack
from runtime.auth import issue_token
from runtime.geo import destination
from runtime.kafka_lag import consumer_group_lag
from schemas import topics
from schemas.auth import Role
from streams.locks import key_partition, partition_lock
from tests.support.recompute import assert_stats_match
from tests.support.stack import scratch_config, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.storage]
GROUP = topics.STREAMS_GROUP


# The worker commits a batch's offsets as soon as the batch is durable
# (streams/consumer.py); a second is many batches' worth of chances to commit one wrongly.
COMMIT_CHANCE_S = 1.0


def let_the_commit_timer_run(times: int) -> None:
    """A deliberate window, not synchronisation: a negative check ("no offset moved")
    means something only once the worker has had `times` seconds to commit wrongly."""
    threading.Event().wait(times * COMMIT_CHANCE_S)


# A worker reports a stall on /healthz once a batch waits unwritten this long.
HEALTH_STALL_S = 2


@pytest.fixture(scope="module")
def own_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    stack = Stack(scratch_config(stream_workers=2), report=lambda s: print(f"[own stack] {s}"))
    os.environ["STREAMS_HEALTH_STALL_S"] = str(HEALTH_STALL_S)  # passed on to the workers
    failed_before = request.session.testsfailed
    try:
        stack.up()
        # One worker to begin with; the rebalance and SIGSTOP tests start the second.
        stack.stop("streams-2")
        yield stack
    finally:
        os.environ.pop("STREAMS_HEALTH_STALL_S", None)
        stack.down()
        if request.session.testsfailed > failed_before:
            # The logs go with the state dir: what the workers said goes into the report.
            for name in ("streams-1", "streams-2"):
                print(f"--- {name}.log ---\n{stack.log_excerpt(name, lines=60)}")
        shutil.rmtree(stack.config.state_dir, ignore_errors=True)


class Fleet(threading.Thread):
    """Drivers posting pings through ingest until stopped; remembers every accepted ping id
    and retries refused batches with the same ids, as the apps do."""

    def __init__(self, config: StackConfig, drivers: int = 12) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{config.ingest_port}/v1/pings"
        prefix = uuid.uuid4().hex[:6]
        self.drivers = [f"rel-{prefix}-{i}" for i in range(drivers)]
        self.tokens = {
            d: issue_token(config.jwt_private_key, sub=d, role=Role.DRIVER) for d in self.drivers
        }
        self.accepted: set[str] = set()
        self.halt = threading.Event()
        self._step = dict.fromkeys(self.drivers, 0)
        self._start = datetime.now(UTC) - timedelta(minutes=40)

    def _batch(self, driver: str, size: int) -> list[dict[str, object]]:
        pings = []
        for _ in range(size):
            n = self._step[driver]
            self._step[driver] += 1
            lat, lon = destination(12.95, 77.6, 90.0, 15.0 * n)
            ts = self._start + timedelta(seconds=2 * n)
            pings.append(
                {"ping_id": str(uuid.uuid4()), "ts": ts.isoformat(), "lat": lat, "lon": lon}
            )
        return pings

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self.halt.is_set():
                driver = self.drivers[i % len(self.drivers)]
                batch = self._batch(driver, 1 + i % 4)
                i += 1
                while not self.halt.is_set():
                    try:
                        r = client.post(
                            self.url,
                            json={"pings": batch},
                            headers={"Authorization": f"Bearer {self.tokens[driver]}"},
                        )
                    except httpx.HTTPError:
                        continue
                    if r.status_code == 202:
                        self.accepted.update(str(p["ping_id"]) for p in batch)
                        break
                    self.halt.wait(float(r.headers.get("Retry-After", "0.2")))
                self.halt.wait(0.01)

    def wait_accepted(self, more_than: int) -> None:
        wait_for(lambda: True if len(self.accepted) > more_than else None, timeout_s=60)

    def finish(self) -> set[str]:
        self.halt.set()
        self.join(timeout=30)
        return set(self.accepted)


def stored_ids(config: StackConfig, drivers: list[str]) -> list[str]:
    with psycopg.connect(postgres.dsn(config, "primary"), connect_timeout=2) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT ping_id::text FROM pings WHERE driver_id = ANY(%s)", [drivers]
            ).fetchall()
        ]


def wait_stored(config: StackConfig, fleet: Fleet, count: int, timeout_s: float = 120) -> list[str]:
    def probe() -> list[str] | None:
        try:
            ids = stored_ids(config, fleet.drivers)
        except psycopg.OperationalError:
            return None
        return ids if len(ids) >= count else None

    return wait_for(probe, timeout_s=timeout_s, interval_s=0.5)


def assert_exactly_once(config: StackConfig, fleet: Fleet, accepted: set[str]) -> None:
    ids = wait_stored(config, fleet, len(accepted))
    assert len(ids) == len(set(ids)), "a ping was stored twice"
    assert set(ids) == accepted
    assert_stats_match(postgres.dsn(config, "primary"), fleet.drivers)


def test_a_worker_killed_mid_stream_loses_and_duplicates_nothing(own_stack: Stack) -> None:
    config = own_stack.config
    fleet = Fleet(config)
    fleet.start()
    try:
        fleet.wait_accepted(300)
        wait_stored(config, fleet, 100)
        own_stack.kill("streams-1")  # alone: its partitions wait for it
        fleet.wait_accepted(len(fleet.accepted) + 300)  # ingest goes on: the log holds them
        own_stack.start("streams-1")
        fleet.wait_accepted(len(fleet.accepted) + 200)
    finally:
        accepted = fleet.finish()
    assert_exactly_once(config, fleet, accepted)


def test_one_of_two_workers_killed_mid_batch_loses_and_double_counts_nothing(
    own_stack: Stack,
) -> None:
    config = own_stack.config
    fleet = Fleet(config)
    fleet.start()
    try:
        own_stack.start("streams-2")
        fleet.wait_accepted(400)
        wait_stored(config, fleet, 200)
        # Both write batches all the time: the kill lands in one, most likely mid-flush.
        # Its partitions go to the other worker after the session timeout, which
        # replays what the dead one had not committed.
        own_stack.kill("streams-2")
        fleet.wait_accepted(len(fleet.accepted) + 300)
        wait_stored(config, fleet, len(fleet.accepted), timeout_s=90)
    finally:
        accepted = fleet.finish()
    assert_exactly_once(config, fleet, accepted)


def committed(config: StackConfig) -> dict[int, int | None]:
    lags = asyncio.run(consumer_group_lag(config.kafka_bootstrap, GROUP, [topics.PINGS]))
    return {p.partition: p.committed_offset for p in lags}


def write_failures(stack: Stack) -> float:
    text = httpx.get(stack.records["streams-1"].endpoint["url"] + "/metrics", timeout=2).text
    return sum(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("streams_batch_failures_total{") and 'step="write"' in line
    )


def health(stack: Stack, name: str) -> int:
    return httpx.get(stack.records[name].endpoint["url"] + "/healthz", timeout=2).status_code


def test_no_offset_moves_while_the_database_is_down_and_nothing_is_missing_after(
    own_stack: Stack,
) -> None:
    config = own_stack.config
    # The database out of reach: the primary itself, or under Patroni HAProxy's frontends
    # (stopping a node would only move the leader).
    database = "haproxy-db" if config.postgres_ha else "postgres-primary"
    fleet = Fleet(config)
    fleet.start()
    try:
        fleet.wait_accepted(200)
        wait_stored(config, fleet, 50)
        own_stack.stop(database)
        fleet.wait_accepted(len(fleet.accepted) + 150)
        # Once the stream has failed a write, and a second has passed since, the
        # committed offsets are those of the last batch written before the outage.
        wait_for(lambda: True if write_failures(own_stack) > 0 else None, timeout_s=60)
        let_the_commit_timer_run(times=2)
        before = committed(config)
        fleet.wait_accepted(len(fleet.accepted) + 150)
        let_the_commit_timer_run(times=3)
        assert committed(config) == before, "an offset was committed past rows never written"
        # The worker says it is stuck, and a stop ends it in time without committing.
        wait_for(lambda: True if health(own_stack, "streams-1") == 503 else None, timeout_s=30)
        worker = own_stack.records["streams-1"]
        signalled = time.monotonic()
        os.kill(worker.ref.pid, signal.SIGTERM)
        wait_for(lambda: None if worker.ref.alive() else True, timeout_s=30)
        assert time.monotonic() - signalled < 10, "shutdown during the outage took too long"
        assert committed(config) == before, "the stopping worker committed an unwritten batch"
    finally:
        own_stack.start(database)
        if not own_stack.running("streams-1"):
            own_stack.start("streams-1")
    try:
        fleet.wait_accepted(len(fleet.accepted) + 100)
    finally:
        accepted = fleet.finish()
    assert_exactly_once(config, fleet, accepted)


def test_a_second_worker_joining_and_leaving_loses_and_double_counts_nothing(
    own_stack: Stack,
) -> None:
    config = own_stack.config
    fleet = Fleet(config)
    fleet.start()
    try:
        fleet.wait_accepted(200)
        own_stack.start("streams-2")
        fleet.wait_accepted(len(fleet.accepted) + 400)
        own_stack.stop("streams-2")
        fleet.wait_accepted(len(fleet.accepted) + 300)
    finally:
        accepted = fleet.finish()
    assert_exactly_once(config, fleet, accepted)


def test_a_transaction_left_open_by_a_paused_worker_blocks_the_others_only_briefly(
    own_stack: Stack,
) -> None:
    config = own_stack.config
    driver = f"zombie-{uuid.uuid4().hex[:8]}"
    # What a worker paused mid-batch leaves behind: an open transaction, through PgBouncer,
    # holding the lock of the driver's partition. Without the server's idle-in-transaction
    # timeout the live worker would wait for it forever.
    zombie = psycopg.connect(pgbouncer.dsn(config, read_only=False))
    lock = partition_lock(key_partition(driver, topics.DRIVER_TOPIC_PARTITIONS))
    zombie.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [lock])
    ts = datetime.now(UTC).isoformat()
    jwt = issue_token(config.jwt_private_key, sub=driver, role=Role.DRIVER)
    r = httpx.post(
        f"http://127.0.0.1:{config.ingest_port}/v1/pings",
        json={"pings": [{"ping_id": str(uuid.uuid4()), "ts": ts, "lat": 12.9, "lon": 77.6}]},
        headers={"Authorization": f"Bearer {jwt}"},
    )
    assert r.status_code == 202

    def worker_waits_on_the_lock() -> bool | None:
        with psycopg.connect(postgres.dsn(config, "primary")) as conn:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
            ).fetchone()
        return True if waiting and waiting[0] else None

    # The live worker's batch takes the same lock, and waits (the lock is the right one).
    wait_for(worker_waits_on_the_lock, timeout_s=30)
    limit = config.idle_in_transaction_timeout_s + 30
    wait_for(lambda: True if stored_ids(config, [driver]) else None, timeout_s=limit)
    with pytest.raises(psycopg.Error, match="idle-in-transaction"):
        zombie.execute("SELECT 1")  # the server ended the zombie's transaction
    zombie.close()


def test_a_worker_stopped_with_sigstop_stalls_nothing_and_double_counts_nothing(
    own_stack: Stack,
) -> None:
    config = own_stack.config
    fleet = Fleet(config)
    fleet.start()
    try:
        fleet.wait_accepted(200)
        own_stack.start("streams-2")
        fleet.wait_accepted(len(fleet.accepted) + 300)
        zombie = own_stack.records["streams-2"].ref
        os.kill(zombie.pid, signal.SIGSTOP)
        try:
            # Its partitions move to streams-1 after the session timeout; whatever locks it
            # held end with the idle-in-transaction timeout. Everything accepted meanwhile
            # gets stored.
            fleet.wait_accepted(len(fleet.accepted) + 300)
            accepted_now = len(fleet.accepted)
            wait_stored(config, fleet, accepted_now, timeout_s=90)
        finally:
            # The supervisor may have killed it as stuck meanwhile (and started another):
            # that is its job, and what is stored must be exactly once either way.
            with contextlib.suppress(ProcessLookupError):
                os.kill(zombie.pid, signal.SIGCONT)
        fleet.wait_accepted(len(fleet.accepted) + 200)
        own_stack.stop("streams-2")
    finally:
        accepted = fleet.finish()
    assert_exactly_once(config, fleet, accepted)
