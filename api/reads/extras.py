"""What a job shows beyond its row: the driver's live position and ETA (replica reads,
combined here, never joined to jobs in SQL: each service owns its tables), and the track's span."""

from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from api.errors import InvalidInput
from api.eta import estimate
from api.reads.positions import read_driver_position, read_recent_speed
from schemas.jobs import DriverPositionView, Job, JobStatus

# A driver's position shows while the job is under way, not before or after.
LIVE = frozenset({JobStatus.ASSIGNED, JobStatus.PICKED_UP, JobStatus.COMPLETING})
RECENT = timedelta(minutes=5)  # the window of the speed the ETA divides by
# One track answer spans at most this (a day at one fix a second is 86,400 fixes).
MAX_TRACK = timedelta(hours=48)
MAX_FIXES = 200_000


def track_span(
    assigned_at: datetime | None,
    ended_at: datetime | None,
    start: datetime | None,
    end: datetime | None,
    now: datetime,
) -> tuple[datetime, datetime]:
    """The job's window (its assignment to its end, completed or cancelled, or now)
    narrowed by from/to, at most MAX_TRACK long: the latest part when `from` is not given,
    else from `from` on."""
    if start is not None and end is not None:
        if start >= end:
            raise InvalidInput("`from` must be before `to`")
        if end - start > MAX_TRACK:
            raise InvalidInput(f"from/to span at most {MAX_TRACK}")
    lo = max(filter(None, (assigned_at, start)), default=now)
    hi = min(filter(None, (ended_at, end, now)))
    if hi - lo > MAX_TRACK:
        lo, hi = (hi - MAX_TRACK, hi) if start is None else (lo, lo + MAX_TRACK)
    return lo, max(lo, hi)


async def with_live_position(conn: AsyncConnection[Any], job: Job, now: datetime) -> None:
    """Adds the driver's position and the ETA (from `now`) while the job is under way (the
    position and the speed come from the stream's tables, read apart, never joined to jobs)."""
    if job.driver_id is None or job.status not in LIVE:
        return
    position = await read_driver_position(conn, job.driver_id)
    speed = await read_recent_speed(conn, job.driver_id, now - RECENT)
    if position is None:
        return
    job.driver_position = DriverPositionView(
        lat=position.lat, lon=position.lon, ts=position.ts, speed_mps=position.speed_mps
    )
    stops = [job.dropoff] if job.status != JobStatus.ASSIGNED else [job.pickup, job.dropoff]
    eta = estimate(
        (position.lat, position.lon), position.ts, speed, [(p.lat, p.lon) for p in stops], now
    )
    job.eta_seconds, job.eta_basis = eta.seconds, eta.basis
