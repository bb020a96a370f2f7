"""The stream's aggregates against a recount from the raw pings, on a scratch database of
the session's storage, through the sink itself: increments, the recount of late pings,
replays, records outside their driver's partition, and an upgrade in place from the schema
that recounted every batch."""

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from infra import migrate
from runtime.geo import destination
from runtime.postgres import Pool, open_pool
from schemas.pings import Ping, PingBatchRecord
from schemas.pings_wire import from_model
from streams.clean import Position, clean
from streams.decode import Incoming
from streams.locks import key_partition
from streams.rows import PING_COLUMNS, ping_rows
from streams.sink import PingSink, SinkLimits
from tests.support.driving import ORIGIN
from tests.support.recompute import assert_aggregates_exact, stored_aggregates
from tests.support.stack import session_storage, until

pytestmark = [pytest.mark.integration, pytest.mark.storage]

PARTITIONS = 12
HOURLY_IN_STREAM = session_storage() == "native"


@dataclass
class Paths:
    """What the sink told about each batch's driver minutes."""

    incremented: int = 0
    recounted: int = 0
    batches: list[tuple[int, int]] = field(default_factory=list)

    def __call__(self, incremented: int, recounted: int) -> None:
        self.incremented += incremented
        self.recounted += recounted
        self.batches.append((incremented, recounted))


def fleet_records(rng: random.Random, drivers: int, start: datetime) -> list[PingBatchRecord]:
    """Each driver's road as records of 1 to 5 pings 4 s apart, some without a speed, over
    about six minutes and across an hour boundary when `start` is near one; the drivers
    share their cells."""
    records = []
    for d in range(drivers):
        driver = f"agg-{uuid.uuid4().hex[:6]}-{d}"
        lat, lon = destination(*ORIGIN, 0.0, 150.0 * d)
        pings = []
        for i in range(90):
            plat, plon = destination(lat, lon, 90.0, 40.0 * i)
            speed = None if rng.random() < 0.1 else round(rng.uniform(0, 20), 1)
            ts = start + timedelta(seconds=4 * i + d)
            pings.append(Ping(ping_id=uuid.uuid4(), ts=ts, lat=plat, lon=plon, speed_mps=speed))
        i = 0
        while i < len(pings):
            n = rng.randint(1, 5)
            chunk = pings[i : i + n]
            records.append(PingBatchRecord(driver_id=driver, received_at=chunk[-1].ts, pings=chunk))
            i += n
    return records


