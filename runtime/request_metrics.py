"""The metrics every service process has (docs/ops.md): requests by route, method and
status with their latency, and the process's own CPU, memory and file descriptors.

The route is the matched route's template (`/v1/jobs/{job_id}`), never the raw path: a
scanner walking random URLs must not create a series per URL. Unmatched paths count as
`UNMATCHED`."""

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from runtime.clock import Clock, SystemClock
from runtime.logging import RequestIdMiddleware

UNMATCHED = "(unmatched)"
# From a cached answer (sub-millisecond) to the 10 s request deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """HTTP request counts and latencies by route template, method and status; every service's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "From a request's arrival to its answer's last byte, by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)


def process_metrics(registry: CollectorRegistry) -> None:
    """process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ..."""
    ProcessCollector(registry=registry)


class RequestMetricsMiddleware:
    """ASGI middleware that counts every HTTP request, those refused before routing too
    (place it outermost). The route comes from the scope the router fills in."""

    def __init__(self, app: Any, metrics: RequestMetrics, clock: Clock | None = None) -> None:
        self._app = app
        self._metrics = metrics
        self._clock = clock or SystemClock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = self._clock.monotonic()
        status = 500  # an exception that escapes every handler is the server's 500

        async def recording_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            elapsed = self._clock.monotonic() - started
            self._metrics.observe(template, scope["method"], status, elapsed)


def instrument(app: Any, registry: CollectorRegistry) -> RequestMetricsMiddleware:
    """`app` with request metrics and request ids around it, and the process's metrics on
    `registry`."""
    process_metrics(registry)
    return RequestMetricsMiddleware(RequestIdMiddleware(app), RequestMetrics(registry))
