"""The jobs endpoints (docs/api.md). Writes go to the primary, and record the
writer's WAL position for read-your-writes; a job's view comes through the view cache
(api/reads/views.py); the list and the track read the primary."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

import orjson
import psycopg
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from psycopg import AsyncConnection
from pydantic import AwareDatetime, BaseModel

from api.deps import CallerDep, State, StateDep
from api.errors import DatabaseUnavailable, InvalidInput
from api.reads.extras import MAX_FIXES, track_span
from api.reads.positions import SELECT_TRACK
from api.reads.routing import write_position
from api.reads.views import job_answer
from api.track import feature
from api.uploads import PHOTO_BODY, read_photo
from jobs import store as job_store
from jobs.photos import check_photo
from jobs.rules import Action, check_allowed, check_creator, check_status, check_visible
from runtime.http import error_responses, json_response
from runtime.postgres import TRANSIENT_ERRORS
from schemas.auth import Principal
from schemas.jobs import (
    Job,
    JobAssign,
    JobCreate,
    JobPage,
    ShareCreate,
    ShareLink,
    SharesRevoked,
)
from schemas.tasks import TaskAccepted

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="A retry with the same key gets the first answer again",
    ),
]
GEOJSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/geo+json": {"schema": {"type": "object"}}}}
}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


async def write(
    shared: State,
    who: Principal,
    request: Request,
    key: str | None,
    status: int,
    work: Callable[[AsyncConnection[Any]], Awaitable[BaseModel]],
    content: bytes | None = None,
) -> Response:
    """Runs `work` in one transaction on the primary, remembering its answer under the
    Idempotency-Key when there is one (a retry gets that answer, not a second change).
    `content`: what identifies the request when its raw body does not (an upload)."""
    if content is None:
        content = await request.body()
    digest = job_store.request_hash(request.method, request.url.path, content)
    for attempt in (1, 2):
        try:
            async with shared.pools.writer().connection() as conn:
                async with conn.transaction():
                    if key is not None:
                        earlier = await job_store.replayed(conn, who, key, digest)
                        if earlier is not None:
                            return _json_bytes(earlier[1], earlier[0])
                    body = orjson.dumps((await work(conn)).model_dump(mode="json"))
                    if key is not None:
                        await job_store.remember(conn, who, key, digest, status, body)
                await shared.read_path.cache.remember_position(who.key, await _position_after(conn))
            return _json_bytes(body, status)
        except job_store.UniqueViolation:
            if attempt == 2:
                raise
            # A concurrent retry with the same key committed first: replay its answer.
        except TRANSIENT_ERRORS as exc:
            shared.db_errors.inc()
            raise DatabaseUnavailable(str(exc)) from exc
    raise AssertionError("unreachable")  # pragma: no cover


@router.post(
    "",
    status_code=201,
    response_model=Job,
    summary="Create a job (customer or dispatcher)",
    responses=error_responses(401, 403, 413, 422, 429, 503),
)
async def create_job(
    body: JobCreate, request: Request, who: CallerDep, shared: StateDep, key: IdempotencyKey = None
) -> Response:
    customer_id = check_creator(who, body.customer_id)
    return await write(
        shared, who, request, key, 201, lambda conn: job_store.create(conn, who, body, customer_id)
    )


@router.post(
    "/{job_id}/assign",
    response_model=Job,
    summary="Assign a driver (dispatcher)",
    responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503),
)
async def assign(
    job_id: UUID,
    body: JobAssign,
    request: Request,
    who: CallerDep,
    shared: StateDep,
    key: IdempotencyKey = None,
) -> Response:
    return await write(
        shared,
        who,
        request,
        key,
        200,
        lambda conn: job_store.transition(
            conn, who, job_id, Action.ASSIGN, driver_id=body.driver_id
        ),
    )


# Pickup and cancel: the action is the route's, never a parameter a client could choose.
@router.post(
    "/{job_id}/pickup",
    response_model=Job,
    summary="The assigned driver has picked the goods up",
    responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503),
)
async def pickup_job(
    job_id: UUID, request: Request, who: CallerDep, shared: StateDep, key: IdempotencyKey = None
) -> Response:
    return await write(
        shared,
        who,
        request,
        key,
        200,
        lambda c: job_store.transition(c, who, job_id, Action.PICKUP),
    )


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    summary="Cancel a job before its pickup (its customer or a dispatcher)",
    responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503),
)
async def cancel_job(
    job_id: UUID, request: Request, who: CallerDep, shared: StateDep, key: IdempotencyKey = None
) -> Response:
    return await write(
        shared,
        who,
        request,
        key,
        200,
        lambda c: job_store.transition(c, who, job_id, Action.CANCEL),
    )


@router.post(
    "/{job_id}/complete",
    status_code=202,
    response_model=TaskAccepted,
    summary="The assigned driver delivers, with a proof photo; a worker finishes the job",
    openapi_extra=PHOTO_BODY,
    responses=error_responses(401, 403, 404, 408, 409, 413, 422, 429, 503),
)
async def complete(
    job_id: UUID, request: Request, who: CallerDep, shared: StateDep, key: IdempotencyKey = None
) -> Response:
    # Who may complete, and whether the job can be, before a byte of the upload is
    # read (a critical read: the primary): a refused upload is never read nor stored.
    # A retry of a remembered key is read, to be replayed. The write's transaction
    # checks it all again.
    async def retried(conn: AsyncConnection[Any], rows: list[dict[str, Any]]) -> bool:
        return key is not None and await job_store.key_known(conn, who, key)

    got, retry = await shared.read_path.router.read_then(
        "job_state", f"{job_store.SELECT} WHERE job_id = %s", [job_id], retried, critical=True
    )
    job = job_store.from_row(got.rows[0]) if got.rows else None
    owners = check_visible(who, job_store.owners(job), job_id)
    check_allowed(who, Action.COMPLETE, owners)
    if job is not None and not retry:
        check_status(Action.COMPLETE, job.status)
    photo = await read_photo(request, shared.settings.body_timeout_s)
    check_photo(photo)  # the header only: decoding is the worker's
    blob = await asyncio.to_thread(shared.blobs.put, photo)
    return await write(
        shared,
        who,
        request,
        key,
        202,
        lambda conn: job_store.complete(conn, who, job_id, blob),
        content=blob.encode(),  # the photo's digest: a retry's multipart boundary differs
    )


@router.post(
    "/{job_id}/share",
    status_code=201,
    response_model=ShareLink,
    summary="A link anyone can open to follow the delivery (its customer or a dispatcher)",
    responses=error_responses(401, 403, 404, 413, 422, 429, 503),
)
async def share(
    job_id: UUID,
    request: Request,
    who: CallerDep,
    shared: StateDep,
    body: ShareCreate | None = None,
    key: IdempotencyKey = None,
) -> Response:
    ttl_s, most = (body or ShareCreate()).ttl_s, shared.settings.max_share_links_per_job
    return await write(
        shared,
        who,
        request,
        key,
        201,
        lambda conn: job_store.create_share(conn, who, job_id, ttl_s, most),
    )


@router.delete(
    "/{job_id}/share",
    response_model=SharesRevoked,
    summary="End every live share link of a job (its customer or a dispatcher)",
    responses=error_responses(401, 403, 404, 422, 429, 503),
)
async def revoke_shares(
    job_id: UUID, request: Request, who: CallerDep, shared: StateDep
) -> Response:
    revoked: list[bytes] = []

    async def revoke(conn: AsyncConnection[Any]) -> SharesRevoked:
        revoked[:] = await job_store.revoke_all_shares(conn, who, job_id)
        return SharesRevoked(revoked=len(revoked))

    # Idempotent as it is (a second call ends nothing more): no Idempotency-Key.
    answer = await write(shared, who, request, None, 200, revoke)
    # Committed: drop the links' cached views at once (the edge keeps a public copy for
    # at most the view's max-age).
    cache, views = shared.read_path.cache, shared.read_path.views
    await cache.forget(views.share, [h.hex() for h in revoked])
    return answer


@router.get(
    "/{job_id}/track",
    summary="The driver's track during the job, a GeoJSON Feature with a LineString",
    responses=GEOJSON | error_responses(401, 404, 422, 429, 503),
)
async def track(
    job_id: UUID,
    who: CallerDep,
    shared: StateDep,
    start: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to")] = None,
) -> Response:
    # Both reads go through the read router: its gate, its lag routing, its fallback to
    # the primary. The job's window is critical (a change just made shows at once).
    router = shared.read_path.router
    got = await router.read("track_job", job_store.SELECT_WITH_WINDOW, [job_id], critical=True)
    job = job_store.from_row(got.rows[0]) if got.rows else None
    assigned_at, ended_at = (
        (got.rows[0]["assigned_at"], got.rows[0]["ended_at"]) if got.rows else (None, None)
    )
    check_visible(who, job_store.owners(job), job_id)
    assert job is not None
    lo, hi = track_span(assigned_at, ended_at, start, end, shared.clock.now())
    points: list[tuple[float, float]] = []
    if job.driver_id is not None and assigned_at is not None and lo < hi:
        # At least what the primary held when the job was read: every fix stored
        # before the request is in its answer (the replica if it has replayed that far).
        params = [job.driver_id, lo, hi, MAX_FIXES]
        fixes = await router.read("track", SELECT_TRACK, params, min_lsn=got.lsn)
        points = [(float(r["lon"]), float(r["lat"])) for r in fixes.rows]
    properties = {"job_id": str(job_id), "driver_id": job.driver_id}
    # Simplifying a long track is CPU work: off the event loop, a few at a time.
    async with shared.simplifying:
        answer = await asyncio.to_thread(feature, points, properties, lo, hi)
    return json_response(answer, headers={"Content-Type": "application/geo+json"})


@router.get(
    "/{job_id}",
    response_model=Job,
    summary="A job: status, driver, the driver's position while under way",
    responses=error_responses(401, 404, 422, 429, 503),
)
async def get_job(job_id: UUID, who: CallerDep, request: Request, shared: StateDep) -> Response:
    if_none_match = request.headers.get("if-none-match")
    return await job_answer(shared.read_path, who, job_id, if_none_match)


@router.get(
    "",
    response_model=JobPage,
    summary="The caller's jobs, newest first",
    responses=error_responses(401, 422, 429, 503),
)
async def list_jobs(
    who: CallerDep,
    shared: StateDep,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = job_store.PAGE_SIZE,
) -> Response:
    try:
        after = job_store.decode_cursor(cursor) if cursor is not None else None
    except ValueError as exc:
        raise InvalidInput(f"cursor: {exc}") from exc
    try:
        async with shared.pools.writer().connection() as conn:
            result = await job_store.page(conn, who, after, limit)
    except TRANSIENT_ERRORS as exc:
        shared.db_errors.inc()
        raise DatabaseUnavailable(str(exc)) from exc
    return json_response(result.model_dump(mode="json"))


# Past any position a server reaches: the writer's reads go to the primary until it ends.
UNKNOWN_POSITION = 2**62


async def _position_after(conn: AsyncConnection[Any]) -> int:
    """The position the writer's later reads must include. The change has committed: if
    the position cannot be asked for, the answer must still be the success it is."""
    try:
        return await write_position(conn)
    except psycopg.Error:
        return UNKNOWN_POSITION


def _json_bytes(body: bytes, status: int) -> Response:
    return Response(body, status_code=status, media_type="application/json")
