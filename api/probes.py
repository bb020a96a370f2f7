"""The api's probes (docs/operations.md, "Probes and metrics") and its metrics."""

from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import StateDep
from runtime.http import METRICS_RESPONSES, PROBE_RESPONSES, json_response, metrics_response
from runtime.postgres import DATABASE_ERRORS

# The primary does not answer, or the lifespan has not opened its pool yet.
NOT_READY: tuple[type[Exception], ...] = (*DATABASE_ERRORS, LookupError)

router = APIRouter()
metrics_router = APIRouter()


@router.get("/healthz", responses=PROBE_RESPONSES)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", responses=PROBE_RESPONSES)
async def readyz(shared: StateDep) -> Response:
    # Ready when every route can be served: writes need the primary, and reads fall back to
    # it. A replica away only degrades reads (api_replica_up, an alert); it must not take
    # the process out of HAProxy.
    try:
        async with shared.pools.writer().connection(timeout=1) as conn:
            await conn.execute("SELECT 1")
    except NOT_READY:
        return json_response(
            {"status": "unavailable", "database": False}, 503, {"Retry-After": "1"}
        )
    return json_response({"status": "ready", "replica": shared.read_path.router.replica_answers})


@metrics_router.get("/metrics", responses=METRICS_RESPONSES)
async def prometheus(shared: StateDep) -> Response:
    return metrics_response(shared.registry)
