"""The stream's view of jobs, pure: a ping's job only if assigned to its driver; arrival."""

import uuid
from datetime import UTC, datetime

from runtime.geo import destination
from schemas.pings_wire import WirePing
from streams.clean import FUTURE, TELEPORT, CleanPing
from streams.jobs import ActiveJob, arrivals, resolve_job_id
from streams.rows import PING_COLUMNS, ping_rows

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DROPOFF = (12.93, 77.62)
JOB, OTHER_JOB = uuid.uuid4(), uuid.uuid4()


def fix(
    driver: str, metres_from_dropoff: float, *flags: str, job: uuid.UUID | None = None
) -> CleanPing:
    lat, lon = destination(*DROPOFF, 0.0, metres_from_dropoff)
    ping = WirePing(uuid.uuid4(), T0, lat, lon, job_id=job)
    return CleanPing(driver, ping, T0, tuple(flags))


def test_a_pings_job_counts_only_when_assigned_to_its_driver() -> None:
    assigned = {(JOB, "drv-1")}
    assert resolve_job_id(fix("drv-1", 0, job=JOB), assigned) == JOB
    assert resolve_job_id(fix("drv-2", 0, job=JOB), assigned) is None  # someone else's job
    assert resolve_job_id(fix("drv-1", 0, job=OTHER_JOB), assigned) is None  # not theirs
    assert resolve_job_id(fix("drv-1", 0), assigned) is None
    rows = ping_rows([fix("drv-1", 0, job=JOB), fix("drv-2", 0, job=JOB)], assigned)
    assert [dict(zip(PING_COLUMNS, r, strict=True))["job_id"] for r in rows] == [JOB, None]


def test_a_driver_arrives_within_the_radius_of_the_dropoff() -> None:
    jobs = [ActiveJob(JOB, "drv-1", DROPOFF), ActiveJob(OTHER_JOB, "drv-2", DROPOFF)]
    assert arrivals([fix("drv-1", 150), fix("drv-2", 99)], jobs, 100) == [OTHER_JOB]
    assert arrivals([fix("drv-1", 300), fix("drv-1", 40)], jobs, 100) == [JOB]
    assert arrivals([fix("drv-3", 0)], jobs, 100) == []  # not their job


def test_a_teleport_or_a_future_fix_is_no_arrival() -> None:
    jobs = [ActiveJob(JOB, "drv-1", DROPOFF)]
    assert arrivals([fix("drv-1", 0, TELEPORT), fix("drv-1", 0, FUTURE)], jobs, 100) == []
    assert arrivals([fix("drv-1", 0, "late")], jobs, 100) == [JOB]  # a real fix, late
