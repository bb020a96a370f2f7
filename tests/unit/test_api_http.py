"""The api's HTTP layer on an in-memory pool: the database's failure is a 503 with
Retry-After in the envelope, and a path id is checked before any query."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout

from api.app import create_app
from api.config import ApiSettings
from runtime.auth import generate_keypair, issue_token
from runtime.postgres import Pool
from schemas.auth import Role


class UnavailablePool:
    """A pool whose database never answers; counts the connections asked for."""

    def __init__(self) -> None:
        self.asked = 0

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:  # noqa: ASYNC109 (psycopg_pool's signature)
        self.asked += 1
        raise PoolTimeout("no connection within the timeout")
        yield  # pragma: no cover (an async generator must yield)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the same)
        pass


def test_database_unavailable_is_a_503_and_a_bad_id_never_reaches_it(tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(private, public)
    pool = UnavailablePool()

    async def open_pool() -> Pool:
        return cast(Pool, pool)

    app = create_app(
        ApiSettings(jwt_public_key_path=public, relay_enabled=False, replica_check_s=3600),
        open_read_pool=open_pool,
        open_write_pool=open_pool,
    )
    ops = {"Authorization": "Bearer " + issue_token(private, sub="ops-1", role=Role.OPS)}
    driver = {"Authorization": "Bearer " + issue_token(private, sub="drv-1", role=Role.DRIVER)}
    job = {"pickup": {"lat": 12.9, "lon": 77.6}, "dropoff": {"lat": 12.95, "lon": 77.62}}
    with TestClient(app) as client:
        r = client.get("/v1/drivers/drv-1/position", headers=ops)
        assert r.status_code == 503 and 1 <= int(r.headers["Retry-After"]) <= 3
        assert r.json()["error"]["code"] == "unavailable"
        assert client.get("/readyz").status_code == 503
        asked = pool.asked
        assert client.get("/v1/drivers/a%00b/position", headers=ops).status_code == 422
        assert client.get("/v1/jobs/not-a-uuid", headers=ops).status_code == 422
        assert client.get("/v1/jobs?cursor=%00", headers=ops).status_code == 422
        # A driver may not create jobs: refused before any query.
        assert client.post("/v1/jobs", json=job, headers=driver).status_code == 403
        assert client.post("/v1/jobs", json={"pickup": {}}, headers=ops).status_code == 422
        assert pool.asked == asked
        dispatcher = issue_token(private, sub="disp-1", role=Role.DISPATCHER)
        r = client.post("/v1/jobs", json=job, headers={"Authorization": f"Bearer {dispatcher}"})
        assert r.status_code == 503 and 1 <= int(r.headers["Retry-After"]) <= 3


class AnsweringPool:
    """A pool whose database answers every statement (one row, a zero)."""

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:  # noqa: ASYNC109 (psycopg_pool's signature)
        yield self

    async def execute(self, sql: str, params: Any = None) -> "AnsweringPool":
        return self

    async def fetchone(self) -> tuple[float]:
        return (0.0,)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the same)
        pass


def test_readiness_is_the_primary_and_a_replica_away_only_shows(tmp_path: Path) -> None:
    # Every route can be served by the primary (reads fall back to it): the replica's loss
    # must not take the process out of HAProxy, which checks /readyz.
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(private, public)
    settings = ApiSettings(jwt_public_key_path=public, relay_enabled=False, replica_check_s=3600)

    def readyz(read: Any, write: Any) -> tuple[int, dict[str, Any]]:
        async def open_read() -> Pool:
            return cast(Pool, read)

        async def open_write() -> Pool:
            return cast(Pool, write)

        app = create_app(settings, open_read_pool=open_read, open_write_pool=open_write)
        with TestClient(app) as client:
            r = client.get("/readyz")
            metrics = client.get("/metrics").text
        replica_up = [line for line in metrics.splitlines() if line.startswith("api_replica_up ")]
        return r.status_code, r.json() | {"metric": replica_up}

    assert readyz(UnavailablePool(), AnsweringPool()) == (
        200,
        {"status": "ready", "replica": False, "metric": ["api_replica_up 0.0"]},
    )
    assert readyz(AnsweringPool(), AnsweringPool()) == (
        200,
        {"status": "ready", "replica": True, "metric": ["api_replica_up 1.0"]},
    )
    status, body = readyz(AnsweringPool(), UnavailablePool())
    assert (status, body["status"]) == (503, "unavailable")
