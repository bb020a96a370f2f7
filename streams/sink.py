"""The PostgreSQL sink: one transaction per batch reads the drivers' state, cleans the batch
(pure), writes raw history by COPY, moves latest positions forward and changes the
aggregates by what it inserted (so a replay, which inserts nothing, changes nothing)."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from jobs import store as job_store
from runtime.postgres import DATABASE_ERRORS, TRANSIENT_ERRORS
from schemas.pings_wire import WireRecord
from schemas.topics import DRIVER_TOPIC_PARTITIONS
from streams.clean import CleanBatch, Position, clean
from streams.decode import Incoming
from streams.errors import BadData, SinkUnavailable
from streams.jobs import ActiveJob, arrivals
from streams.locks import lock_names
from streams.rows import PING_COLUMNS, PING_TYPES, ping_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SinkLimits:
    """Bounded waits for every sink transaction (set per transaction with set_config(...,
    true), which PgBouncer's transaction mode keeps within the transaction)."""

    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 30_000
    future_tolerance: timedelta = timedelta(seconds=30)
    # A job's driver within this of its dropoff has arrived (event `job.arrived`).
    arrival_radius_m: float = 100.0
    # Partitions of `pings.v1` as ingest produces to it: a driver's records live in the
    # partition its key hashes to (streams.locks).
    topic_partitions: int = DRIVER_TOPIC_PARTITIONS


# Which pings count in the aggregates, `NOT (flags && '{future,teleport}'::text[])`, is
# spelled the same in every query here and in migration 0013. The staging tables' NOTICEs
# ("already exists, skipping") are not worth a message each per batch. No JIT either: the
# recount of late pings' minutes reads a temp table the planner has no statistics for, so
# it guesses millions of rows for a few hundred, and compiling and optimising that plan
# took 0.3 to 1 s a flush (auto_explain, docs/benchmarks.md) for a statement that runs in
# milliseconds.
_LIMITS = (
    "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true),"
    " set_config('client_min_messages', 'warning', true), set_config('jit', 'off', true)"
)

# One writer per partition at a time (streams.locks); taken in key order: no deadlocks.
_LOCK = """
SELECT count(pg_advisory_xact_lock(k)) FROM (
    SELECT DISTINCT hashtextextended(n, 0) AS k FROM unnest(%s::text[]) AS n ORDER BY k
) AS keys
"""
_READ_LATEST = (
    "SELECT driver_id, ts, lat, lon, ping_id FROM driver_positions"
    " WHERE driver_id = ANY(%s::text[])"
)
# Staging tables live as long as their server connection and empty at every commit:
# creating and dropping them in every transaction churns the catalog. Safe under
# PgBouncer's transaction mode, since each is used within one transaction only.
_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, PING_COLUMNS))
_STAGE_IN = sql.SQL("CREATE TEMP TABLE IF NOT EXISTS pings_in ({}) ON COMMIT DELETE ROWS").format(
    sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
        for c, t in zip(PING_COLUMNS, PING_TYPES, strict=True)
    )
)
_STAGE_INSERTED = (
    "CREATE TEMP TABLE IF NOT EXISTS pings_inserted (driver_id text, ts timestamptz,"
    " ping_id uuid, lat float8, lon float8, speed_mps float4, h3_cell bigint, flags text[])"
    " ON COMMIT DELETE ROWS"
)
_COPY = sql.SQL("COPY pings_in ({}) FROM STDIN (FORMAT BINARY)").format(_COLUMNS)
# Replays and client retries deliver the same ping again: the primary key drops them. What
# was really inserted drives the aggregates (migration 0013): a replayed batch (committed
# before with its aggregates, in one transaction) inserts nothing, so changes nothing.
_INSERT_HISTORY = sql.SQL("""
WITH inserted AS (
    INSERT INTO pings ({cols}) SELECT {cols} FROM pings_in ON CONFLICT DO NOTHING
    RETURNING driver_id, ts, ping_id, lat, lon, speed_mps, h3_cell, flags
)
INSERT INTO pings_inserted SELECT * FROM inserted
""").format(cols=_COLUMNS)
_UPSERT_POSITIONS = """
INSERT INTO driver_positions AS cur
    (driver_id, ts, ping_id, lat, lon, speed_mps, heading_deg, accuracy_m, job_id, updated_at)
SELECT driver_id, ts, ping_id, lat, lon, speed_mps, heading_deg, accuracy_m, job_id, now()
FROM pings_in WHERE (driver_id, ping_id) IN (
    SELECT * FROM unnest(%s::text[], %s::uuid[]))
ON CONFLICT (driver_id) DO UPDATE SET
    ts = excluded.ts, ping_id = excluded.ping_id, lat = excluded.lat, lon = excluded.lon,
    speed_mps = excluded.speed_mps, heading_deg = excluded.heading_deg,
    accuracy_m = excluded.accuracy_m, job_id = excluded.job_id, updated_at = excluded.updated_at
WHERE excluded.ts > cur.ts
"""
# The aggregate step: a function of migration 0013 (plans cached per server connection).
_APPLY_AGGREGATES = "SELECT incremented, recounted FROM stream_apply_aggregates(%s)"

