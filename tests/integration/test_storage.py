"""The storage under the stream: which one runs, its migrations, retention on each, and
TimescaleDB's own features (compression, the continuous aggregate) on real TimescaleDB."""

import asyncio
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from infra import migrate, postgres, timescaledb
from infra.config import StackConfig
from schemas import topics
from schemas.auth import Role
from schemas.pings import PingBatchRecord
from tests.support.driving import ping_at, post, stored, wait_stored
from tests.support.recompute import Stats, assert_same, recomputed_hourly, stored_stats
from tests.support.stack import session_storage, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.storage]


def primary(config: StackConfig) -> psycopg.Connection[Any]:
    return psycopg.connect(postgres.dsn(config, "primary"), autocommit=True)


def job_id(conn: psycopg.Connection[Any], proc: str, relation: str) -> int:
    """The TimescaleDB job of policy `proc` on a hypertable or continuous aggregate."""
    row = conn.execute(
        """SELECT j.job_id FROM timescaledb_information.jobs j
           LEFT JOIN timescaledb_information.continuous_aggregates c
               ON c.materialization_hypertable_name = j.hypertable_name
           WHERE j.proc_name = %s AND coalesce(c.view_name, j.hypertable_name) = %s""",
        [proc, relation],
    ).fetchone()
    assert row is not None, f"no {proc} job on {relation}"
    return int(row[0])


def run_job(config: StackConfig, proc: str, relation: str) -> None:
    with primary(config) as conn:
        conn.execute("CALL run_job(%s)", [job_id(conn, proc, relation)])


def insert_raw_pings(conn: psycopg.Connection[Any], driver: str, times: list[datetime]) -> None:
    """Rows as the stream writes them, for days ingest no longer accepts."""
    with conn.cursor().copy(
        "COPY pings (driver_id, ts, ping_id, lat, lon, speed_mps, received_at, h3_cell) FROM STDIN"
    ) as copy:
        for n, ts in enumerate(times):
            copy.write_row([driver, ts, uuid.uuid4(), 12.9 + n * 1e-4, 77.6, 5.0, ts, 1])


def chunks(conn: psycopg.Connection[Any], hypertable: str) -> dict[str, bool]:
    """Chunk name -> compressed."""
    return dict(
        conn.execute(
            "SELECT chunk_name, is_compressed FROM timescaledb_information.chunks"
            " WHERE hypertable_name = %s",
            [hypertable],
        ).fetchall()
    )


def chunk_of(conn: psycopg.Connection[Any], hypertable: str, ts: datetime) -> str:
    row = conn.execute(
        "SELECT chunk_name FROM timescaledb_information.chunks WHERE hypertable_name = %s"
        " AND range_start <= %s AND %s < range_end",
        [hypertable, ts, ts],
    ).fetchone()
    assert row is not None, f"no chunk of {hypertable} holds {ts}"
    return str(row[0])


# --- both storages -------------------------------------------------------------------


def test_primary_and_replica_run_the_chosen_storage(config: StackConfig) -> None:
    expected = [(timescaledb.VERSION,)] if session_storage() == "timescaledb" else []
    for role in ("primary", "replica"):
        with psycopg.connect(postgres.dsn(config, role)) as conn:
            versions = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchall()
            assert versions == expected, role
            if expected:
                assert conn.execute("SHOW timescaledb.telemetry_level").fetchone() == ("off",)
        described = postgres.describe(config, role)["storage"]
        assert described == ("native" if not expected else f"timescaledb {timescaledb.VERSION}")


