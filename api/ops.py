"""`GET /v1/ops/lag` (role ops): the consumer groups' lag per partition with a status, as
`telemetry lag --json` gives it; and `GET /v1/ops/overview` (api/overview.py).

Looks are taken when asked for, at most one per `lag_min_interval_s` however many ask
(concurrent requests share one look), and kept in a window: a page that polls every few
seconds gets statuses judged over its last looks, and an idle api costs Kafka nothing."""

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from api.overview import Overview, OverviewMonitor, PrometheusUnavailable
from runtime.auth import require_role
from runtime.clock import Clock, SystemClock
from runtime.http import ApiError, error_responses, json_response
from runtime.lag_status import LagWindow
from runtime.lag_view import Look, as_json, judge, look
from schemas.auth import Principal, Role

log = logging.getLogger(__name__)


class LagReport(BaseModel):
    """The answer's shape, for the OpenAPI document."""

    sampled_at: float
    window: int
    groups: dict[str, dict[str, Any]]
    partitions: list[dict[str, Any]]


class LagMonitor:
    """Consumer lag for `GET /v1/ops/lag`: one look at Kafka at a time, at most one per
    `min_interval_s` (requests in between get the latest look), judged over the last
    `window` looks. Safe for the tasks of one event loop."""

    def __init__(
        self,
        bootstrap: str,
        window: int,
        min_interval_s: float,
        looker: Callable[[str], Any] = look,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._bootstrap = bootstrap
        self._window = LagWindow(window)
        self._min_interval_s = min_interval_s
        self._looker = looker
        self._lock = asyncio.Lock()
        self._latest: dict[str, Any] | None = None
        self._looked_at = 0.0
        self._looks = 0

    async def report(self) -> dict[str, Any]:
        async with self._lock:  # one look at a time; the others wait for it
            if self._latest is None or self._due():
                seen: Look = await self._looker(self._bootstrap)
                rows = judge(self._window, seen)
                self._looks += 1
                self._looked_at = self._clock.monotonic()
                self._latest = as_json(rows, seen.members) | {
                    "sampled_at": self._clock.wall(),
                    "window": min(self._looks, self._window.size),
                }
            return self._latest

    def _due(self) -> bool:
        return self._clock.monotonic() - self._looked_at >= self._min_interval_s


PAGE_DIR = Path(__file__).parent / "ops_page"
# Everything the page loads is ours: no inline script, no other origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def mount_ops_page(app: FastAPI) -> None:
    """The ops page at /ops, its script, styles and uPlot under /ops/static. The page holds
    no data: it asks /v1/ops/* with the token in its URL's fragment."""

    @app.get("/ops", include_in_schema=False)
    async def ops_page() -> Response:
        return FileResponse(PAGE_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/ops/static", StaticFiles(directory=PAGE_DIR), name="ops-static")


def ops_router(
    monitor: LagMonitor, overview: OverviewMonitor, principal: Callable[..., Any]
) -> APIRouter:
    router = APIRouter(prefix="/v1/ops", tags=["ops"])

    async def ops(who: Annotated[Principal, Depends(principal)]) -> Principal:
        return require_role(who, [Role.OPS])

    @router.get(
        "/lag",
        summary="Consumer lag per group and partition, with a status over the last looks",
        response_model=LagReport,
        responses=error_responses(401, 403, 429, 503),
    )
    async def lag(_: Annotated[Principal, Depends(ops)]) -> Response:
        try:
            report = await monitor.report()
        except (KafkaError, OSError, TimeoutError, LookupError) as exc:
            log.warning("lag look failed: %s", exc)
            raise ApiError(
                503, "Kafka did not answer the lag look", headers={"Retry-After": "2"}
            ) from exc
        return json_response(report)

    @router.get(
        "/overview",
        summary="Throughput, freshness, error rates, cache, connections, replica and lag",
        response_model=Overview,
        responses=error_responses(401, 403, 429, 503),
    )
    async def pipeline_overview(_: Annotated[Principal, Depends(ops)]) -> Response:
        try:
            report = await overview.report()
        except PrometheusUnavailable as exc:
            log.warning("overview failed: %s", exc)
            raise ApiError(
                503, "Prometheus did not answer the overview", headers={"Retry-After": "2"}
            ) from exc
        return json_response(report)

    return router