# What psycopg raises about the rows themselves fails the same way on every retry (the
# transient errors, which may not: runtime/postgres.py).
_DATA = (psycopg.DataError, psycopg.IntegrityError)


def _days(records: list[WireRecord]) -> set[date]:
    """The UTC days the records' pings fall on: every day from the first to the last."""
    first = min(p.ts for r in records for p in r.pings).astimezone(UTC).date()
    last = max(p.ts for r in records for p in r.pings).astimezone(UTC).date()
    return {first + timedelta(days=n) for n in range((last - first).days + 1)}


class PingSink:
    """Writes batches of `pings.v1` records, each in one transaction. Idempotent: writing a
    batch again (a replay after a crash, an overlap during a rebalance) stores nothing
    twice and changes no aggregate, so at-least-once delivery gives exactly-once results."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        limits: SinkLimits,
        on_aggregates: Callable[[int, int], None] = lambda incremented, recounted: None,
    ) -> None:
        self._pool = pool
        self._limits = limits
        # Told, after each commit, how many driver minutes were incremented and recounted.
        self._on_aggregates = on_aggregates
        self._days_with_partitions: set[date] = set()
        self._hourly_in_stream: bool | None = None

    async def write(self, batch: list[Incoming]) -> CleanBatch:
        """Writes the batch in one transaction and returns how it was cleaned. Raises
        SinkUnavailable (transient) or BadData (the rows themselves); either way nothing
        of the batch is written. Two round trips around the COPY: one reads what cleaning
        needs, one writes everything else."""
        if not batch:
            return CleanBatch([], {})
        records = [i.record for i in batch]
        drivers = sorted({r.driver_id for r in records})
        claimed = sorted({p.job_id for r in records for p in r.pings if p.job_id is not None})
        try:
            await self._ensure_days(_days(records))
            hourly = await self._maintains_hourly()
            async with self._pool.connection() as conn, conn.transaction():
                async with conn.pipeline():
                    await self._bound_waits(conn)
                    await conn.execute(_LOCK, [lock_names(batch, self._limits.topic_partitions)])
                    latest_rows = await conn.execute(_READ_LATEST, [drivers])
                    assigned_rows = await conn.execute(job_store.SELECT_ASSIGNED, [claimed])
                    arriving_rows = await conn.execute(job_store.SELECT_ARRIVING, [drivers])
                    await conn.execute(_STAGE_IN)
                    await conn.execute(_STAGE_INSERTED)
                latest = {
                    d: Position(ts, lat, lon, ping_id)
                    for d, ts, lat, lon, ping_id in await latest_rows.fetchall()
                }
                assigned = {(job, driver) for job, driver in await assigned_rows.fetchall()}
                arriving = [
                    ActiveJob(job_id, driver_id, (lat, lon))
                    for job_id, driver_id, lat, lon in await arriving_rows.fetchall()
                ]
                cleaned = clean(records, latest, self._limits.future_tolerance)
                async with conn.cursor().copy(_COPY) as copy:
                    copy.set_types(list(PING_TYPES))
                    for row in ping_rows(cleaned.pings, assigned):
                        await copy.write_row(row)
                moved = list(cleaned.moved.values())
                async with conn.pipeline():
                    await conn.execute(_INSERT_HISTORY)
                    await conn.execute(
                        _UPSERT_POSITIONS,
                        [[m.driver_id for m in moved], [m.ping.ping_id for m in moved]],
                    )
                    paths = await conn.execute(_APPLY_AGGREGATES, [hourly])
                incremented, recounted = await paths.fetchone() or (0, 0)
                # Rare (once a job), so one by one, through the one way events are recorded.
                for job_id in arrivals(cleaned.pings, arriving, self._limits.arrival_radius_m):
                    await job_store.arrive(conn, job_id)
        except _DATA as exc:
            raise BadData(f"the database refused {len(records)} records: {exc}") from exc
        except TRANSIENT_ERRORS as exc:
            raise SinkUnavailable(f"writing {len(records)} records failed: {exc!r}") from exc
        self._on_aggregates(incremented, recounted)
        return cleaned

    async def _bound_waits(self, conn: AsyncConnection[Any]) -> None:
        # A zombie worker (paused mid-transaction) holding a driver's or a cell's lock must
        # not stall the others for longer than this; the server's
        # idle_in_transaction_session_timeout then ends the zombie's transaction.
        await conn.execute(
            _LIMITS,
            [f"{self._limits.lock_timeout_ms}ms", f"{self._limits.statement_timeout_ms}ms"],
        )

    async def _maintains_hourly(self) -> bool:
        """On TimescaleDB the hourly rollup is a continuous aggregate (a view) that the
        database maintains; on plain PostgreSQL it is a table this stream maintains."""
        if self._hourly_in_stream is None:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT relkind FROM pg_class WHERE oid = to_regclass('driver_stats_1h')"
                )
                row = await cur.fetchone()
            self._hourly_in_stream = row is not None and row[0] == "r"
        return self._hourly_in_stream

    async def _ensure_days(self, days: set[date]) -> None:
        """A ping of a day without a partition would fail the whole batch, every retry.
        The record's time window (schemas.pings) bounds how many days this can be."""
        missing = days - self._days_with_partitions
        if not missing:
            return
        async with self._pool.connection() as conn, conn.transaction():
            await self._bound_waits(conn)
            await conn.execute(
                "SELECT ensure_pings_partitions(%s, %s)", [min(missing), max(missing)]
            )
        self._days_with_partitions |= missing

    async def _call(self, query: str, params: list[Any]) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            await self._bound_waits(conn)
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def ensure_partitions(self, days_back: int, days_ahead: int) -> int:
        """Creates the daily `pings` partitions around today; returns how many it made."""
        return await self._call(
            "SELECT ensure_pings_partitions("
            " (now() AT TIME ZONE 'UTC')::date - %s, (now() AT TIME ZONE 'UTC')::date + %s)",
            [days_back, days_ahead],
        )

    async def drop_partitions_older_than(self, retention_days: int) -> int:
        return await self._call(
            "SELECT drop_pings_partitions_before((now() AT TIME ZONE 'UTC')::date - %s)",
            [retention_days],
        )

    async def drop_aggregates_older_than(self, minutes: timedelta, hours: timedelta) -> int:
        """Deletes minute rows older than `minutes` and hourly rows older than `hours`."""
        return await self._call(
            "SELECT drop_aggregates_before(now() - %s, now() - %s)", [minutes, hours]
        )

    async def ping(self) -> None:
        """Raises SinkUnavailable unless the database answers (for /readyz)."""
        try:
            async with self._pool.connection(timeout=1.0) as conn:
                await conn.execute("SELECT 1")
        except DATABASE_ERRORS as exc:
            raise SinkUnavailable(f"database unreachable: {exc!r}") from exc
