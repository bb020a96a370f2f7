"""`GET /v1/ops/lag` (role ops): the consumer groups' lag per partition with a status, as
`telemetry lag --json` gives it.

Looks are taken when asked for, at most one per `lag_min_interval_s` however many ask
(concurrent requests share one look), and kept in a window: a page that polls every few
seconds gets statuses judged over its last looks, and an idle api costs Kafka nothing."""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel

from runtime.auth import require_role
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
    def __init__(
        self,
        bootstrap: str,
        window: int,
        min_interval_s: float,
        looker: Callable[[str], Any] = look,
    ) -> None:
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
            if self._latest is None or time.monotonic() - self._looked_at >= self._min_interval_s:
                seen: Look = await self._looker(self._bootstrap)
                rows = judge(self._window, seen)
                self._looks += 1
                self._looked_at = time.monotonic()
                self._latest = as_json(rows, seen.members) | {
                    "sampled_at": time.time(),
                    "window": min(self._looks, self._window.size),
                }
            return self._latest


def ops_router(monitor: LagMonitor, principal: Callable[..., Any]) -> APIRouter:
    router = APIRouter(prefix="/v1/ops", tags=["ops"])

    async def ops(who: Annotated[Principal, Depends(principal)]) -> Principal:
        return require_role(who, [Role.OPS])

    @router.get(
        "/lag",
        summary="Consumer lag per group and partition, with a status over the last looks",
        response_model=LagReport,
        responses=error_responses(401, 403, 503),
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

    return router
