"""Ingest's HTTP layer on in-memory fakes: backpressure, rate limit before validation,
the error envelope, 405's Allow, the body deadline, the concurrency cap, docs switched off."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ingest.accept import Adapters
from ingest.app import create_app
from ingest.config import IngestSettings
from ingest.errors import BrokerUnavailable, DevicesUnavailable
from ingest.metrics import IngestMetrics
from ingest.ratelimit import Decision
from runtime.auth import TokenVerifier, generate_keypair, issue_token
from runtime.clock import ManualClock
from runtime.http import ConcurrencyCap
from runtime.kafka import Headers
from runtime.request_metrics import instrument
from schemas.auth import JWT_AUDIENCE, JWT_ISSUER, Role
from tests.support.answers import Answer, whole

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[bytes] = []
        self.headers: list[tuple[tuple[str, bytes], ...]] = []
        self.release: asyncio.Event | None = None
        self.waiting = 0
        self.two_waiting = asyncio.Event()
        self.fail = False

    async def start(self) -> None:
        pass

    async def publish(self, key: bytes, value: bytes, headers: Headers = ()) -> None:
        if self.release is not None:
            self.waiting += 1
            if self.waiting == 2:
                self.two_waiting.set()
            await self.release.wait()
        if self.fail:
            raise BrokerUnavailable("down")
        self.published.append(value)
        self.headers.append(tuple(headers))

    async def ready(self) -> bool:
        return not self.fail

    async def close(self) -> None:
        pass


class FakeLimiter:
    """Allows `budget` requests, then refuses."""

    def __init__(self, budget: int = 1_000_000) -> None:
        self.budget = budget
        self.checked = 0

    async def start(self) -> None:
        pass

    async def check(self, driver_id: str, cost: int = 1) -> Decision:
        self.checked += 1
        if self.checked > self.budget:
            return Decision(False, 2.5)
        return Decision(True)

    async def close(self) -> None:
        pass


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(private, public)
    return private, public


def settings(public: Path, **overrides: object) -> IngestSettings:
    return IngestSettings(jwt_public_key_path=public, **overrides)  # type: ignore[arg-type]


class FakeDevices:
    """The device registry, in memory: `rows` device -> driver; None until loaded."""

    def __init__(self, rows: dict[str, str] | None = None) -> None:
        self.rows = rows
        self.alive = True

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def loaded(self) -> bool:
        return self.rows is not None

    def driver_of(self, device_id: str) -> str | None:
        if self.rows is None:
            raise DevicesUnavailable("not read yet")
        return self.rows.get(device_id)


def adapters(
    public: Path,
    publisher: FakePublisher,
    limiter: FakeLimiter,
    devices: FakeDevices | None = None,
) -> Adapters:
    verifier = TokenVerifier.from_file(public, audience=JWT_AUDIENCE, issuer=JWT_ISSUER)
    devices = devices if devices is not None else FakeDevices({})
    return Adapters(publisher, limiter, verifier, IngestMetrics(), devices)


def body() -> dict[str, object]:
    ping = {"ping_id": str(uuid.uuid4()), "ts": NOW.isoformat(), "lat": 12.9, "lon": 77.6}
    return {"pings": [ping]}


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def client(keys: tuple[Path, Path], publisher: FakePublisher) -> Iterator[TestClient]:
    app = create_app(
        settings(keys[1]),
        adapters(keys[1], publisher, FakeLimiter(3)),
        clock=ManualClock(NOW.timestamp()),
    )
    with TestClient(app) as c:
        c.headers["Authorization"] = "Bearer " + issue_token(keys[0], sub="d1", role=Role.DRIVER)
        yield c


def test_a_valid_batch_is_published_once_and_answered_202(
    client: TestClient, publisher: FakePublisher
) -> None:
    r = client.post("/v1/pings", json=body())
    assert (r.status_code, r.json()) == (202, {"accepted": 1, "rejected": []})
    assert len(publisher.published) == 1


def test_a_flood_of_invalid_bodies_is_rate_limited_like_any_other(client: TestClient) -> None:
    codes = [client.post("/v1/pings", content=b"{not json").status_code for _ in range(5)]
    assert codes == [422, 422, 422, 429, 429]
    r = client.post("/v1/pings", content=b"{not json")
    assert r.headers["Retry-After"] == "3"
    assert r.json()["error"]["code"] == "rate_limited"


def test_kafka_down_is_a_503_with_retry_after(client: TestClient, publisher: FakePublisher) -> None:
    publisher.fail = True
    r = client.post("/v1/pings", json=body())
    assert r.status_code == 503 and 1 <= int(r.headers["Retry-After"]) <= 3
    assert client.get("/readyz").status_code == 503


async def test_past_the_in_flight_limit_the_answer_is_503_at_once(keys: tuple[Path, Path]) -> None:
    publisher = FakePublisher()
    publisher.release = asyncio.Event()
    app = create_app(
        settings(keys[1], max_in_flight=2),
        adapters(keys[1], publisher, FakeLimiter()),
        clock=ManualClock(NOW.timestamp()),
    )
    token = issue_token(keys[0], sub="d1", role=Role.DRIVER)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as c:
        headers = {"Authorization": f"Bearer {token}"}
        waiting = [asyncio.ensure_future(c.post("/v1/pings", json=body(), headers=headers))]
        waiting.append(asyncio.ensure_future(c.post("/v1/pings", json=body(), headers=headers)))
        await asyncio.wait_for(publisher.two_waiting.wait(), timeout=5)
        third = await c.post("/v1/pings", json=body(), headers=headers)
        assert third.status_code == 503
        assert third.json()["error"]["message"].startswith("too many requests in flight")
        publisher.release.set()
        assert [r.status_code for r in await asyncio.gather(*waiting)] == [202, 202]


def test_a_405_keeps_its_allow_header_and_the_envelope(client: TestClient) -> None:
    r = client.get("/v1/pings")
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_docs_and_openapi_can_be_switched_off(keys: tuple[Path, Path]) -> None:
    app = create_app(
        settings(keys[1], docs_enabled=False, metrics_port=9),
        adapters(keys[1], FakePublisher(), FakeLimiter()),
    )
    with TestClient(app) as c:
        assert [c.get(p).status_code for p in ("/docs", "/openapi.json", "/metrics")] == [404] * 3


async def test_a_body_that_does_not_arrive_in_time_is_a_408(keys: tuple[Path, Path]) -> None:
    app = create_app(
        settings(keys[1], body_timeout_s=0.2),
        adapters(keys[1], FakePublisher(), FakeLimiter()),
        clock=ManualClock(NOW.timestamp()),
    )

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"pings": ['
        await asyncio.sleep(5)  # a slow sender; the deadline ends it after 0.2 s
        yield b"]}"

    token = issue_token(keys[0], sub="d1", role=Role.DRIVER)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingest"
    ) as c:
        r = await c.post(
            "/v1/pings", content=slow_body(), headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 408
    assert r.json()["error"]["code"] == "request_timeout"


async def test_the_concurrency_cap_refuses_at_once_beyond_its_limit() -> None:
    release, entered = asyncio.Event(), asyncio.Event()

    async def slow_app(scope: object, receive: object, send: object) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    capped = ConcurrencyCap(slow_app, limit=1)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=capped), base_url="http://x"
    ) as c:
        first = asyncio.ensure_future(c.get("/"))
        await asyncio.wait_for(entered.wait(), timeout=5)  # it holds the only slot
        second = await c.get("/")
        release.set()
        assert (await first).status_code == 200
    assert second.status_code == 503 and 1 <= int(second.headers["Retry-After"]) <= 3


async def test_the_liveness_probe_is_answered_past_the_concurrency_cap() -> None:
    # A process at its cap is busy, not dead: the probe the supervisor reads must not be
    # refused with the requests (a 503 there would get the process killed).
    release, entered = asyncio.Event(), asyncio.Event()

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["path"] != "/healthz":
            entered.set()
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    capped = ConcurrencyCap(app, limit=1, exempt=("/healthz",))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=capped), base_url="http://x"
    ) as c:
        first = asyncio.ensure_future(c.get("/v1/pings"))
        await asyncio.wait_for(entered.wait(), timeout=5)  # it holds the only slot
        refused = await c.get("/v1/pings")
        probe = await c.get("/healthz")
        release.set()
        assert (await first).status_code == 200
    assert (refused.status_code, probe.status_code) == (503, 200)


def test_the_request_id_is_answered_and_travels_on_the_kafka_record(
    keys: tuple[Path, Path], publisher: FakePublisher
) -> None:
    app = create_app(
        settings(keys[1]),
        adapters(keys[1], publisher, FakeLimiter()),
        clock=ManualClock(NOW.timestamp()),
    )
    # Served as `serve` serves it: request ids and metrics around the app.
    with TestClient(instrument(app, CollectorRegistry())) as c:
        c.headers["Authorization"] = "Bearer " + issue_token(keys[0], sub="d1", role=Role.DRIVER)
        given = c.post("/v1/pings", json=body(), headers={"X-Request-ID": "trip-42.a"})
        made = c.post("/v1/pings", json=body())
        odd = c.post("/v1/pings", json=body(), headers={"X-Request-ID": "no spaces\tplease"})
    assert given.status_code == made.status_code == odd.status_code == 202
    assert given.headers["X-Request-ID"] == "trip-42.a"
    new_id = made.headers["X-Request-ID"]
    assert len(new_id) == 32 and new_id != "trip-42.a"
    assert odd.headers["X-Request-ID"] not in ("no spaces\tplease", new_id)
    assert publisher.headers == [
        (("request_id", b"trip-42.a"),),
        (("request_id", new_id.encode()),),
        (("request_id", odd.headers["X-Request-ID"].encode()),),
    ]


def test_the_hot_route_is_labelled_declared_and_answers_errors_in_the_envelope(
    keys: tuple[Path, Path], publisher: FakePublisher
) -> None:
    app = create_app(
        settings(keys[1]),
        adapters(keys[1], publisher, FakeLimiter()),
        clock=ManualClock(NOW.timestamp()),
    )
    registry = CollectorRegistry()
    with TestClient(instrument(app, registry)) as c:
        token = issue_token(keys[0], sub="d1", role=Role.DRIVER)
        customer = issue_token(keys[0], sub="c1", role=Role.CUSTOMER)
        ok = c.post("/v1/pings", json=body(), headers={"Authorization": f"Bearer {token}"})
        none = c.post("/v1/pings", json=body())
        basic = c.post("/v1/pings", json=body(), headers={"Authorization": "Basic eDp5"})
        wrong = c.post("/v1/pings", json=body(), headers={"Authorization": f"Bearer {customer}"})
        big = c.post(
            "/v1/pings",
            content=b" " * (300 * 1024),
            headers={"Authorization": f"Bearer {token}"},
        )
        spec = c.get("/openapi.json").json()
    assert ok.status_code == 202
    for r in (none, basic):
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="telemetry"'
        assert r.json()["error"]["message"] == "Authorization must be 'Bearer <token>'"
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (403, "forbidden")
    assert (big.status_code, big.json()["error"]["code"]) == (413, "payload_too_large")
    # The request metrics carry the route's template, as for any FastAPI route.
    labels = {"route": "/v1/pings", "method": "POST", "status": "202"}
    assert registry.get_sample_value("http_requests_total", labels) == 1.0
    # The OpenAPI document still has the route, with its bearer scheme and its body.
    post = spec["paths"]["/v1/pings"]["post"]
    assert post["security"] == [{"HTTPBearer": []}]
    assert "202" in post["responses"] and "requestBody" in post
    assert len(publisher.published) == 1


async def test_a_client_that_hangs_up_before_its_body_gets_no_answer_and_nothing_is_sent(
    keys: tuple[Path, Path], publisher: FakePublisher
) -> None:
    app = create_app(
        settings(keys[1]),
        adapters(keys[1], publisher, FakeLimiter()),
        clock=ManualClock(NOW.timestamp()),
    )
    token = issue_token(keys[0], sub="d1", role=Role.DRIVER).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/pings",
        "headers": [(b"authorization", b"Bearer " + token)],
    }
    sent: list[object] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: object) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent == [] and publisher.published == []


class DeclaredRoute:
    """The app with its hot path bypassed: every request goes through FastAPI's layers to
    the declared route."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await FastAPI.__call__(self.app, scope, receive, send)


