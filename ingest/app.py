"""The ingest HTTP app: POST /v1/pings and the probes."""

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response

from ingest.config import IngestSettings
from ingest.errors import BrokerUnavailable, InvalidBatch
from ingest.metrics import IngestMetrics
from ingest.publisher import PingPublisher
from ingest.ratelimit import RateLimiter
from ingest.validation import validate_body
from runtime.auth import TokenVerifier, bearer_token, require_role
from runtime.http import ApiError, install_error_handlers, json_response, metrics_response
from schemas.auth import Principal, Role
from schemas.pings import MAX_BATCH_BYTES, PingBatchRecord

Clock = Callable[[], datetime]
RETRY_1S = {"Retry-After": "1"}


def utc_now() -> datetime:
    return datetime.now(UTC)


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


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes, before any parsing."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: IngestSettings, *, clock: Clock = utc_now) -> FastAPI:
    if settings.jwt_public_key_path is None:
        raise ValueError("INGEST_JWT_PUBLIC_KEY_PATH is required")
    verifier = TokenVerifier.from_file(
        settings.jwt_public_key_path, audience=settings.jwt_audience, issuer=settings.jwt_issuer
    )
    metrics = IngestMetrics()
    publisher = PingPublisher(
        settings.kafka_bootstrap,
        settings.pings_topic,
        timeout_s=settings.produce_timeout_s,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        metrics=metrics,
    )
    limiter = RateLimiter(
        aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        ),
        rate_per_s=settings.rate_limit_per_s,
        burst=settings.rate_limit_burst,
    )
    in_flight = InFlight(settings.max_in_flight)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        yield
        await publisher.close()
        await limiter.close()

    app = FastAPI(title="telemetry ingest", lifespan=lifespan)
    install_error_handlers(app)

    async def driver(authorization: Annotated[str | None, Header()] = None) -> Principal:
        principal = verifier.verify(bearer_token(authorization))
        return require_role(principal, [Role.DRIVER])

    Driver = Annotated[Principal, Depends(driver)]

    async def enforce_rate_limit(driver_id: str) -> None:
        decision = await limiter.check(driver_id)
        if not decision.checked:
            metrics.rate_limit_unchecked.inc()
        if not decision.allowed:
            metrics.rate_limited.inc()
            retry_after = str(max(1, math.ceil(decision.retry_after_s)))
            raise ApiError(429, "rate limit exceeded", headers={"Retry-After": retry_after})

    async def publish(record: PingBatchRecord) -> None:
        if not in_flight.try_enter():
            metrics.unavailable.labels("backpressure").inc()
            raise ApiError(503, "too many requests in flight, retry later", headers=RETRY_1S)
        metrics.in_flight.inc()
        try:
            await publisher.publish(record.driver_id.encode(), record.model_dump_json().encode())
        except BrokerUnavailable as exc:
            metrics.unavailable.labels("kafka").inc()
            raise ApiError(503, "event log unavailable, retry later", headers=RETRY_1S) from exc
        finally:
            in_flight.leave()
            metrics.in_flight.dec()

    @app.post("/v1/pings", status_code=202)
    async def post_pings(request: Request, principal: Driver) -> Response:
        body = await read_body_limited(request, MAX_BATCH_BYTES)
        now = clock()
        try:
            verdict = validate_body(body, now)
        except InvalidBatch as exc:
            raise ApiError(422, str(exc)) from exc
        for rejection in verdict.rejected:
            metrics.rejected.labels(rejection.code).inc()
        rejected = [r.as_dict() for r in verdict.rejected]
        if not verdict.accepted:
            raise ApiError(422, "no valid ping in the batch", details={"rejected": rejected})
        if settings.rate_limit_enabled:
            await enforce_rate_limit(principal.sub)
        # One record per request, keyed by driver: the driver id comes from the token only.
        await publish(
            PingBatchRecord(driver_id=principal.sub, received_at=now, pings=verdict.accepted)
        )
        metrics.accepted.inc(len(verdict.accepted))
        return json_response({"accepted": len(verdict.accepted), "rejected": rejected}, 202)

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        # Redis is not required: the rate limiter fails open without it.
        if not publisher.ready:
            await publisher.start()
        if publisher.ready:
            return json_response({"status": "ready"})
        return json_response({"status": "unavailable", "kafka": False}, 503, RETRY_1S)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return metrics_response(metrics.registry)

    return app
