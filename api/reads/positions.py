"""Reading a driver's latest position (a replica read)."""

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from pydantic import BaseModel


class DriverPosition(BaseModel):
    driver_id: str
    lat: float
    lon: float
    ts: datetime
    speed_mps: float | None
    heading_deg: float | None
    accuracy_m: float | None


# A driver's latest position, as DriverPosition's fields.
SELECT_POSITION = (
    "SELECT driver_id, lat, lon, ts, speed_mps, heading_deg, accuracy_m"
    " FROM driver_positions WHERE driver_id = %s"
)


async def read_driver_position(conn: AsyncConnection[Any], driver_id: str) -> DriverPosition | None:
    async with conn.cursor(row_factory=class_row(DriverPosition)) as cur:
        await cur.execute(SELECT_POSITION, [driver_id])
        return await cur.fetchone()


# A minute averaging less than this was spent standing (loading, handing over, parked):
# it says nothing about how fast the driver will get there once moving again.
MOVING_MPS = 1.0


async def read_recent_speed(
    conn: AsyncConnection[Any], driver_id: str, since: datetime
) -> float | None:
    """The driver's average speed over the minutes since `since` spent moving (stops at
    corners included, minutes standing left out), from the minute aggregates; None when
    there were none."""
    cur = await conn.execute(
        "SELECT sum(avg_speed_mps * pings) / nullif(sum(pings), 0) FROM driver_stats_1m"
        " WHERE driver_id = %s AND bucket >= date_trunc('minute', %s::timestamptz)"
        " AND avg_speed_mps >= %s",
        [driver_id, since, MOVING_MPS],
    )
    row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


# (lon, lat) of a driver's valid fixes in [start, end), oldest first, at most a limit: the
# pings that count everywhere else too (all but `future` and `teleport`).
SELECT_TRACK = (
    "SELECT lon, lat FROM pings WHERE driver_id = %s AND ts >= %s AND ts < %s"
    " AND NOT (flags && '{future,teleport}'::text[]) ORDER BY ts LIMIT %s"
)
