"""Jobs in PostgreSQL. Every change writes the job row, its `job_events` row and an
`outbox` row in one transaction: the event exists exactly when the change does, and its
seq comes from the job row, which the transaction holds locked."""

import base64
import hashlib
import secrets
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from uuid6 import uuid7

from jobs import events
from jobs.errors import Conflict, Forbidden, IdempotencyKeyReused
from jobs.rules import Action, Owners, check_visible, next_status
from schemas import topics
from schemas.auth import Principal, Role
from schemas.jobs import (
    EventType,
    Job,
    JobCreate,
    JobPage,
    JobStatus,
    Point,
    ShareLink,
    share_token_hash,
)
from schemas.tasks import ProofPhotoTask, Task, TaskAccepted

# A job's columns, as every reader of jobs selects them (`from_row` makes the Job).
COLUMNS = (
    "job_id, status, customer_id, driver_id, pickup_lat, pickup_lon, dropoff_lat,"
    " dropoff_lon, reference, seq, created_at, updated_at"
)


# Every job; `from_row` makes the Job of a row.
SELECT = f"SELECT {COLUMNS} FROM jobs"


def from_row(row: dict[str, Any]) -> Job:
    return Job(
        job_id=row["job_id"],
        status=JobStatus(row["status"]),
        customer_id=row["customer_id"],
        driver_id=row["driver_id"],
        pickup=Point(lat=row["pickup_lat"], lon=row["pickup_lon"]),
        dropoff=Point(lat=row["dropoff_lat"], lon=row["dropoff_lon"]),
        reference=row["reference"],
        seq=row["seq"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def create(
    conn: AsyncConnection[Any], who: Principal, body: JobCreate, customer_id: str | None
) -> Job:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"INSERT INTO jobs (job_id, customer_id, created_by, status, pickup_lat, pickup_lon,"
            f" dropoff_lat, dropoff_lon, reference, seq)"
            f" VALUES (%s, %s, %s, 'created', %s, %s, %s, %s, %s, 1) RETURNING {COLUMNS}",
            [
                uuid7(),
                customer_id,
                who.sub,
                body.pickup.lat,
                body.pickup.lon,
                body.dropoff.lat,
                body.dropoff.lon,
                body.reference,
            ],
        )
        row = await cur.fetchone()
    assert row is not None
    job = from_row(row)
    await events.record(conn, job, "job.created", job.created_at, {"created_by": who.sub})
    return job


async def read(conn: AsyncConnection[Any], job_id: UUID, *, lock: bool = False) -> Job | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {COLUMNS} FROM jobs WHERE job_id = %s{' FOR UPDATE' if lock else ''}",
            [job_id],
        )
        row = await cur.fetchone()
    return None if row is None else from_row(row)


def owners(job: Job | None) -> Owners | None:
    return None if job is None else Owners(job.customer_id, job.driver_id)


async def transition(
    conn: AsyncConnection[Any],
    who: Principal | None,
    job_id: UUID,
    action: Action,
    *,
    driver_id: str | None = None,
    reason: str | None = None,
) -> Job:
    """Moves a job on by `action` inside the caller's transaction (the row stays locked
    until it ends). `who` None: the platform (a worker), which sees every job. `reason`
    goes into the event (why a proof was refused)."""
    job = await read(conn, job_id, lock=True)
    if who is not None:
        check_visible(who, owners(job), job_id)
    if job is None:
        raise AssertionError(f"job {job_id} vanished")  # pragma: no cover - FK guarded
    status = next_status(who, action, Owners(job.customer_id, job.driver_id), job.status)
    stamp = {
        JobStatus.ASSIGNED: "assigned_at",
        JobStatus.PICKED_UP: "picked_up_at",
        JobStatus.COMPLETED: "completed_at",
        JobStatus.CANCELLED: "cancelled_at",
    }.get(status)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"UPDATE jobs SET status = %s, driver_id = coalesce(%s, driver_id), seq = seq + 1,"
            f" updated_at = now(){f', {stamp} = now()' if stamp else ''}"
            f" WHERE job_id = %s RETURNING {COLUMNS}",
            [status.value, driver_id, job_id],
        )
        row = await cur.fetchone()
    assert row is not None
    changed = from_row(row)
    data = {"action": action.value, "by": who.sub if who is not None else "platform"}
    if driver_id is not None:
        data["driver_id"] = driver_id
    if reason is not None:
        data["reason"] = reason
    event: EventType = "job.completed" if status == JobStatus.COMPLETED else "job.status"
    await events.record(conn, changed, event, changed.updated_at, data)
    if status == JobStatus.CANCELLED:
        # A cancelled delivery is nobody's to follow: its links end with it (the event's
        # write-through drops their cached views).
        await revoke_shares(conn, job_id)
    return changed