def test_migrations_apply_once_and_keep_their_storage(fresh_database: str) -> None:
    timescale = session_storage() == "timescaledb"
    every = [m.version for m in migrate.discover()]
    assert migrate.apply_all(fresh_database, timescale=timescale) == every
    assert migrate.apply_all(fresh_database, timescale=timescale) == []  # applied once
    with psycopg.connect(fresh_database) as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'pings'::regclass")
        # Native: a partitioned table; TimescaleDB: a plain table made a hypertable.
        assert kind.fetchone() == ("r" if timescale else "p",)
    with pytest.raises(migrate.MigrationError, match="cannot switch"):
        migrate.apply_all(fresh_database, timescale=not timescale)
    edited = [
        migrate.Migration(m.version, m.sql + "\n-- edited")
        for m in migrate.discover(timescale=timescale)
    ]
    with pytest.raises(migrate.MigrationError, match="edited after it was applied"):
        migrate.apply_all(fresh_database, edited, timescale=timescale)


def test_an_amended_migration_accepts_what_databases_applied_before(fresh_database: str) -> None:
    timescale = session_storage() == "timescaledb"
    migrate.apply_all(fresh_database, timescale=timescale)
    version = "0012_incremental_aggregates"
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for amended, earlier_forms in migrate.AMENDED.items():
            for earlier in earlier_forms:
                conn.execute(
                    "UPDATE schema_migrations SET checksum = %s WHERE version = %s",
                    [earlier, amended],
                )
                assert migrate.apply_all(fresh_database, timescale=timescale) == []
        conn.execute(
            "UPDATE schema_migrations SET checksum = 'no such version' WHERE version = %s",
            [version],
        )
    with pytest.raises(migrate.MigrationError, match="edited after it was applied"):
        migrate.apply_all(fresh_database, timescale=timescale)


