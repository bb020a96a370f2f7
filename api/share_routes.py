"""Share links' public side: `GET /v1/share/{token}`, the same for everyone who has it."""

from collections.abc import Callable
from typing import Annotated

import psycopg
from fastapi import APIRouter, Path
from fastapi.responses import Response
from psycopg_pool import PoolTimeout

from api import job_store
from api.errors import DatabaseUnavailable, NotFound
from api.job_views import with_live_position
from runtime.http import error_responses, json_response
from runtime.postgres import Pool
from schemas.jobs import SharedJob

# A share token as job_store.create_share makes them (token_urlsafe(24): 32 characters).
ShareToken = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
# Public and the same for everyone: an edge cache may keep it briefly and serve it stale
# while it refreshes (design section 14).
SHARE_CACHE_CONTROL = "public, max-age=5, stale-while-revalidate=30"


def share_router(pools: dict[str, Pool], db_errors: Callable[[], None]) -> APIRouter:
    router = APIRouter(prefix="/v1/share", tags=["share"])

    @router.get(
        "/{token}",
        response_model=SharedJob,
        summary="A shared job, public: status, the driver's position and the ETA",
        responses=error_responses(404, 422, 503),
    )
    async def shared(token: ShareToken) -> Response:
        try:
            async with pools["write"].connection() as conn:
                found = await job_store.read_share(conn, token)
            if found is None:
                raise NotFound("no such share link, or it has expired")
            job, expires_at = found
            await with_live_position(pools["read"], job)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            db_errors()
            raise DatabaseUnavailable(str(exc)) from exc
        view = SharedJob(
            status=job.status,
            driver_position=job.driver_position,
            eta_seconds=job.eta_seconds,
            eta_basis=job.eta_basis,
            updated_at=job.updated_at,
            expires_at=expires_at,
        )
        return json_response(
            view.model_dump(mode="json"), headers={"Cache-Control": SHARE_CACHE_CONTROL}
        )

    return router
