"""`POST /v1/pings`, once: `Accept` reads a request off ASGI and answers it, errors
included. Both entrances to the route call it: the hot path (ingest/app.py `IngestApp`,
before FastAPI's layers) and the declared FastAPI route, so the two answer the same bytes
(tests/unit/test_ingest_http.py checks it)."""

import math
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi.responses import Response

from ingest import http_errors
from ingest.config import IngestSettings
from ingest.errors import Backpressure, BrokerUnavailable, NoValidPing, RateLimited
from ingest.metrics import IngestMetrics
from ingest.ratelimit import Decision
from ingest.validation import validate_body
from runtime.auth import AuthError, TokenVerifier, require_role
from runtime.clock import Clock
from runtime.http import error_response, json_response, receive_body_limited
from runtime.kafka import Headers
from runtime.logging import REQUEST_ID, REQUEST_ID_KAFKA_HEADER
from schemas.auth import Principal, Role
from schemas.pings import MAX_BATCH_BYTES
from schemas.pings_wire import decode_valid_batch, encode_record, wire_ping


class Publisher(Protocol):
    """Where accepted records go (ingest/publisher.py: Kafka). `start` before the first
    `publish` and `close` after the last, once each; `publish` returns only once the
    broker has the record (acks=all) and raises BrokerUnavailable otherwise. Safe for
    concurrent tasks of one event loop."""

    async def start(self) -> None: ...

    async def publish(self, key: bytes, value: bytes, headers: Headers = ()) -> None: ...

    async def ready(self) -> bool:
        """The broker answers now (for /readyz)."""
        ...

    async def close(self) -> None: ...


class Limiter(Protocol):
    """A driver's request rate (ingest/local_ratelimit.py: in the process, synced through
    Redis; ingest/ratelimit.py: Redis per request). `check` never raises: a limiter that
    cannot decide lets the request in (`Decision.checked` False). Safe for concurrent tasks
    of one event loop; `start` before the first check and `close` at the end, once each."""

    async def start(self) -> None: ...

    async def check(self, driver_id: str, cost: int = 1) -> Decision: ...

    async def close(self) -> None: ...


class Devices(Protocol):
    """The device registry (ingest/devices.py). `start` and `close` once each."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def loaded(self) -> bool: ...

    @property
    def alive(self) -> bool: ...

    def driver_of(self, device_id: str) -> str | None: ...


@dataclass
class Adapters:
    """Ingest's ports, built outside the app (`build_adapters`; fakes in tests)."""

    publisher: Publisher
    limiter: Limiter
    verifier: TokenVerifier
    metrics: IngestMetrics
    devices: Devices


class InFlight:
    """A non-blocking counting limit: a request gets a slot now or is refused. (A semaphore
    would queue the excess: an unbounded buffer.)"""

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


def driver(verifier: TokenVerifier, authorization: bytes | None) -> Principal:
    """The caller, a driver: as FastAPI's HTTPBearer reads the header, with the same answer
    when it is wrong."""
    scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return require_role(verifier.verify(token.strip()), [Role.DRIVER])


class Accept:
    """The route. Holds the process's in-flight count; safe for concurrent requests of one
    event loop."""

    def __init__(self, settings: IngestSettings, adapters: Adapters, clock: Clock) -> None:
        self._settings = settings
        self._adapters = adapters
        self._metrics = adapters.metrics
        self._clock = clock
        self._in_flight = InFlight(settings.max_in_flight)

    async def __call__(self, scope: Any, receive: Any) -> Response | None:
        """The answer, or None when the client hung up before its body came (nobody to
        answer, nothing published)."""
        try:
            return await self._accept(scope, receive)
        except http_errors.ANSWERED as exc:
            return error_response(http_errors.answer_for(exc))

    async def _accept(self, scope: Any, receive: Any) -> Response | None:
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        principal = driver(self._adapters.verifier, authorization)
        # Charged before the body is even read: a flood of invalid bodies is a flood too.
        await self.limit(principal.sub)
        body = await receive_body_limited(
            scope, receive, MAX_BATCH_BYTES, self._settings.body_timeout_s
        )
        if body is None:
            return None
        accepted, rejected = await self.store(principal.sub, body)
        return json_response({"accepted": accepted, "rejected": rejected}, 202)

    async def store(self, driver_id: str, body: bytes) -> tuple[int, list[dict[str, Any]]]:
        """Validates a `POST /v1/pings` body of `driver_id`'s and publishes its valid pings
        in one record; how many, and why the others were refused. NoValidPing when none
        is valid; BrokerUnavailable or Backpressure when the record is not durable."""
        now = self._clock.now()
        # The usual request, every ping valid, read by msgspec; anything else by the models,
        # which say what is wrong with which ping (schemas/pings_wire.py: the two agree).
        msgspec_first = self._settings.body_decoder == "msgspec"
        pings = decode_valid_batch(body, now) if msgspec_first else None
        rejected: list[dict[str, Any]] = []
        if pings is None:
            verdict = validate_body(body, now)
            for rejection in verdict.rejected:
                self._metrics.rejected.labels(rejection.code).inc()
            rejected = [r.as_dict() for r in verdict.rejected]
            if not verdict.accepted:
                raise NoValidPing(rejected)
            pings = [wire_ping(p) for p in verdict.accepted]
        # One record per request, keyed by driver: the driver id comes from the token (or
        # the registered device) only.
        await self._publish(driver_id, encode_record(driver_id, now, pings))
        self._metrics.accepted.inc(len(pings))
        return len(pings), rejected

    async def limit(self, driver_id: str) -> None:
        """RateLimited when the driver is over its rate (charged one request)."""
        if not self._settings.rate_limit_enabled:
            return
        decision = await self._adapters.limiter.check(driver_id)
        if not decision.checked:
            self._metrics.rate_limit_unchecked.inc()
        if not decision.allowed:
            self._metrics.rate_limited.inc()
            raise RateLimited(max(1, math.ceil(decision.retry_after_s)))

    async def _publish(self, driver_id: str, record: bytes) -> None:
        if not self._in_flight.try_enter():
            self._metrics.unavailable.labels("backpressure").inc()
            raise Backpressure()
        self._metrics.in_flight.inc()
        try:
            # The request's id travels with the record: the stream's lines about it carry it.
            request_id = REQUEST_ID.get()
            headers = ((REQUEST_ID_KAFKA_HEADER, request_id.encode()),) if request_id else ()
            await self._adapters.publisher.publish(driver_id.encode(), record, headers)
        except BrokerUnavailable:
            self._metrics.unavailable.labels("kafka").inc()
            raise
        finally:
            self._in_flight.leave()
            self._metrics.in_flight.dec()
