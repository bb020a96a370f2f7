"""The ingest HTTP app: POST /v1/pings and the probes. Adapters come from outside
(`build_adapters` for the real ones), so the HTTP layer runs on in-memory fakes in tests."""

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
from fastapi import FastAPI, Security
from fastapi.responses import Response
from fastapi.routing import APIRoute

from ingest import http_errors
from ingest.config import IngestSettings
from ingest.errors import Backpressure, BrokerUnavailable, NoValidPing, RateLimited
from ingest.metrics import IngestMetrics
from ingest.publisher import PingPublisher
from ingest.ratelimit import Decision, RateLimiter
from ingest.validation import validate_body
from runtime.auth import AuthError, TokenVerifier, require_role, verifier_from_settings
from runtime.http import (
    METRICS_RESPONSES,
    PROBE_RESPONSES,
    app_options,
    bearer_scheme,
    error_response,
    error_responses,
    install_error_handlers,
    json_response,
    metrics_response,
    publish_models,
    receive_body_limited,
    request_body,
)
from runtime.kafka import AckedProducer, Headers, durable_producer
from runtime.logging import REQUEST_ID, REQUEST_ID_KAFKA_HEADER
from schemas.auth import Principal, Role
from schemas.pings import MAX_BATCH_BYTES, PingBatch, PingBatchRecord, PingsAccepted

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Publisher(Protocol):
    async def start(self) -> None: ...
    async def publish(self, key: bytes, value: bytes, headers: Headers = ()) -> None: ...
    async def ready(self) -> bool: ...
    async def close(self) -> None: ...


class Limiter(Protocol):
    async def check(self, driver_id: str, cost: int = 1) -> Decision: ...
    async def close(self) -> None: ...


@dataclass
class Adapters:
    publisher: Publisher
    limiter: Limiter
    verifier: TokenVerifier
    metrics: IngestMetrics


def build_adapters(settings: IngestSettings) -> Adapters:
    metrics = IngestMetrics()
    producer = AckedProducer(
        lambda: durable_producer(settings.kafka_bootstrap, client_id="ingest"),
        timeout_s=settings.produce_timeout_s,
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )
    redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        max_connections=settings.redis_max_connections,
    )
    return Adapters(
        publisher=PingPublisher(producer, settings.pings_topic, metrics),
        limiter=RateLimiter(
            redis, rate_per_s=settings.rate_limit_per_s, burst=settings.rate_limit_burst
        ),
        verifier=verifier_from_settings(settings),
        metrics=metrics,
    )


class InFlight:
    """A non-blocking counting limit: a request gets a slot now or is refused. (A semaphore
    would queue the excess: the unbounded buffer the design forbids.)"""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._count = 0

    def try_enter(self) -> bool:
        if self._count >= self._limit:
            return False
        self._count += 1
        return True

    def leave(self) -> None:
        self._count -= 1


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
    settings: IngestSettings, adapters: Adapters, *, clock: Clock = utc_now
) -> IngestApp:
    publisher, limiter, metrics = adapters.publisher, adapters.limiter, adapters.metrics
    in_flight = InFlight(settings.max_in_flight)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        yield
        await publisher.close()
        await limiter.close()

    app = IngestApp(
        title="telemetry ingest", lifespan=lifespan, **app_options(settings.docs_enabled)
    )
    install_error_handlers(app)
    http_errors.install(app)
    publish_models(app, PingBatch)

    def driver(authorization: bytes | None) -> Principal:
        # As FastAPI's HTTPBearer reads the header, with the same answer when it is wrong.
        scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization must be 'Bearer <token>'")
        return require_role(adapters.verifier.verify(token.strip()), [Role.DRIVER])

    async def enforce_rate_limit(driver_id: str) -> None:
        decision = await limiter.check(driver_id)
        if not decision.checked:
            metrics.rate_limit_unchecked.inc()
        if not decision.allowed:
            metrics.rate_limited.inc()
            raise RateLimited(max(1, math.ceil(decision.retry_after_s)))

    async def publish(record: PingBatchRecord) -> None:
        if not in_flight.try_enter():
            metrics.unavailable.labels("backpressure").inc()
            raise Backpressure()
        metrics.in_flight.inc()
        try:
            # The request's id travels with the record: the stream's lines about it carry it.
            request_id = REQUEST_ID.get()
            headers = ((REQUEST_ID_KAFKA_HEADER, request_id.encode()),) if request_id else ()
            await publisher.publish(
                record.driver_id.encode(), record.model_dump_json().encode(), headers
            )
        except BrokerUnavailable:
            metrics.unavailable.labels("kafka").inc()
            raise
        finally:
            in_flight.leave()
            metrics.in_flight.dec()

    async def accept(scope: Any, receive: Any) -> Response | None:
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        principal = driver(authorization)
        # Charged before the body is even read: a flood of invalid bodies is a flood too.
        if settings.rate_limit_enabled:
            await enforce_rate_limit(principal.sub)
        body = await receive_body_limited(scope, receive, MAX_BATCH_BYTES, settings.body_timeout_s)
        if body is None:
            return None  # the client hung up: nobody to answer
        now = clock()
        verdict = validate_body(body, now)
        for rejection in verdict.rejected:
            metrics.rejected.labels(rejection.code).inc()
        rejected = [r.as_dict() for r in verdict.rejected]
        if not verdict.accepted:
            raise NoValidPing(rejected)
        # One record per request, keyed by driver: the driver id comes from the token only.
        # Built without validating again: the pings were validated against this `now`
        # (window included) and the token's subject is an EntityId already.
        await publish(
            PingBatchRecord.model_construct(
                driver_id=principal.sub, received_at=now, pings=verdict.accepted
            )
        )
        metrics.accepted.inc(len(verdict.accepted))
        return json_response({"accepted": len(verdict.accepted), "rejected": rejected}, 202)

    async def post_pings(scope: Any, receive: Any, send: Any) -> None:
        try:
            response = await accept(scope, receive)
        except http_errors.ANSWERED as exc:
            response = error_response(http_errors.answer_for(exc))
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
    async def declared_post_pings() -> None:
        raise RuntimeError("POST /v1/pings is served by IngestApp.__call__, before routing")

    app.hot_route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/v1/pings")
    app.hot_handler = post_pings

    @app.get("/healthz", responses=PROBE_RESPONSES)
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", responses=PROBE_RESPONSES)
    async def readyz() -> Response:
        # Kafka must answer a metadata request; Redis is not required (the limiter fails open).
        if await publisher.ready():
            return json_response({"status": "ready"})
        return json_response({"status": "unavailable", "kafka": False}, 503, http_errors.RETRY_1S)

    if settings.metrics_port is None:

        @app.get("/metrics", responses=METRICS_RESPONSES)
        async def prometheus() -> Response:
            return metrics_response(metrics.registry)

    return app
