"""`/osmand`: fixes from GPS devices on Traccar's OsmAnd protocol (ingest/osmand.py reads
them). A fix goes the way of a driver's ping: the device's driver from the registry, that
driver's rate limit, the same validation, one record in `pings.v1`; 200 only once the
broker has it. An unregistered device gets 403 and nothing is stored."""

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi.responses import Response

from ingest import http_errors
from ingest.accept import Accept, Devices
from ingest.errors import UnknownDevice
from ingest.metrics import IngestMetrics
from ingest.osmand import Fixes, from_json, from_query
from runtime.clock import Clock
from runtime.http import error_response, receive_body_limited
from schemas.pings import MAX_BATCH_BYTES


class AcceptFixes:
    """The route, over the pings route's `Accept` (its limit, its validation, its publish)."""

    def __init__(
        self,
        accept: Accept,
        devices: Devices,
        metrics: IngestMetrics,
        clock: Clock,
        timeout_s: float,
    ) -> None:
        self._accept = accept
        self._devices = devices
        self._metrics = metrics
        self._clock = clock
        self._timeout_s = timeout_s

    async def __call__(self, scope: Any, receive: Any) -> Response | None:
        """The answer, or None when the device hung up before its body came."""
        try:
            body = await receive_body_limited(scope, receive, MAX_BATCH_BYTES, self._timeout_s)
            if body is None:
                return None
            fixes = self._read(scope, body)
            driver_id = self._devices.driver_of(fixes.device_id)
            if driver_id is None:
                self._metrics.unknown_devices.inc()
                raise UnknownDevice(f"device {fixes.device_id[:128]!r} is not registered")
            await self._accept.limit(driver_id)
            await self._accept.store(driver_id, orjson.dumps({"pings": fixes.pings}))
        except http_errors.ANSWERED as exc:
            return error_response(http_errors.answer_for(exc))
        # What Traccar answers a fix it stored: 200, no body.
        return Response(status_code=200, headers={"Cache-Control": "no-store"})

    def _read(self, scope: Any, body: bytes) -> Fixes:
        received = self._clock.now()
        headers = dict(scope["headers"])
        if b"json" in headers.get(b"content-type", b"") or body.lstrip().startswith(b"{"):
            return from_json(body, received)
        # The query string; when it is empty, a form-encoded body (as Traccar reads them).
        query = scope.get("query_string", b"").decode("latin-1")
        form = query or body.decode("latin-1")
        params: dict[str, str] = {}
        for name, value in parse_qsl(form, keep_blank_values=True):
            params.setdefault(name, value)
        return from_query(params, received)
