"""The PostgreSQL sink: one transaction per batch reads the drivers' state, cleans the batch
(pure), writes raw history by COPY, moves latest positions forward and recomputes the
aggregates the batch touched from the stored pings (so replays never double count)."""

import logging
from datetime import UTC, date
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from schemas.pings import PingBatchRecord
from streams.clean import CleanBatch, Position, clean
from streams.errors import SinkUnavailable
from streams.rows import PING_COLUMNS, PING_TYPES, ping_rows

log = logging.getLogger(__name__)

# Serialises writers of the same driver (two workers overlap briefly during a rebalance)
# and of the same cell-minute (cells span drivers, so partitions, so workers). Taken in
# key order: no deadlocks.
_LOCK_DRIVERS = """
SELECT count(pg_advisory_xact_lock(k)) FROM (
    SELECT DISTINCT hashtextextended('driver:' || d, 0) AS k FROM unnest(%s::text[]) AS d ORDER BY k
) AS keys
"""
_READ_LATEST = (
    "SELECT driver_id, ts, lat, lon FROM driver_positions WHERE driver_id = ANY(%s::text[])"
)
_STAGE = "CREATE TEMP TABLE pings_in (LIKE pings INCLUDING DEFAULTS) ON COMMIT DROP"
_COPY = sql.SQL("COPY pings_in ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(map(sql.Identifier, PING_COLUMNS))
)
# Replays and client retries deliver the same ping again: the primary key drops them.
_INSERT_HISTORY = "INSERT INTO pings SELECT * FROM pings_in ON CONFLICT DO NOTHING"
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
_LOCK_CELLS = """
SELECT count(pg_advisory_xact_lock(k)) FROM (
    SELECT DISTINCT hashtextextended('cell:' || h3_cell || ':' || date_trunc('minute', ts), 0) AS k
    FROM pings_in WHERE cardinality(flags) = 0 ORDER BY k
) AS keys
"""
# Each (driver, minute) the batch touched, recomputed whole from the valid stored pings.
_DRIVER_STATS = """
WITH touched AS (
    SELECT DISTINCT driver_id, date_trunc('minute', ts) AS bucket
    FROM pings_in WHERE cardinality(flags) = 0
), valid AS (
    SELECT p.driver_id, t.bucket, p.ts, p.ping_id, p.lat, p.lon, p.speed_mps
    FROM touched t JOIN pings p ON p.driver_id = t.driver_id
        AND p.ts >= t.bucket AND p.ts < t.bucket + interval '1 minute'
    WHERE cardinality(p.flags) = 0
), steps AS (
    SELECT driver_id, bucket, speed_mps,
        haversine_m(lag(lat) OVER w, lag(lon) OVER w, lat, lon) AS step_m
    FROM valid WINDOW w AS (PARTITION BY driver_id, bucket ORDER BY ts, ping_id)
)
INSERT INTO driver_stats_1m
    (driver_id, bucket, pings, distance_m, avg_speed_mps, max_speed_mps)
SELECT driver_id, bucket, count(*), coalesce(sum(step_m), 0), avg(speed_mps), max(speed_mps)
FROM steps GROUP BY driver_id, bucket
ON CONFLICT (driver_id, bucket) DO UPDATE SET
    pings = excluded.pings, distance_m = excluded.distance_m,
    avg_speed_mps = excluded.avg_speed_mps, max_speed_mps = excluded.max_speed_mps
"""
_CELL_DENSITY = """
WITH touched AS (
    SELECT DISTINCT h3_cell AS cell, date_trunc('minute', ts) AS bucket
    FROM pings_in WHERE cardinality(flags) = 0
)
INSERT INTO cell_density_1m (cell, bucket, drivers)
SELECT t.cell, t.bucket, count(DISTINCT p.driver_id)
FROM touched t JOIN pings p ON p.h3_cell = t.cell
    AND p.ts >= t.bucket AND p.ts < t.bucket + interval '1 minute'
WHERE cardinality(p.flags) = 0
GROUP BY t.cell, t.bucket
ON CONFLICT (cell, bucket) DO UPDATE SET drivers = excluded.drivers
"""
# Hourly rollups from the minute rows (no TimescaleDB here for continuous aggregates).
_DRIVER_STATS_HOURLY = """
WITH touched AS (
    SELECT DISTINCT driver_id, date_trunc('hour', ts) AS bucket
    FROM pings_in WHERE cardinality(flags) = 0
)
INSERT INTO driver_stats_1h
    (driver_id, bucket, pings, distance_m, avg_speed_mps, max_speed_mps)
SELECT m.driver_id, t.bucket, sum(m.pings), sum(m.distance_m),
    -- minute averages weighted by their ping counts
    sum(m.avg_speed_mps * m.pings) FILTER (WHERE m.avg_speed_mps IS NOT NULL)
        / nullif(sum(m.pings) FILTER (WHERE m.avg_speed_mps IS NOT NULL), 0),
    max(m.max_speed_mps)
FROM touched t JOIN driver_stats_1m m ON m.driver_id = t.driver_id
    AND m.bucket >= t.bucket AND m.bucket < t.bucket + interval '1 hour'
GROUP BY m.driver_id, t.bucket
ON CONFLICT (driver_id, bucket) DO UPDATE SET
    pings = excluded.pings, distance_m = excluded.distance_m,
    avg_speed_mps = excluded.avg_speed_mps, max_speed_mps = excluded.max_speed_mps
"""


