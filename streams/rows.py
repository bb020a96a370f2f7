"""Pure mapping from decoded batches to `pings` rows, in the sink's column order."""

from datetime import datetime
from uuid import UUID

from schemas.pings import PingBatchRecord

PING_COLUMNS = (
    "driver_id", "ts", "ping_id", "lat", "lon", "accuracy_m", "speed_mps",
    "heading_deg", "battery_pct", "job_id", "received_at", "flags",
)  # fmt: skip
PING_TYPES = (
    "text", "timestamptz", "uuid", "float8", "float8", "float4", "float4",
    "float4", "float4", "uuid", "timestamptz", "text[]",
)  # fmt: skip

PingRow = tuple[
    str, datetime, UUID, float, float, float | None, float | None,
    float | None, float | None, UUID | None, datetime, list[str],
]  # fmt: skip


def ping_rows(records: list[PingBatchRecord]) -> list[PingRow]:
    return [
        (record.driver_id, p.ts, p.ping_id, p.lat, p.lon, p.accuracy_m, p.speed_mps,
         p.heading_deg, p.battery_pct, p.job_id, record.received_at, [])
        for record in records
        for p in record.pings
    ]  # fmt: skip