PAGE_SIZE = 50


def encode_cursor(job_id: UUID) -> str:
    return base64.urlsafe_b64encode(job_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> UUID:
    """A cursor from `encode_cursor`; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return UUID(bytes=raw)
    except (ValueError, TypeError) as exc:
        raise ValueError("not a cursor this api made") from exc


async def page(
    conn: AsyncConnection[Any], who: Principal, cursor: UUID | None, limit: int = PAGE_SIZE
) -> JobPage:
    """The caller's jobs, newest first (UUIDv7 ids sort by creation time)."""
    scopes: dict[Role, tuple[str, list[Any]]] = {
        Role.CUSTOMER: ("customer_id = %s", [who.sub]),
        Role.DRIVER: ("driver_id = %s", [who.sub]),
    }
    where, params = scopes.get(who.role, ("true", []))
    if cursor is not None:
        where += " AND job_id < %s"
        params = [*params, cursor]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {COLUMNS} FROM jobs WHERE {where} ORDER BY job_id DESC LIMIT %s",
            [*params, limit + 1],
        )
        rows = await cur.fetchall()
    jobs = [from_row(r) for r in rows[:limit]]
    more = len(rows) > limit
    return JobPage(jobs=jobs, next_cursor=encode_cursor(jobs[-1].job_id) if more else None)


# --- idempotency keys -------------------------------------------------------------------


def request_hash(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), body])).digest()


async def replayed(
    conn: AsyncConnection[Any], who: Principal, key: str, digest: bytes
) -> tuple[int, bytes] | None:
    """The first answer to this key, or None when it is new. Refuses a key that came
    with another request."""
    cur = await conn.execute(
        "SELECT request_hash, status, response FROM idempotency_keys"
        " WHERE principal = %s AND key = %s",
        [who.key, key],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    if bytes(row[0]) != digest:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was used for a different request; use a new key"
        )
    return int(row[1]), bytes(row[2])


async def key_known(conn: AsyncConnection[Any], who: Principal, key: str) -> bool:
    """An answer is remembered under this key (a retry, to be replayed whatever the job's
    status is now)."""
    cur = await conn.execute(
        "SELECT 1 FROM idempotency_keys WHERE principal = %s AND key = %s", [who.key, key]
    )
    return await cur.fetchone() is not None


async def remember(
    conn: AsyncConnection[Any], who: Principal, key: str, digest: bytes, status: int, body: bytes
) -> None:
    """Stores the answer in the transaction that made it; a concurrent twin that got
    there first makes this raise UniqueViolation (the caller then replays its answer)."""
    await conn.execute(
        "INSERT INTO idempotency_keys (principal, key, request_hash, status, response)"
        " VALUES (%s, %s, %s, %s, %s)",
        [who.key, key, digest, status, body],
    )


UniqueViolation = psycopg.errors.UniqueViolation


# --- share links --------------------------------------------------------------------------