class PingSink:
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self._pool = pool
        self._days_with_partitions: set[date] = set()
        self._hourly_in_stream: bool | None = None

    async def write(self, records: list[PingBatchRecord]) -> CleanBatch:
        """Writes the batch in one transaction and returns how it was cleaned;
        SinkUnavailable if the database fails (nothing of the batch is then written)."""
        if not records:
            return CleanBatch([], {})
        drivers = sorted({r.driver_id for r in records})
        try:
            await self._ensure_days({p.ts.astimezone(UTC).date() for r in records for p in r.pings})
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(_LOCK_DRIVERS, [drivers])
                cur = await conn.execute(_READ_LATEST, [drivers])
                latest = {d: Position(ts, lat, lon) for d, ts, lat, lon in await cur.fetchall()}
                batch = clean(records, latest)
                await conn.execute(_STAGE)
                async with conn.cursor().copy(_COPY) as copy:
                    copy.set_types(list(PING_TYPES))
                    for row in ping_rows(batch.pings):
                        await copy.write_row(row)
                await conn.execute(_INSERT_HISTORY)
                moved = list(batch.moved.values())
                await conn.execute(
                    _UPSERT_POSITIONS,
                    [[m.driver_id for m in moved], [m.ping.ping_id for m in moved]],
                )
                await conn.execute(_LOCK_CELLS)
                await conn.execute(_DRIVER_STATS)
                await conn.execute(_CELL_DENSITY)
                if await self._maintains_hourly(conn):
                    await conn.execute(_DRIVER_STATS_HOURLY)
        except (psycopg.Error, TimeoutError) as exc:
            raise SinkUnavailable(f"writing {len(records)} records failed: {exc}") from exc
        return batch

    async def _maintains_hourly(self, conn: AsyncConnection[Any]) -> bool:
        """On TimescaleDB the hourly rollup is a continuous aggregate (a view) that the
        database maintains; on plain PostgreSQL it is a table this stream maintains."""
        if self._hourly_in_stream is None:
            cur = await conn.execute(
                "SELECT relkind FROM pg_class WHERE oid = to_regclass('driver_stats_1h')"
            )
            row = await cur.fetchone()
            self._hourly_in_stream = row is not None and row[0] == "r"
        return self._hourly_in_stream

    async def _ensure_days(self, days: set[date]) -> None:
        """A ping of a day without a partition would fail the whole batch, every retry."""
        missing = days - self._days_with_partitions
        if not missing:
            return
        async with self._pool.connection() as conn:
            await conn.execute(
                "SELECT ensure_pings_partitions(%s, %s)", [min(missing), max(missing)]
            )
        self._days_with_partitions |= missing

    async def ensure_partitions(self, days_back: int, days_ahead: int) -> int:
        """Creates the daily `pings` partitions around today; returns how many it made."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ensure_pings_partitions("
                " (now() AT TIME ZONE 'UTC')::date - %s, (now() AT TIME ZONE 'UTC')::date + %s)",
                [days_back, days_ahead],
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def drop_partitions_older_than(self, retention_days: int) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT drop_pings_partitions_before((now() AT TIME ZONE 'UTC')::date - %s)",
                [retention_days],
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0
