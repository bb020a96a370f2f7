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


async def read_driver_position(conn: AsyncConnection[Any], driver_id: str) -> DriverPosition | None:
    async with conn.cursor(row_factory=class_row(DriverPosition)) as cur:
        await cur.execute(
            "SELECT driver_id, lat, lon, ts, speed_mps, heading_deg, accuracy_m"
            " FROM driver_positions WHERE driver_id = %s",
            [driver_id],
        )
        return await cur.fetchone()
