"""The ingest HTTP app: POST /v1/pings and the probes. Adapters come from outside
(`build_adapters` for the real ones), so the HTTP layer runs on in-memory fakes in tests."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Security
from fastapi.responses import Response
from fastapi.routing import APIRoute

from ingest import http_errors
from ingest.accept import Accept, Adapters, Limiter, Publisher
from ingest.config import IngestSettings
from ingest.confluent_publisher import ConfluentPublisher, producer_config
from ingest.devices import KafkaDevices
from ingest.fixes import AcceptFixes
from ingest.local_ratelimit import SyncedRateLimiter, redis_exchange
from ingest.metrics import IngestMetrics
from ingest.osmand import EXAMPLE_JSON as OSMAND_EXAMPLE_JSON
from ingest.osmand import EXAMPLE_QUERY as OSMAND_EXAMPLE_QUERY
from ingest.osmand import QUERY_PARAMETERS
from ingest.publisher import PingPublisher
from ingest.ratelimit import RateLimiter
from runtime.auth import verifier_from_settings
from runtime.clock import Clock, SystemClock
from runtime.http import (
    METRICS_RESPONSES,
    PROBE_RESPONSES,
    app_options,
    bearer_scheme,
    error_responses,
    install_error_handlers,
    json_response,
    metrics_response,
    publish_models,
    request_body,
)
from runtime.kafka import AckedProducer, durable_producer
from schemas.pings import PingBatch, PingsAccepted

# The OsmAnd route's published parameters and bodies (ingest/osmand.py reads them).
OSMAND_QUERY: dict[str, Any] = {
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        | ({"example": OSMAND_EXAMPLE_QUERY[name]} if name in OSMAND_EXAMPLE_QUERY else {})
        for name in QUERY_PARAMETERS
    ]
}
OSMAND_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {"schema": {"type": "object"}, "example": OSMAND_EXAMPLE_JSON},
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object"},
                "example": OSMAND_EXAMPLE_QUERY,
            },
        },
    }
}
OSMAND_OK: dict[int | str, dict[str, Any]] = {
    200: {"description": "The fixes are durable in Kafka (no body)"}
}


def build_adapters(settings: IngestSettings) -> Adapters:
    """The real adapters: Kafka, Redis, the public key; nothing connects yet."""
    metrics = IngestMetrics()
    redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        max_connections=settings.redis_max_connections,
    )
    return Adapters(
        publisher=_publisher(settings, metrics),
        limiter=_limiter(settings, redis, metrics),
        verifier=verifier_from_settings(settings),
        metrics=metrics,
        devices=KafkaDevices(settings, metrics, SystemClock()),
    )


def _limiter(settings: IngestSettings, redis: aioredis.Redis, metrics: IngestMetrics) -> Limiter:
    rate, burst = settings.rate_limit_per_s, settings.rate_limit_burst
    if settings.rate_limit_mode == "redis":
        return RateLimiter(redis, rate_per_s=rate, burst=burst)
    return SyncedRateLimiter(
        redis_exchange(redis, rate_per_s=rate, burst=burst, key_prefix="ingest:rls:"),
        rate_per_s=rate,
        burst=burst,
        sync_s=settings.rate_limit_sync_s,
        on_sync_failed=metrics.rate_limit_sync_failures.inc,
        close=redis.aclose,
    )


def _publisher(settings: IngestSettings, metrics: IngestMetrics) -> Publisher:
    if settings.producer == "confluent":
        config = producer_config(
            settings.kafka_bootstrap, client_id="ingest", timeout_s=settings.produce_timeout_s
        )
        return ConfluentPublisher(
            config, settings.pings_topic, metrics, timeout_s=settings.produce_timeout_s
        )
    producer = AckedProducer(
        lambda: durable_producer(settings.kafka_bootstrap, client_id="ingest"),
        timeout_s=settings.produce_timeout_s,
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )
    return PingPublisher(producer, settings.pings_topic, metrics)


class IngestApp(FastAPI):
    """The ingest FastAPI app, with its hot route served before FastAPI's own layers.

    A single-ping request is small enough that FastAPI's middleware stack, router,
    dependency solving and Request object showed as a large share of its CPU in the
    profile (docs/benchmarks.md, issue 15).
    `POST /v1/pings` is a plain ASGI handler, dispatched here; it is also declared as a
    FastAPI route, for the OpenAPI document and the route label of the request metrics."""

    hot_route: APIRoute
    hot_handler: Callable[[Any, Any, Any], Awaitable[None]]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == self.hot_route.path
            and scope["method"] == "POST"
        ):
            scope["route"] = self.hot_route
            await self.hot_handler(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: IngestSettings, adapters: Adapters, *, clock: Clock | None = None
) -> IngestApp:
    """The app over its adapters. Its lifespan starts the publisher and the limiter, and
    closes them at shutdown."""
    publisher, limiter, metrics = adapters.publisher, adapters.limiter, adapters.metrics
    devices = adapters.devices
    clock = clock or SystemClock()
    accept = Accept(settings, adapters, clock)
    accept_fixes = AcceptFixes(accept, devices, metrics, clock, settings.body_timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        await limiter.start()
        await devices.start()
        yield
        await devices.close()
        await publisher.close()
        await limiter.close()

    app = IngestApp(
        title="telemetry ingest", lifespan=lifespan, **app_options(settings.docs_enabled)
    )
    install_error_handlers(app)
    http_errors.install(app)
    publish_models(app, PingBatch)

    async def post_pings(scope: Any, receive: Any, send: Any) -> None:
        response = await accept(scope, receive)
        if response is not None:
            await response(scope, receive, send)

    @app.post(
        "/v1/pings",
        status_code=202,
        summary="Post a driver's GPS pings",
        response_model=PingsAccepted,
        responses=error_responses(401, 403, 408, 413, 422, 429, 503),
        openapi_extra=request_body(PingBatch),
        dependencies=[Security(bearer_scheme)],
        operation_id="post_pings_v1_pings_post",
    )
    async def declared_post_pings(request: Request) -> Response:
        # Reached only past the hot path (FastAPI.__call__): the same answer, by the same code.
        response = await accept(request.scope, request.receive)
        return response if response is not None else Response(status_code=400)

    app.hot_route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/v1/pings")
    app.hot_handler = post_pings

    async def osmand(request: Request) -> Response:
        response = await accept_fixes(request.scope, request.receive)
        return response if response is not None else Response(status_code=400)

    for method, extra in (("GET", OSMAND_QUERY), ("POST", OSMAND_QUERY | OSMAND_BODY)):
        app.add_api_route(
            "/osmand",
            osmand,
            methods=[method],
            summary=f"A GPS device's fix on Traccar's OsmAnd protocol ({method})",
            responses=OSMAND_OK | error_responses(403, 408, 413, 422, 429, 503),
            openapi_extra=extra,
            operation_id=f"osmand_{method.lower()}",
        )

    @app.get("/healthz", responses=PROBE_RESPONSES)
    async def healthz() -> Response:
        # The device registry's reader never ends but by a bug: restart the process.
        if not devices.alive:
            return json_response({"status": "failed", "devices": False}, 503)
        return json_response({"status": "ok"})

    @app.get("/readyz", responses=PROBE_RESPONSES)
    async def readyz() -> Response:
        # Kafka must answer a metadata request, and the device registry be read (/osmand);
        # Redis is not required (the limit is decided in the process; in "redis" mode it
        # fails open).
        if not await publisher.ready():
            answer = {"status": "unavailable", "kafka": False}
            return json_response(answer, 503, http_errors.RETRY_1S)
        if not devices.loaded:
            answer = {"status": "unavailable", "devices": False}
            return json_response(answer, 503, http_errors.RETRY_1S)
        return json_response({"status": "ready"})

    if settings.metrics_port is None:

        @app.get("/metrics", responses=METRICS_RESPONSES)
        async def prometheus() -> Response:
            return metrics_response(metrics.registry)

    return app
