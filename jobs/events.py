"""One way to record a job event: its `job_events` row and its `job-events.v1` record in the
outbox, both written in the caller's transaction, which holds the job's row locked and has
just given it the event's seq. The record is the `JobEvent` schema's JSON (schemas/jobs.py),
whoever records it: the api, the photo worker or the stream."""

from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection

from schemas import topics
from schemas.jobs import EventType, Job, JobEvent


async def record(
    conn: AsyncConnection[Any], job: Job, event_type: EventType, at: datetime, data: dict[str, Any]
) -> None:
    """Writes the event of the change that made `job` (its seq and status are the event's).
    The relay (jobs/relay.py) publishes the outbox row once the transaction commits."""
    event = JobEvent(
        job_id=job.job_id, seq=job.seq, type=event_type, status=job.status, at=at, data=data
    )
    payload = event.model_dump(mode="json")
    await conn.execute(
        "INSERT INTO job_events (job_id, seq, type, status, data, at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        [job.job_id, job.seq, event_type, job.status.value, orjson.dumps(data).decode(), at],
    )
    await conn.execute(
        "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
        [topics.JOB_EVENTS, str(job.job_id), orjson.dumps(payload).decode()],
    )
