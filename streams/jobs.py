"""The stream's view of jobs, pure: which job a ping belongs to, and which jobs a batch
brings to their dropoff. Jobs are read by the batch's driver ids and job ids and combined
here, never joined to pings in SQL: each service owns its tables."""

from dataclasses import dataclass
from uuid import UUID

from runtime.geo import haversine_m
from streams.clean import CleanPing


@dataclass(frozen=True)
class ActiveJob:
    """A job under way after its pickup: the next place its driver is going to."""

    job_id: UUID
    driver_id: str
    dropoff: tuple[float, float]


def resolve_job_id(ping: CleanPing, assigned: set[tuple[UUID, str]]) -> UUID | None:
    """The ping's job only if that job is assigned to that driver: a body's claim is not
    trusted."""
    job_id = ping.ping.job_id
    return job_id if job_id is not None and (job_id, ping.driver_id) in assigned else None


def arrivals(pings: list[CleanPing], jobs: list[ActiveJob], radius_m: float) -> list[UUID]:
    """The jobs whose driver has a valid fix in this batch within `radius_m` of the
    dropoff (the database records the first arrival only)."""
    if not jobs:
        return []
    drivers = {job.driver_id for job in jobs}
    fixes: dict[str, list[tuple[float, float]]] = {}
    for p in pings:
        if p.driver_id not in drivers:
            continue
        if p.counted:  # a teleport or a future fix says nothing about where it was
            fixes.setdefault(p.driver_id, []).append((p.ping.lat, p.ping.lon))
    return [
        job.job_id
        for job in jobs
        if any(
            haversine_m(lat, lon, *job.dropoff) <= radius_m
            for lat, lon in fixes.get(job.driver_id, [])
        )
    ]
