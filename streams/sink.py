"""The PostgreSQL sink: raw history by COPY, latest positions by a forward-only upsert."""

import logging
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from streams.errors import SinkUnavailable
from streams.rows import PING_COLUMNS, PING_TYPES, PingRow

log = logging.getLogger(__name__)

_STAGE = sql.SQL("CREATE TEMP TABLE pings_in (LIKE pings INCLUDING DEFAULTS) ON COMMIT DROP")
_COPY = sql.SQL("COPY pings_in ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(map(sql.Identifier, PING_COLUMNS))
)
# Replays and client retries deliver the same ping again: the primary key drops them.
_INSERT_HISTORY = "INSERT INTO pings SELECT * FROM pings_in ON CONFLICT DO NOTHING"
# The newest unflagged ping per driver, applied only if newer than what is stored, so an
# out-of-order or replayed batch never moves a driver back in time.
_UPSERT_POSITIONS = """
INSERT INTO driver_positions AS cur
    (driver_id, ts, ping_id, lat, lon, speed_mps, heading_deg, accuracy_m, job_id, updated_at)
SELECT DISTINCT ON (driver_id)
    driver_id, ts, ping_id, lat, lon, speed_mps, heading_deg, accuracy_m, job_id, now()
FROM pings_in
WHERE cardinality(flags) = 0
ORDER BY driver_id, ts DESC, ping_id DESC
ON CONFLICT (driver_id) DO UPDATE SET
    ts = excluded.ts, ping_id = excluded.ping_id, lat = excluded.lat, lon = excluded.lon,
    speed_mps = excluded.speed_mps, heading_deg = excluded.heading_deg,
    accuracy_m = excluded.accuracy_m, job_id = excluded.job_id, updated_at = excluded.updated_at
WHERE excluded.ts > cur.ts
"""


class PingSink:
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self._pool = pool

    async def write(self, rows: list[PingRow]) -> None:
        """Writes the rows in one transaction; SinkUnavailable if the database fails."""
        if not rows:
            return
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(_STAGE)
                async with conn.cursor().copy(_COPY) as copy:
                    copy.set_types(list(PING_TYPES))
                    for row in rows:
                        await copy.write_row(row)
                await conn.execute(_INSERT_HISTORY)
                await conn.execute(_UPSERT_POSITIONS)
        except (psycopg.Error, TimeoutError) as exc:
            raise SinkUnavailable(f"writing {len(rows)} pings failed: {exc}") from exc

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
