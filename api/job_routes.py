"""The jobs endpoints (design section 6). Writes go to the primary; so do job reads for
now (read-your-writes through the replica is the read path's work, design section 14);
the driver's position comes from the replica."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

import orjson
import psycopg
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api import job_store
from api.errors import DatabaseUnavailable, InvalidInput
from api.job_rules import Action, check_creator, check_visible
from api.positions import read_driver_position
from runtime.http import error_responses, json_response
from schemas.auth import Principal
from schemas.jobs import DriverPositionView, Job, JobAssign, JobCreate, JobPage, JobStatus

Pool = AsyncConnectionPool[AsyncConnection[Any]]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="A retry with the same key gets the first answer again",
    ),
]
# A driver's position shows while the job is under way, not before or after.
LIVE = frozenset({JobStatus.ASSIGNED, JobStatus.PICKED_UP, JobStatus.COMPLETING})


def job_router(
    pools: dict[str, Pool],
    principal: Callable[..., Awaitable[Principal]],
    db_errors: Callable[[], None],
) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
    Caller = Annotated[Principal, Depends(principal)]

    async def write(
        who: Principal,
        request: Request,
        key: str | None,
        status: int,
        work: Callable[[AsyncConnection[Any]], Awaitable[Job]],
    ) -> Response:
        """Runs `work` in one transaction on the primary, remembering its answer under the
        Idempotency-Key when there is one (a retry gets that answer, not a second change)."""
        digest = job_store.request_hash(request.method, request.url.path, await request.body())
        for attempt in (1, 2):
            try:
                async with pools["write"].connection() as conn, conn.transaction():
                    if key is not None:
                        earlier = await job_store.replayed(conn, who, key, digest)
                        if earlier is not None:
                            return _json_bytes(earlier[1], earlier[0])
                    answer = orjson.dumps((await work(conn)).model_dump(mode="json"))
                    if key is not None:
                        await job_store.remember(conn, who, key, digest, status, answer)
                return _json_bytes(answer, status)
            except job_store.UniqueViolation:
                if attempt == 2:
                    raise
                # A concurrent retry with the same key committed first: replay its answer.
            except (psycopg.OperationalError, PoolTimeout) as exc:
                db_errors()
                raise DatabaseUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @router.post(
        "",
        status_code=201,
        response_model=Job,
        summary="Create a job (customer or dispatcher)",
        responses=error_responses(401, 403, 422, 503),
    )
    async def create_job(
        body: JobCreate, request: Request, who: Caller, key: IdempotencyKey = None
    ) -> Response:
        customer_id = check_creator(who, body.customer_id)
        return await write(
            who, request, key, 201, lambda conn: job_store.create(conn, who, body, customer_id)
        )

    @router.post(
        "/{job_id}/assign",
        response_model=Job,
        summary="Assign a driver (dispatcher)",
        responses=error_responses(401, 403, 404, 409, 422, 503),
    )
    async def assign(
        job_id: UUID, body: JobAssign, request: Request, who: Caller, key: IdempotencyKey = None
    ) -> Response:
        return await write(
            who,
            request,
            key,
            200,
            lambda conn: job_store.transition(
                conn, who, job_id, Action.ASSIGN, driver_id=body.driver_id
            ),
        )

    for action, summary in (
        (Action.PICKUP, "The assigned driver has picked the goods up"),
        (Action.CANCEL, "Cancel a job before its pickup (its customer or a dispatcher)"),
    ):

        async def act(
            job_id: UUID,
            request: Request,
            who: Caller,
            key: IdempotencyKey = None,
            action: Action = action,  # bound now: one route per action
        ) -> Response:
            return await write(
                who, request, key, 200, lambda conn: job_store.transition(conn, who, job_id, action)
            )

        router.add_api_route(
            f"/{{job_id}}/{action.value}",
            act,
            methods=["POST"],
            response_model=Job,
            summary=summary,
            name=f"{action.value}_job",
            responses=error_responses(401, 403, 404, 409, 422, 503),
        )

    @router.get(
        "/{job_id}",
        response_model=Job,
        summary="A job: status, driver, the driver's position while under way",
        responses=error_responses(401, 404, 422, 503),
    )
    async def get_job(job_id: UUID, who: Caller) -> Response:
        try:
            async with pools["write"].connection() as conn:
                job = await job_store.read(conn, job_id)
            check_visible(who, job_store.owners(job), job_id)
            assert job is not None
            if job.driver_id is not None and job.status in LIVE:
                async with pools["read"].connection() as conn:
                    position = await read_driver_position(conn, job.driver_id)
                if position is not None:
                    job.driver_position = DriverPositionView(
                        lat=position.lat, lon=position.lon, ts=position.ts,
                        speed_mps=position.speed_mps,
                    )  # fmt: skip
        except (psycopg.OperationalError, PoolTimeout) as exc:
            db_errors()
            raise DatabaseUnavailable(str(exc)) from exc
        return json_response(job.model_dump(mode="json"))

    @router.get(
        "",
        response_model=JobPage,
        summary="The caller's jobs, newest first",
        responses=error_responses(401, 422, 503),
    )
    async def list_jobs(
        who: Caller,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = job_store.PAGE_SIZE,
    ) -> Response:
        try:
            after = job_store.decode_cursor(cursor) if cursor is not None else None
        except ValueError as exc:
            raise InvalidInput(f"cursor: {exc}") from exc
        try:
            async with pools["write"].connection() as conn:
                result = await job_store.page(conn, who, after, limit)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            db_errors()
            raise DatabaseUnavailable(str(exc)) from exc
        return json_response(result.model_dump(mode="json"))

    return router


def _json_bytes(body: bytes, status: int) -> Response:
    return Response(body, status_code=status, media_type="application/json")