def deliveries(rng: random.Random, records: list[PingBatchRecord]) -> list[PingBatchRecord]:
    """In order per driver, with 10 % of the records held back and delivered late, 5 %
    delivered twice, a teleport and a ping ahead of its receipt."""
    by_time = sorted(records, key=lambda r: r.pings[0].ts)
    late = [r for r in by_time if rng.random() < 0.1]
    out = [r for r in by_time if r not in late]
    for r in late:
        out.insert(rng.randint(len(out) // 2, len(out)), r)
    for r in rng.sample(out, len(out) // 20):
        out.insert(rng.randint(out.index(r), len(out)), r)
    last = by_time[-1]
    far = destination(last.pings[-1].lat, last.pings[-1].lon, 0.0, 50_000.0)
    jump = Ping(
        ping_id=uuid.uuid4(), ts=last.pings[-1].ts + timedelta(seconds=2), lat=far[0], lon=far[1]
    )
    ahead = Ping(
        ping_id=uuid.uuid4(),
        ts=last.received_at + timedelta(minutes=2),
        lat=last.pings[-1].lat,
        lon=last.pings[-1].lon,
    )
    out.append(
        PingBatchRecord(driver_id=last.driver_id, received_at=last.received_at, pings=[jump, ahead])
    )
    return out


def incoming(records: list[PingBatchRecord], *, stray: bool = False) -> list[Incoming]:
    """As consumed from their driver's partition; with `stray`, the first record from
    another partition (produced by hand)."""
    out = []
    for n, r in enumerate(records):
        partition = key_partition(r.driver_id, PARTITIONS)
        if stray and n == 0:
            partition = (partition + 1) % PARTITIONS
        out.append(Incoming(None, b"", from_model(r), None, partition))
    return out


async def write_all(sink: PingSink, records: list[PingBatchRecord], rng: random.Random) -> None:
    i = 0
    while i < len(records):
        n = rng.randint(1, 12)
        await sink.write(incoming(records[i : i + n], stray=rng.random() < 0.2))
        i += n


@pytest.fixture
async def pool(fresh_database: str) -> AsyncIterator[Pool]:
    pool = await open_pool(fresh_database, min_size=1, max_size=2, name="test-aggregates")
    try:
        yield pool
    finally:
        await pool.close()


def minute_before_an_hour() -> datetime:
    """About five minutes before the last full hour: the tracks cross it."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(minutes=5)


async def test_a_mixed_backlog_leaves_every_aggregate_equal_to_a_recount(
    fresh_database: str, pool: Pool
) -> None:
    migrate.apply_all(fresh_database, timescale=session_storage() == "timescaledb")
    rng = random.Random(24)
    paths = Paths()
    sink = PingSink(pool, SinkLimits(), paths)
    records = deliveries(rng, fleet_records(rng, 8, minute_before_an_hour()))
    await write_all(sink, records, rng)
    assert_aggregates_exact(fresh_database, hourly=HOURLY_IN_STREAM)
    # Both paths ran: increments for pings in order, the recount for the late ones.
    assert paths.incremented > 0
    assert paths.recounted > 0

    # A replay (a worker killed after its commit, before its offsets) changes nothing.
    with psycopg.connect(fresh_database) as conn:
        before = stored_aggregates(conn)
    for chunk in (records[:10], records[10:25], records[-3:]):
        await sink.write(incoming(chunk))
    with psycopg.connect(fresh_database) as conn:
        assert stored_aggregates(conn) == before
    assert paths.batches[-3:] == [(0, 0)] * 3


async def test_a_rebalance_in_the_middle_of_a_flush_counts_each_ping_once(
    fresh_database: str, pool: Pool
) -> None:
    """A rebalance hands partitions to another worker while their old owner is still
    inside a flush, and both write the same records (the old owner's offsets were not
    committed). The partitions' locks make the new owner wait for the old one's commit;
    its insert of the same pings then returns nothing, so its aggregates add nothing."""
    migrate.apply_all(fresh_database, timescale=session_storage() == "timescaledb")
    rng = random.Random(31)
    records = sorted(fleet_records(rng, 6, minute_before_an_hour()), key=lambda r: r.pings[0].ts)
    third = len(records) // 3
    old_owner, new_owner = records[: 2 * third], records[third:]

    def waiting(kind: str, relation: str | None = None) -> bool:
        with psycopg.connect(fresh_database) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = %s"
                " AND (%s::text IS NULL OR relation = to_regclass(%s))",
                [kind, relation, relation],
            ).fetchone()
        return row is not None and row[0] > 0

    other = await open_pool(fresh_database, min_size=1, max_size=2, name="test-new-owner")
    try:
        with psycopg.connect(fresh_database) as blocker:
            # Holds the old owner inside its flush: its last step, the cell minutes, waits.
            blocker.execute("LOCK TABLE cell_density_1m IN SHARE MODE")
            first = asyncio.create_task(PingSink(pool, SinkLimits()).write(incoming(old_owner)))
            await until(lambda: waiting("relation", "cell_density_1m"))
            second = asyncio.create_task(PingSink(other, SinkLimits()).write(incoming(new_owner)))
            await until(lambda: waiting("advisory"))  # the new owner waits for the old one
            assert not first.done() and not second.done()
            blocker.rollback()
        await asyncio.wait_for(asyncio.gather(first, second), timeout=60)
    finally:
        await other.close()

    assert_aggregates_exact(fresh_database, hourly=HOURLY_IN_STREAM)
    with psycopg.connect(fresh_database) as conn:
        stored = conn.execute("SELECT count(*), count(DISTINCT ping_id) FROM pings").fetchone()
    sent = sum(len(r.pings) for r in records)
    assert stored == (sent, sent)


def write_before_increments(dsn: str, records: list[PingBatchRecord], hourly: bool) -> None:
    """What the stream did before migrations 0012 and 0013: store the pings and recount
    their minutes with stream_recompute_aggregates (migration 0004)."""
    with psycopg.connect(dsn) as conn:
        for r in records:
            latest = {
                d: Position(ts, lat, lon, ping_id)
                for d, ts, lat, lon, ping_id in conn.execute(
                    "SELECT driver_id, ts, lat, lon, ping_id FROM driver_positions"
                )
            }
            batch = clean([from_model(r)], latest, SinkLimits().future_tolerance)
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS pings_new (driver_id text, ts timestamptz,"
                " h3_cell bigint, flags text[]) ON COMMIT DELETE ROWS"
            )
            columns = ", ".join(PING_COLUMNS)
            marks = ", ".join(["%s"] * len(PING_COLUMNS))
            with conn.cursor() as cur:
                cur.executemany(
                    f"WITH i AS (INSERT INTO pings ({columns}) VALUES ({marks})"
                    " ON CONFLICT DO NOTHING RETURNING driver_id, ts, h3_cell, flags)"
                    " INSERT INTO pings_new SELECT * FROM i",
                    ping_rows(batch.pings),
                )
            for moved in batch.moved.values():
                p = moved.ping
                conn.execute(
                    "INSERT INTO driver_positions (driver_id, ts, ping_id, lat, lon)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (driver_id) DO UPDATE SET"
                    " ts = excluded.ts, ping_id = excluded.ping_id, lat = excluded.lat,"
                    " lon = excluded.lon WHERE excluded.ts > driver_positions.ts",
                    [moved.driver_id, p.ts, p.ping_id, p.lat, p.lon],
                )
            conn.execute("SELECT stream_recompute_aggregates(%s)", [hourly])
            conn.commit()


async def test_a_database_of_the_recounting_schema_upgrades_in_place(
    fresh_database: str, pool: Pool
) -> None:
    timescale = session_storage() == "timescaledb"
    every = migrate.discover(timescale=timescale)
    before = [m for m in every if m.version < "0012"]
    migrate.apply_all(fresh_database, before, timescale=timescale)
    rng = random.Random(12)
    records = deliveries(rng, fleet_records(rng, 6, minute_before_an_hour()))
    # The first part in order under the old schema; the minute it stops in is shared.
    old = sorted(records[: len(records) // 2], key=lambda r: r.pings[0].ts)
    write_before_increments(fresh_database, old, HOURLY_IN_STREAM)
    # (Not the hours: that rollup weighed each minute's average by all its pings, also
    # those without a speed. The migration makes the hours of the late window exact.)
    assert_aggregates_exact(fresh_database, hourly=False)

    assert migrate.apply_all(fresh_database, timescale=timescale) == [
        "0012_incremental_aggregates",
        "0013_stream_apply_aggregates",
        "0014_late_window_online",
        "0015_drop_job_arrived",
        "0016_tasks_proof_index",
    ]
    # The window's rows got their sums, and the hours exact averages.
    assert_aggregates_exact(fresh_database, hourly=HOURLY_IN_STREAM)
    with psycopg.connect(fresh_database) as conn:
        without = conn.execute("SELECT count(*) FROM driver_stats_1m WHERE speed_n IS NULL")
        assert without.fetchone() == (0,)
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'pings'"
        ).fetchall()
        assert indexes == [("pings_pkey",)]  # one index on pings: its primary key
        # Rows the migration gave no sums (older than the window it fills): recounted when
        # touched. Here every row is, so the pings below reach such rows.
        conn.execute("UPDATE driver_stats_1m SET speed_sum = NULL, speed_n = NULL")
        if HOURLY_IN_STREAM:
            conn.execute("UPDATE driver_stats_1h SET speed_sum = NULL, speed_n = NULL")

    # The rest, late ones into the old minutes, and the old records once more.
    paths = Paths()
    sink = PingSink(pool, SinkLimits(), paths)
    await write_all(sink, records[len(records) // 2 :] + old[::3], rng)
    assert_aggregates_exact(fresh_database, hourly=HOURLY_IN_STREAM)
    assert paths.incremented > 0
    assert paths.recounted > 0