async def create_share(
    conn: AsyncConnection[Any], who: Principal, job_id: UUID, ttl_s: int, max_live: int
) -> ShareLink:
    """A new link to a job the caller may share; only the token's hash is stored. A job
    has at most `max_live` live links (Conflict past it): each costs a view write on every
    change of the job."""
    job = await read(conn, job_id, lock=True)  # concurrent shares of one job count in turn
    check_sharer(who, job, job_id)
    cur = await conn.execute(
        "SELECT count(*) FROM share_links WHERE job_id = %s AND expires_at > now()", [job_id]
    )
    live = await cur.fetchone()
    if live is not None and live[0] >= max_live:
        raise Conflict(
            f"job {job_id} has {live[0]} live share links, the most it may have:"
            " revoke them (DELETE /v1/jobs/{id}/share) or wait for one to expire"
        )
    token = secrets.token_urlsafe(24)
    cur = await conn.execute(
        "INSERT INTO share_links (token_hash, job_id, created_by, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) RETURNING expires_at",
        [share_token_hash(token), job_id, who.sub, ttl_s],
    )
    row = await cur.fetchone()
    assert row is not None
    return ShareLink(
        token=token, url=f"/v1/share/{token}", page_url=f"/s/{token}", expires_at=row[0]
    )


def check_sharer(who: Principal, job: Job | None, job_id: UUID) -> None:
    """Who may share a job, or revoke its links: its customer, or a dispatcher."""
    check_visible(who, owners(job), job_id)
    if who.role not in (Role.CUSTOMER, Role.DISPATCHER):
        raise Forbidden(f"role {who.role.value!r} may not share jobs")


async def revoke_all_shares(
    conn: AsyncConnection[Any], who: Principal, job_id: UUID
) -> list[bytes]:
    """`DELETE /v1/jobs/{id}/share`: the caller's check, then `revoke_shares`."""
    check_sharer(who, await read(conn, job_id, lock=True), job_id)
    return await revoke_shares(conn, job_id)


# A share link's job and the link's expiry (an unknown or expired link: no row).
SELECT_SHARED = (
    f"SELECT s.expires_at AS link_expires_at, {', '.join('j.' + c for c in COLUMNS.split(', '))}"
    " FROM share_links s JOIN jobs j USING (job_id)"
    " WHERE s.token_hash = %s AND s.expires_at > now()"
)


async def recent_share_links(
    conn: AsyncConnection[Any], job_id: UUID, limit: int
) -> list[tuple[bytes, datetime]]:
    """The hashes and expiries of the job's share links that are live or ended within the
    last minute (a revoked link ended when it was revoked), newest expiry first, at most
    `limit`."""
    cur = await conn.execute(
        "SELECT token_hash, expires_at FROM share_links WHERE job_id = %s"
        " AND expires_at > now() - interval '1 minute' ORDER BY expires_at DESC LIMIT %s",
        [job_id, limit],
    )
    return [(bytes(row[0]), row[1]) for row in await cur.fetchall()]


async def revoke_shares(conn: AsyncConnection[Any], job_id: UUID) -> list[bytes]:
    """Ends every live link of the job now (a revoked link is one that expired); returns
    their hashes, whose cached views must go too."""
    cur = await conn.execute(
        "UPDATE share_links SET expires_at = now() WHERE job_id = %s AND expires_at > now()"
        " RETURNING token_hash",
        [job_id],
    )
    return [bytes(row[0]) for row in await cur.fetchall()]


# A job with its track's window: when its driver was last assigned, and when it ended,
# completed or cancelled (null while it has not).
SELECT_WITH_WINDOW = (
    f"SELECT {COLUMNS}, assigned_at, coalesce(completed_at, cancelled_at) AS ended_at"
    " FROM jobs WHERE job_id = %s"
)


# --- completion and its task ---------------------------------------------------------------


async def complete(
    conn: AsyncConnection[Any], who: Principal, job_id: UUID, blob: str
) -> TaskAccepted:
    """The driver's completion: the job moves to `completing`, a task to process the proof
    is written, and its `tasks.v1` record goes through the outbox, all in one transaction."""
    await transition(conn, who, job_id, Action.COMPLETE)
    task = ProofPhotoTask(task_id=uuid7(), job_id=job_id, blob=blob)
    await conn.execute(
        "INSERT INTO tasks (task_id, kind, job_id, status, input)"
        " VALUES (%s, %s, %s, 'pending', %s)",
        [task.task_id, task.kind, job_id, orjson.dumps({"blob": blob}).decode()],
    )
    await conn.execute(
        "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s)",
        [topics.TASKS, str(job_id), task.model_dump_json()],
    )
    return TaskAccepted(task_id=task.task_id)