def answers(keys: tuple[Path, Path], declared: bool) -> list[Answer]:
    """The same requests, in the same order, to a fresh app: every answer whole."""
    publisher = FakePublisher()
    app = create_app(
        settings(keys[1]),
        adapters(keys[1], publisher, FakeLimiter(budget=8)),
        clock=ManualClock(NOW.timestamp()),
    )
    driver = {"Authorization": "Bearer " + issue_token(keys[0], sub="d1", role=Role.DRIVER)}
    customer = {"Authorization": "Bearer " + issue_token(keys[0], sub="c1", role=Role.CUSTOMER)}
    ping = {"ping_id": str(uuid.UUID(int=1)), "ts": NOW.isoformat(), "lat": 12.9, "lon": 77.6}
    late = ping | {"ping_id": str(uuid.UUID(int=2)), "ts": "2020-01-01T00:00:00Z"}
    requests: list[tuple[dict[str, str], bytes]] = [
        (driver, orjson.dumps({"pings": [ping]})),
        (driver, orjson.dumps({"pings": [ping, late]})),  # one accepted, one rejected
        (driver, orjson.dumps({"pings": [late]})),  # 422: no valid ping
        (driver, b"{not json"),
        (driver, orjson.dumps({"pings": []})),
        (driver, b" " * (300 * 1024)),  # 413
        ({}, orjson.dumps({"pings": [ping]})),  # 401
        ({"Authorization": "Basic eDp5"}, orjson.dumps({"pings": [ping]})),
        ({"Authorization": "Bearer not.a.jwt"}, orjson.dumps({"pings": [ping]})),
        (customer, orjson.dumps({"pings": [ping]})),  # 403
    ]
    served = DeclaredRoute(app) if declared else app
    got = []
    with TestClient(served) as client:
        for headers, content in requests:
            r = client.post("/v1/pings", content=content, headers=headers)
            got.append(whole(r))
        publisher.fail = True  # 503: the broker is away
        r = client.post("/v1/pings", content=requests[0][1], headers=driver)
        got.append(whole(r))
        publisher.fail = False
        for _ in range(3):  # past the limiter's budget: 429
            r = client.post("/v1/pings", content=requests[0][1], headers=driver)
            got.append(whole(r))
    return got


def test_the_hot_path_answers_byte_for_byte_what_the_declared_route_answers(
    keys: tuple[Path, Path],
) -> None:
    hot, declared = answers(keys, declared=False), answers(keys, declared=True)
    statuses = [status for status, _, _ in hot]
    assert statuses == [202, 202, 422, 422, 422, 413, 401, 401, 401, 403, 503, 202, 429, 429]
    assert hot == declared
