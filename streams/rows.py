"""Pure mapping from cleaned pings to `pings` rows, in the sink's column order."""

from datetime import datetime
from uuid import UUID

from h3.api import basic_int as h3

from streams.clean import CleanPing
from streams.jobs import resolve_job_id

H3_RESOLUTION = 8  # cells of about 0.7 km2: a few city blocks

PING_COLUMNS = (
    "driver_id", "ts", "ping_id", "lat", "lon", "accuracy_m", "speed_mps",
    "heading_deg", "battery_pct", "job_id", "received_at", "flags", "h3_cell",
)  # fmt: skip
PING_TYPES = (
    "text", "timestamptz", "uuid", "float8", "float8", "float4", "float4",
    "float4", "float4", "uuid", "timestamptz", "text[]", "int8",
)  # fmt: skip

PingRow = tuple[
    str, datetime, UUID, float, float, float | None, float | None,
    float | None, float | None, UUID | None, datetime, list[str], int,
]  # fmt: skip


def h3_cell(lat: float, lon: float) -> int:
    cell: int = h3.latlng_to_cell(lat, lon, H3_RESOLUTION)
    return cell


def ping_rows(
    pings: list[CleanPing], assigned: set[tuple[UUID, str]] | None = None
) -> list[PingRow]:
    """Rows in column order; a ping's `job_id` only when `assigned` holds that job for that
    driver (streams.jobs.resolve_job_id)."""
    assigned = assigned or set()
    return [
        (c.driver_id, c.ping.ts, c.ping.ping_id, c.ping.lat, c.ping.lon, c.ping.accuracy_m,
         c.ping.speed_mps, c.ping.heading_deg, c.ping.battery_pct, resolve_job_id(c, assigned),
         c.received_at, list(c.flags), h3_cell(c.ping.lat, c.ping.lon))
        for c in pings
    ]  # fmt: skip