SELECT_TASK = (
    "SELECT task_id, kind, job_id, status, result, error, created_at, updated_at"
    " FROM tasks WHERE task_id = %s"
)


async def read_task(conn: AsyncConnection[Any], task_id: UUID) -> Task | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SELECT_TASK, [task_id])
        row = await cur.fetchone()
    return None if row is None else Task.model_validate(row)


async def finish_task(
    conn: AsyncConnection[Any],
    task: ProofPhotoTask,
    result: dict[str, Any] | None,
    error: str | None,
) -> str:
    """Marks a pending task done (with `result`) or failed (with `error`), and moves its job
    on in the caller's transaction: completed, or back to the driver with the reason in its
    event. Returns "done", "failed", or "skipped" when the task is no longer pending (another
    worker finished it meanwhile, a rebalance)."""
    locked = await conn.execute(
        "SELECT status FROM tasks WHERE task_id = %s FOR UPDATE", [task.task_id]
    )
    row = await locked.fetchone()
    if row is None or row[0] != "pending":
        return "skipped"
    outcome = "done" if error is None else "failed"
    await conn.execute(
        "UPDATE tasks SET status = %s, result = %s, error = %s, updated_at = now()"
        " WHERE task_id = %s",
        [outcome, orjson.dumps(result).decode() if result else None, error, task.task_id],
    )
    if error is None:
        await transition(conn, None, task.job_id, Action.FINISH)
    else:
        # A refused proof sends the job back to the driver, who may send another.
        await transition(conn, None, task.job_id, Action.REFUSE_PROOF, reason=error)
    return outcome


# --- the stream's reads and its one change ---------------------------------------------------

# Jobs by their own keys (the claimed job ids, a batch's driver ids): never joined to pings
# in SQL, where a ping's job would be trusted before it is checked.
SELECT_ASSIGNED = "SELECT job_id, driver_id FROM jobs WHERE job_id = ANY(%s)"
_UNDER_WAY = "status IN ('picked_up', 'completing') AND arrived_at IS NULL"
SELECT_ARRIVING = (
    "SELECT job_id, driver_id, dropoff_lat, dropoff_lon FROM jobs WHERE driver_id = ANY(%s)"
    f" AND {_UNDER_WAY}"
)


async def arrive(conn: AsyncConnection[Any], job_id: UUID) -> bool:
    """Records a job's first arrival at its dropoff while it is under way (picked up, or its
    proof being processed): `arrived_at`, a new seq and a `job.arrived` event. False when
    it arrived before or is not under way (nothing is written)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE jobs SET arrived_at = now(), seq = seq + 1, updated_at = now()"
            f" WHERE job_id = %s AND {_UNDER_WAY} RETURNING {COLUMNS}",
            [job_id],
        )
        row = await cur.fetchone()
    if row is None:
        return False
    job = from_row(row)
    await events.record(conn, job, "job.arrived", job.updated_at, {"driver_id": job.driver_id})
    return True


# --- the notifier's reads ------------------------------------------------------------------

SELECT_JOBS = f"SELECT {COLUMNS} FROM jobs WHERE job_id = ANY(%s)"
# The links among the given hashes that are live now (not expired, not revoked).
SELECT_LIVE_SHARES = (
    "SELECT token_hash, job_id, expires_at FROM share_links"
    " WHERE token_hash = ANY(%s) AND expires_at > now()"
)
# A job's events after a seq, oldest first, at most a limit.
SELECT_EVENTS_AFTER = (
    "SELECT job_id, seq, type, status, data, at FROM job_events"
    " WHERE job_id = %s AND seq > %s ORDER BY seq LIMIT %s"
)