def runner_waits(conn: psycopg.Connection[Any]) -> bool:
    """The runner's DROP INDEX waits for its lock on pings (the writers' waits are weaker)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE relation = 'pings'::regclass AND NOT granted"
        " AND mode = 'AccessExclusiveLock'"
    ).fetchone()
    return row is not None and row[0] > 0


def test_an_online_step_waits_for_its_lock_in_bounded_tries(fresh_database: str) -> None:
    """Migration 0014 drops an index of `pings` while a reader holds the table: each try
    gives up after its lock timeout (writers behind it wait no longer), and the runner
    tries again until the reader is gone."""
    timescale = session_storage() == "timescaledb"
    every = migrate.discover(timescale=timescale)
    migrate.apply_all(fresh_database, [m for m in every if m.version < "0014"], timescale=timescale)
    with (
        psycopg.connect(fresh_database) as reader,
        psycopg.connect(fresh_database, autocommit=True) as watcher,
        ThreadPoolExecutor(1) as pool,
    ):
        reader.execute("LOCK TABLE pings IN ACCESS SHARE MODE")
        applied = pool.submit(migrate.apply_all, fresh_database, timescale=timescale)
        wait_for(lambda: True if runner_waits(watcher) else None)
        wait_for(lambda: True if not runner_waits(watcher) else None)  # timed out
        wait_for(lambda: True if runner_waits(watcher) else None)  # and tried again
        assert not applied.done()
        reader.rollback()
        assert applied.result(timeout=60) == [
            "0014_late_window_online", "0015_drop_job_arrived", "0016_tasks_proof_index"
        ]  # fmt: skip
        indexes = watcher.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'pings'")
        assert indexes.fetchall() == [("pings_pkey",)]


class Writer:
    """Writes what the fleet writes (pings) and what jobs do (tasks) in a loop until told to
    stop, each write waiting for its locks at most `lock_wait`: a write that would wait
    longer fails with LockNotAvailable, and is counted."""

    def __init__(self, dsn: str, lock_wait: str) -> None:
        self.dsn, self.lock_wait = dsn, lock_wait
        self.written = self.waited_too_long = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", [self.lock_wait])
            while not self.stopping.is_set():
                try:
                    conn.execute(
                        "INSERT INTO pings (driver_id, ts, ping_id, lat, lon, received_at)"
                        " VALUES ('drv-migrating', now(), gen_random_uuid(), 12.9, 77.6, now())"
                    )
                    conn.execute(
                        "INSERT INTO tasks (task_id, kind, status)"
                        " VALUES (gen_random_uuid(), 'proof_photo', 'done')"
                    )
                    self.written += 1
                except psycopg.errors.LockNotAvailable:
                    self.waited_too_long += 1


def test_the_latest_migrations_never_hold_writers_past_the_lock_timeout(
    fresh_database: str,
) -> None:
    """The last migrations (an index dropped from pings, one built on tasks) applied while
    pings and tasks are written and a long reader holds pings: each write waits for its
    locks at most the runner's lock timeout (plus half a second for the two processes to
    wake), however long the reader holds the table. Without the runner's timeout, the
    writers would queue behind the DROP INDEX as long as the reader held on."""
    timescale = session_storage() == "timescaledb"
    every = migrate.discover(timescale=timescale)
    latest = [m for m in every if m.version >= "0014"]
    migrate.apply_all(fresh_database, [m for m in every if m not in latest], timescale=timescale)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        if not timescale:  # native: the day's partition, as the stream makes it
            conn.execute("SELECT ensure_pings_partitions(current_date - 1, current_date + 1)")
    lock_wait = f"{float(migrate.LOCK_TIMEOUT.removesuffix('s')) + 0.5}s"
    writers = [Writer(fresh_database, lock_wait) for _ in range(3)]
    with (
        psycopg.connect(fresh_database) as reader,
        psycopg.connect(fresh_database, autocommit=True) as watcher,
        ThreadPoolExecutor(len(writers) + 1) as pool,
    ):
        running = [pool.submit(w.run) for w in writers]
        wait_for(lambda: True if all(w.written > 10 for w in writers) else None)
        reader.execute("SELECT count(*) FROM pings")  # holds pings until it ends
        applied = pool.submit(migrate.apply_all, fresh_database, timescale=timescale)
        try:
            before = sum(w.written for w in writers)
            # The runner's DROP INDEX waits for the reader, gives up, and tries again,
            # twice, while the writers go on.
            for _ in range(2):
                wait_for(lambda: True if runner_waits(watcher) else None)
                wait_for(lambda: None if runner_waits(watcher) else True)
            assert not applied.done()
            reader.rollback()
            assert applied.result(timeout=120) == [m.version for m in latest]
        finally:
            for w in writers:
                w.stopping.set()
        for done in running:
            done.result(timeout=30)
    assert sum(w.waited_too_long for w in writers) == 0
    assert sum(w.written for w in writers) > before


def test_a_replayed_six_day_old_ping_is_stored_once(
    config: StackConfig, token: Callable[..., str]
) -> None:
    """Ingest accepts pings up to 7 days old; on TimescaleDB their chunk must still take
    writes after the compression policy ran (it compresses past that window only)."""
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    jwt = token(Role.DRIVER, driver)
    old = ping_at(datetime.now(UTC) - timedelta(days=6), 0)
    post(config, jwt, [old])
    wait_stored(config, driver, 1)
    if session_storage() == "timescaledb":
        run_job(config, "policy_compression", "pings")
        with primary(config) as conn:
            chunk = chunk_of(conn, "pings", datetime.fromisoformat(old["ts"]))
            assert chunks(conn, "pings")[chunk] is False
    newer = ping_at(datetime.now(UTC) - timedelta(days=6) + timedelta(seconds=10), 50)
    post(config, jwt, [old, newer])  # the app's retry, plus one more
    rows = wait_stored(config, driver, 2)
    assert sorted(r[0] for r in rows) == sorted([old["ping_id"], newer["ping_id"]])


# --- native PostgreSQL ---------------------------------------------------------------


@pytest.mark.native
def test_native_aggregate_retention_drops_only_expired_rows(config: StackConfig) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = [now - timedelta(days=91), now - timedelta(days=1)]
    hours = [
        now.replace(minute=0) - timedelta(days=731),
        now.replace(minute=0) - timedelta(days=91),
    ]
    with primary(config) as conn:
        for table, buckets in (("driver_stats_1m", minutes), ("driver_stats_1h", hours)):
            for bucket in buckets:
                conn.execute(
                    f"INSERT INTO {table} (driver_id, bucket, pings, distance_m)"
                    " VALUES (%s, %s, 1, 0)",
                    [driver, bucket],
                )
        conn.execute("SELECT drop_aggregates_before(now() - interval '90 days',"
                     " now() - interval '730 days')")  # fmt: skip
        kept = {
            table: [
                r[0]
                for r in conn.execute(
                    f"SELECT bucket FROM {table} WHERE driver_id = %s", [driver]
                ).fetchall()
            ]
            for table in ("driver_stats_1m", "driver_stats_1h")
        }
    assert kept == {"driver_stats_1m": [minutes[1]], "driver_stats_1h": [hours[1]]}


@pytest.mark.native
def test_native_ping_retention_drops_whole_day_partitions(config: StackConfig) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    expired, kept = today - timedelta(days=40), today - timedelta(days=20)
    with primary(config) as conn:
        conn.execute("SELECT ensure_pings_partitions(%s, %s)", [expired.date(), kept.date()])
        insert_raw_pings(conn, driver, [expired, kept])
        dropped = conn.execute(
            "SELECT drop_pings_partitions_before((now() AT TIME ZONE 'UTC')::date - 30)"
        ).fetchone()
        partitions = [
            r[0]
            for r in conn.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits"
                " WHERE inhparent = 'pings'::regclass"
            ).fetchall()
        ]
        left = conn.execute("SELECT ts FROM pings WHERE driver_id = %s", [driver]).fetchall()
    assert dropped is not None and dropped[0] >= 1
    assert f"pings_{expired:%Y%m%d}" not in partitions
    assert f"pings_{kept:%Y%m%d}" in partitions
    assert left == [(kept,)]


# --- TimescaleDB -----------------------------------------------------------------------


@pytest.mark.timescaledb
def test_compression_runs_on_old_chunks_and_their_rows_read_the_same(
    config: StackConfig,
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    times = [start + timedelta(seconds=4 * i) for i in range(500)]
    query = (
        "SELECT driver_id, ts, ping_id, lat, lon, speed_mps, flags, h3_cell FROM pings"
        " WHERE driver_id = %s ORDER BY ts"
    )
    with primary(config) as conn:
        insert_raw_pings(conn, driver, times)
        before = conn.execute(query, [driver]).fetchall()
        chunk = chunk_of(conn, "pings", start)
        assert chunks(conn, "pings")[chunk] is False
    run_job(config, "policy_compression", "pings")
    with primary(config) as conn:
        assert chunks(conn, "pings")[chunk] is True
        stats = conn.execute(
            "SELECT before_compression_total_bytes, after_compression_total_bytes"
            " FROM chunk_compression_stats('pings') WHERE chunk_name = %s",
            [chunk],
        ).fetchone()
        assert stats is not None and stats[1] < stats[0]
        assert conn.execute(query, [driver]).fetchall() == before
        # A write the stream could still make there (a replay of a stored ping) keeps
        # exactly-once: the primary key holds on a compressed chunk too.
        conn.execute(
            "INSERT INTO pings (driver_id, ts, ping_id, lat, lon, received_at)"
            " VALUES (%s, %s, %s, 0, 0, now()) ON CONFLICT DO NOTHING",
            [driver, before[0][1], before[0][2]],
        )
        assert conn.execute(query, [driver]).fetchall() == before
    # on the replica as well
    with psycopg.connect(postgres.dsn(config, "replica")) as conn:
        wait_for(lambda: True if conn.execute(query, [driver]).fetchall() == before else None)

    # The stream writes into the compressed chunk too (a record it gets a day late): new
    # pings are stored, a replayed one is not stored twice.
    newer = [ping_at(times[-1] + timedelta(seconds=4 * (i + 1)), 10.0 * i) for i in range(5)]
    replayed = {
        "ping_id": str(before[0][2]),
        "ts": before[0][1].isoformat(),
        "lat": 12.9,
        "lon": 77.6,
    }
    record = PingBatchRecord.model_validate(
        {
            "driver_id": driver,
            "received_at": times[-1] + timedelta(minutes=1),
            "pings": [replayed, *newer],
        }
    )
    asyncio.run(produce(config, record))
    rows = wait_for(lambda: r if len(r := stored(config, driver)) >= 505 else None)
    assert len(rows) == 505
    assert {r[0] for r in rows} >= {p["ping_id"] for p in newer}
    with primary(config) as conn:
        assert chunks(conn, "pings")[chunk] is True  # still compressed, rows in it or beside


async def produce(config: StackConfig, record: PingBatchRecord) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        value = record.model_dump_json().encode()
        await producer.send_and_wait(topics.PINGS, value, key=record.driver_id.encode())
    finally:
        await producer.stop()


@pytest.mark.timescaledb
def test_retention_policies_drop_chunks_and_follow_the_stream_settings(
    config: StackConfig,
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(microsecond=0)
    expired, kept = now - timedelta(days=45), now - timedelta(days=20)
    with primary(config) as conn:
        insert_raw_pings(conn, driver, [expired, kept])
        conn.execute(
            "INSERT INTO driver_stats_1m (driver_id, bucket, pings, distance_m)"
            " VALUES (%s, %s, 1, 0), (%s, %s, 1, 0)",
            [driver, now - timedelta(days=120), driver, now - timedelta(days=1)],
        )
        old_chunk = chunk_of(conn, "pings", expired)
        old_minutes_chunk = chunk_of(conn, "driver_stats_1m", now - timedelta(days=120))
    run_job(config, "policy_retention", "pings")
    run_job(config, "policy_retention", "driver_stats_1m")
    with primary(config) as conn:
        assert old_chunk not in chunks(conn, "pings")
        assert old_minutes_chunk not in chunks(conn, "driver_stats_1m")
        assert conn.execute("SELECT ts FROM pings WHERE driver_id = %s", [driver]).fetchall() == [
            (kept,)
        ]
        assert (
            len(
                conn.execute(
                    "SELECT 1 FROM driver_stats_1m WHERE driver_id = %s", [driver]
                ).fetchall()
            )
            == 1
        )

        def horizons() -> dict[str, str]:
            return {
                rel: conn.execute(
                    "SELECT config ->> 'drop_after' FROM timescaledb_information.jobs"
                    " WHERE job_id = %s",
                    [job_id(conn, "policy_retention", rel)],
                ).fetchone()[0]  # type: ignore[index]
                for rel in ("pings", "driver_stats_1m", "cell_density_1m", "driver_stats_1h")
            }

        defaults = horizons()
        assert defaults == {
            "pings": "30 days",
            "driver_stats_1m": "90 days",
            "cell_density_1m": "90 days",
            "driver_stats_1h": "730 days",
        }
        # What the stream's maintenance calls with its settings moves the policies.
        conn.execute("SELECT drop_pings_partitions_before((now() AT TIME ZONE 'UTC')::date - 14)")
        conn.execute(
            "SELECT drop_aggregates_before(now() - interval '60 days', now() - interval '400 days')"
        )
        assert horizons() == {
            "pings": "14 days",
            "driver_stats_1m": "60 days",
            "cell_density_1m": "60 days",
            "driver_stats_1h": "400 days",
        }
        conn.execute("SELECT drop_pings_partitions_before((now() AT TIME ZONE 'UTC')::date - 30)")
        conn.execute(
            "SELECT drop_aggregates_before(now() - interval '90 days', now() - interval '730 days')"
        )
        assert horizons() == defaults


def hourly_view(dsn: str, drivers: list[str]) -> Stats:
    return stored_stats(dsn, drivers, table="driver_stats_1h")


@pytest.mark.timescaledb
def test_the_hourly_continuous_aggregate_equals_a_recomputation_from_raw_pings(
    config: StackConfig, token: Callable[..., str]
) -> None:
    drivers = [f"drv-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    recent = now - timedelta(minutes=100)  # up to a minute ago: into the current hour
    late = recent - timedelta(days=3)  # an hour the refresh policy has materialised
    primary_dsn = postgres.dsn(config, "primary")
    for n, driver in enumerate(drivers):
        track = [ping_at(recent + timedelta(seconds=30 * i), 40.0 * i + n) for i in range(198)]
        track += [ping_at(late + timedelta(seconds=20 * i), 30.0 * i) for i in range(60)]
        post(config, token(Role.DRIVER, driver), track)
    for driver in drivers:
        wait_stored(config, driver, 258)

    # Real-time aggregation: the current hour, which no refresh materialises before it
    # ends, is in the view at once.
    def this_hour(stats: Stats) -> Stats:
        return {k: v for k, v in stats.items() if k[1] >= now.replace(minute=0)}

    assert_same(
        this_hour(hourly_view(primary_dsn, drivers)),
        this_hour(recomputed_hourly(primary_dsn, drivers)),
    )
    # Materialised hours catch up at the policy's next run (every minute; run now here).
    run_job(config, "policy_refresh_continuous_aggregate", "driver_stats_1h")
    assert_same(hourly_view(primary_dsn, drivers), recomputed_hourly(primary_dsn, drivers))

    # More pings three days late: the policy's window reaches back over ingest's 7 days, so
    # its next run brings those hours in line too (with a 1-day window they stayed stale).
    for driver in drivers:
        more = [ping_at(late + timedelta(seconds=20 * i + 10), 30.0 * i + 5) for i in range(60)]
        post(config, token(Role.DRIVER, driver), more)
    for driver in drivers:
        wait_stored(config, driver, 318)
    run_job(config, "policy_refresh_continuous_aggregate", "driver_stats_1h")
    expected = recomputed_hourly(primary_dsn, drivers)
    assert_same(hourly_view(primary_dsn, drivers), expected)
    # The replica serves the same view (the customer API reads there).
    replica_dsn = postgres.dsn(config, "replica")
    wait_for(lambda: True if hourly_view(replica_dsn, drivers).keys() == expected.keys() else None)
    assert_same(hourly_view(replica_dsn, drivers), expected)


@pytest.mark.timescaledb
def test_position_and_track_queries_read_hypertables_on_the_replica(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    jwt = token(Role.DRIVER, driver)
    start = datetime.now(UTC) - timedelta(hours=1)
    pings = [ping_at(start + timedelta(seconds=10 * i), 25.0 * i) for i in range(100)]
    post(config, jwt, pings)
    wait_stored(config, driver, 100)
    url = f"http://127.0.0.1:{config.api_port}/v1/drivers/{driver}/position"
    headers = {"Authorization": f"Bearer {token(Role.DISPATCHER, 'disp-1')}"}
    body = wait_for(
        lambda: r.json() if (r := httpx.get(url, headers=headers)).status_code == 200 else None
    )
    assert datetime.fromisoformat(body["ts"]) == datetime.fromisoformat(pings[-1]["ts"])
    with psycopg.connect(postgres.dsn(config, "replica")) as conn:
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT ts, lat, lon FROM pings WHERE driver_id = %s"
                " AND ts >= %s AND ts < %s ORDER BY ts",
                [driver, start, start + timedelta(hours=24)],
            ).fetchall()
        )
        track = conn.execute(
            "SELECT ping_id::text FROM pings WHERE driver_id = %s AND ts >= %s AND ts < %s"
            " ORDER BY ts",
            [driver, start, start + timedelta(hours=24)],
        ).fetchall()
    assert [r[0] for r in track] == [p["ping_id"] for p in pings]
    assert "_hyper_" in plan  # the query reads the hypertable's chunks
