"""`GET /v1/ops/lag` (role ops): the consumer groups' lag per partition with a status, as
`telemetry lag --json` gives it; and `GET /v1/ops/overview` (api/overview.py).

Looks are taken when asked for, at most one per `lag_min_interval_s` however many ask
(concurrent requests share one look), and kept in a window: a page that polls every few
seconds gets statuses judged over its last looks, and an idle api costs Kafka nothing."""

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from runtime.clock import Clock, SystemClock
from runtime.lag_status import LagWindow
from runtime.lag_view import Look, as_json, judge, look

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
