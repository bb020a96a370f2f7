"""The ingest HTTP app: POST /v1/pings and the probes."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response

from ingest.config import IngestSettings
from ingest.errors import BrokerUnavailable, InvalidBatch
from ingest.metrics import IngestMetrics
from ingest.publisher import PingPublisher
from ingest.validation import parse_batch, validate_batch
from runtime.auth import TokenVerifier, bearer_token, require_role
from runtime.http import ApiError, install_error_handlers, json_response, metrics_response
from schemas.auth import Principal, Role
from schemas.pings import MAX_BATCH_BYTES, PingBatchRecord

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


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

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        yield
        await publisher.close()

    app = FastAPI(title="telemetry ingest", lifespan=lifespan)
    install_error_handlers(app)

    async def driver(authorization: Annotated[str | None, Header()] = None) -> Principal:
        principal = verifier.verify(bearer_token(authorization))
        return require_role(principal, [Role.DRIVER])

    Driver = Annotated[Principal, Depends(driver)]

    @app.post("/v1/pings", status_code=202)
    async def post_pings(request: Request, principal: Driver) -> Response:
        body = await read_body_limited(request, MAX_BATCH_BYTES)
        try:
            raw_pings = parse_batch(body)
        except InvalidBatch as exc:
            raise ApiError(422, str(exc)) from exc
        now = clock()
        verdict = validate_batch(raw_pings, now)
        rejected = [r.as_dict() for r in verdict.rejected]
        metrics.rejected.inc(len(rejected))
        if not verdict.accepted:
            raise ApiError(422, "no valid ping in the batch", details={"rejected": rejected})
        record = PingBatchRecord(driver_id=principal.sub, received_at=now, pings=verdict.accepted)
        try:
            await publisher.publish(principal.sub.encode(), record.model_dump_json().encode())
        except BrokerUnavailable as exc:
            metrics.unavailable.labels("kafka").inc()
            raise ApiError(
                503, "event log unavailable, retry later", headers={"Retry-After": "1"}
            ) from exc
        metrics.accepted.inc(len(verdict.accepted))
        return json_response({"accepted": len(verdict.accepted), "rejected": rejected}, 202)

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if not publisher.ready:
            await publisher.start()
        if publisher.ready:
            return json_response({"status": "ready"})
        return json_response({"status": "unavailable", "kafka": False}, 503, {"Retry-After": "1"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return metrics_response(metrics.registry)

    return app
