"""CORS (runtime/cors.py): the listed origins get their answers, any other origin gets no
CORS header at all; served as `serve` serves an app (runtime/serve.py `wrapped`)."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ingest.app import create_app
from runtime.auth import generate_keypair, issue_token
from runtime.clock import ManualClock
from runtime.cors import MAX_AGE_S, Cors
from runtime.serve import wrapped
from schemas.auth import Role
from tests.unit.test_ingest_http import NOW, FakeLimiter, FakePublisher, adapters, body, settings

LISTED = "http://localhost:3000"
ORIGINS = (LISTED, "http://127.0.0.1:3000")


def cors_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith("access-control-")}


@pytest.fixture
def served(keys: tuple[Path, Path]) -> tuple[TestClient, FakePublisher, str]:
    publisher = FakePublisher()
    s = settings(keys[1], allowed_origins=ORIGINS)
    app = create_app(
        s, adapters(keys[1], publisher, FakeLimiter(100)), clock=ManualClock(NOW.timestamp())
    )
    token = issue_token(keys[0], sub="drv-cors", role=Role.DRIVER)
    return TestClient(wrapped(app, s, CollectorRegistry())), publisher, token


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(private, public)
    return private, public


def preflight(client: TestClient, origin: str) -> dict[str, str]:
    r = client.options(
        "/v1/pings",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    return {"status": str(r.status_code), **r.headers}


def test_a_listed_origins_preflight_is_answered_with_methods_headers_and_max_age(
    served: tuple[TestClient, FakePublisher, str],
) -> None:
    client, _, _ = served
    answer = preflight(client, LISTED)
    assert answer["status"] == "200"
    assert answer["access-control-allow-origin"] == LISTED
    assert "POST" in answer["access-control-allow-methods"]
    allowed = answer["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert answer["access-control-max-age"] == str(MAX_AGE_S)


def test_a_listed_origins_post_is_accepted_with_its_cors_headers(
    served: tuple[TestClient, FakePublisher, str],
) -> None:
    client, publisher, token = served
    r = client.post(
        "/v1/pings", json=body(), headers={"Authorization": f"Bearer {token}", "Origin": LISTED}
    )
    assert r.status_code == 202 and len(publisher.published) == 1
    assert r.headers["access-control-allow-origin"] == LISTED
    assert "X-Request-ID".lower() in r.headers["access-control-expose-headers"].lower()
    assert "Origin" in r.headers["vary"]


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost:3001", "null"])
def test_an_unlisted_origin_gets_no_cors_header_at_all(
    served: tuple[TestClient, FakePublisher, str], origin: str
) -> None:
    client, _, token = served
    refused = preflight(client, origin)
    assert refused["status"] == "405" and cors_headers(refused) == {}
    r = client.post(
        "/v1/pings", json=body(), headers={"Authorization": f"Bearer {token}", "Origin": origin}
    )
    # The server answers as without CORS (a browser then keeps the answer from the page).
    assert r.status_code == 202
    assert cors_headers(dict(r.headers)) == {}
    assert "Origin" in r.headers["vary"]  # a cache in front must not mix the origins


def test_a_request_without_origin_is_served_as_ever(
    served: tuple[TestClient, FakePublisher, str],
) -> None:
    client, _, token = served
    r = client.post("/v1/pings", json=body(), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 202 and cors_headers(dict(r.headers)) == {}


@pytest.mark.parametrize("origins", [("*",), (LISTED, "null")])
def test_a_wildcard_is_refused(origins: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="one by one"):
        Cors(object(), origins)


def test_no_origins_no_cors(keys: tuple[Path, Path]) -> None:
    s = settings(keys[1])  # the default: none listed
    app = create_app(s, adapters(keys[1], FakePublisher(), FakeLimiter(100)))
    client = TestClient(wrapped(app, s, CollectorRegistry()))
    assert cors_headers(preflight(client, LISTED)) == {}
