"""The api's fast path for the cached GETs (api/reads/fast.py) answers byte for byte what
the FastAPI routes answer, errors included: the same requests to the app with and without
the FastReads middleware, over the same in-memory views."""

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from psycopg_pool import PoolTimeout

from api.app import create_app
from api.config import ApiSettings
from api.errors import DatabaseBusy, DatabaseUnavailable
from api.reads.cache import CacheMetrics, CacheSettings, Loaded, ViewCache
from api.reads.fast import FastReads
from api.reads.routing import DbGate, Pools, ReadMetrics, ReadRouter
from api.reads.views import ReadPath, ViewLoaders, Views, render_job, render_share
from jobs.errors import NotFound
from runtime.auth import generate_keypair, issue_token
from runtime.postgres import Pool
from schemas.auth import Role
from schemas.jobs import Job, JobStatus, Point, share_token_hash
from tests.support.answers import whole

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SHARE_TOKEN, UNKNOWN_TOKEN = secrets.token_urlsafe(24), secrets.token_urlsafe(24)


def job(n: int, customer: str, driver: str | None, status: JobStatus) -> Job:
    return Job(
        job_id=uuid.UUID(int=n),
        status=status,
        customer_id=customer,
        driver_id=driver,
        pickup=Point(lat=12.9, lon=77.6),
        dropoff=Point(lat=12.95, lon=77.62),
        reference=None,
        seq=3,
        created_at=NOW,
        updated_at=NOW,
    )


JOBS = {
    j.job_id: j
    for j in [
        job(1, "cus-1", "drv-1", JobStatus.ASSIGNED),
        job(2, "cus-2", None, JobStatus.CREATED),
    ]
}
UNAVAILABLE, BUSY = uuid.UUID(int=98), uuid.UUID(int=99)


class Loaders(ViewLoaders):
    """The views from memory, with the database's two failures on two ids."""

    def __init__(self) -> None:
        pass

    async def job(self, job_id: uuid.UUID, min_lsn: int, *, critical: bool = False) -> Loaded:
        if job_id == UNAVAILABLE:
            raise DatabaseUnavailable("the database did not answer")
        if job_id == BUSY:
            raise DatabaseBusy("every slot is taken")
        if job_id not in JOBS:
            raise NotFound(f"no job {job_id}")
        return render_job(JOBS[job_id])

    async def share(self, token_hash: bytes) -> Loaded:
        if token_hash != share_token_hash(SHARE_TOKEN):
            raise NotFound("no such share link, or it has expired")
        expires = NOW + timedelta(days=3650)
        return Loaded(
            render_share(JOBS[uuid.UUID(int=1)], expires), 1, expires_at=expires.timestamp()
        )

    async def position(self, driver_id: str) -> Loaded:
        if driver_id != "drv-1":
            raise NotFound(f"no position known for driver {driver_id}")
        body = {"driver_id": "drv-1", "lat": 12.9, "lon": 77.6, "ts": NOW.isoformat()}
        return Loaded(
            orjson.dumps(body | {"speed_mps": None, "heading_deg": None, "accuracy_m": None}), 1
        )


class NoDatabase:
    """A pool whose database never answers (the routes here never reach it)."""

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:  # noqa: ASYNC109 (psycopg_pool's signature)
        raise PoolTimeout("no database in this test")
        yield  # pragma: no cover (an async generator must yield)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the same)
        pass


def app(public: Path, fast: bool) -> FastAPI:
    settings = ApiSettings(
        jwt_public_key_path=public,
        relay_enabled=False,
        replica_check_s=3600,
        principal_burst=40,
        principal_rate_per_s=0.001,
    )
    registry = CollectorRegistry()
    pool = cast(Pool, NoDatabase())
    router = ReadRouter(
        Pools(read=pool, write=pool),
        DbGate(4, 4, 0.1, ReadMetrics(registry)),
        ReadMetrics(CollectorRegistry()),
        max_lag_s=5,
        check_every_s=3600,
    )
    cache = ViewCache(None, CacheSettings(enabled=False), CacheMetrics(registry))
    read_path = ReadPath(cache, Views.from_settings(settings), Loaders(), router)

    async def open_pool() -> Pool:
        return pool

    built = create_app(
        settings, registry, open_read_pool=open_pool, open_write_pool=open_pool, read_path=read_path
    )
    if not fast:
        built.user_middleware = [
            m for m in built.user_middleware if cast(object, m.cls) is not FastReads
        ]
    return built


def answers(keys: tuple[Path, Path], fast: bool) -> list[tuple[str, int, list[Any], bytes]]:
    private, public = keys

    def bearer(sub: str, role: Role) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(private, sub=sub, role=role)}

    owner, other = bearer("cus-1", Role.CUSTOMER), bearer("cus-2", Role.CUSTOMER)
    driver, dispatcher = bearer("drv-1", Role.DRIVER), bearer("disp-1", Role.DISPATCHER)
    ops = bearer("ops-1", Role.OPS)
    one, two = uuid.UUID(int=1), uuid.UUID(int=2)
    requests: list[tuple[str, dict[str, str]]] = [
        (f"/v1/jobs/{one}", owner),
        (f"/v1/jobs/{one}", driver),
        (f"/v1/jobs/{one}", dispatcher),
        (f"/v1/jobs/{one}", other),  # someone else's: 404
        (f"/v1/jobs/{two}", owner),
        (f"/v1/jobs/{uuid.UUID(int=7)}", ops),  # nobody's
        (f"/v1/jobs/{UNAVAILABLE}", ops),  # 503
        (f"/v1/jobs/{BUSY}", ops),  # 503, overloaded
        ("/v1/jobs/not-a-uuid", owner),  # passed on to the route: 422
        (f"/v1/jobs/{one}", {}),  # no token: 401
        (f"/v1/jobs/{one}", {"Authorization": "Bearer not.a.jwt"}),
        (f"/v1/share/{SHARE_TOKEN}", {}),
        (f"/v1/share/{UNKNOWN_TOKEN}", {}),  # 404
        ("/v1/drivers/drv-1/position", dispatcher),
        ("/v1/drivers/drv-1/position", ops),
        ("/v1/drivers/drv-9/position", dispatcher),  # 404
        ("/v1/drivers/drv-1/position", driver),  # 403, from the route
        ("/v1/drivers/a%00b/position", dispatcher),  # 422
    ]
    got = []
    with TestClient(app(public, fast)) as client:
        for path, headers in requests:
            r = client.get(path, headers=headers)
            got.append((path, *whole(r)))
            if r.status_code == 200 and "etag" in r.headers:  # and again, as a cache would ask
                again = client.get(path, headers=headers | {"If-None-Match": r.headers["etag"]})
                got.append((path, *whole(again)))
        for _ in range(45):  # past a customer's burst: 429
            r = client.get(f"/v1/jobs/{one}", headers=owner)
        got.append(("burst", *whole(r)))
    return got


def test_the_fast_path_answers_byte_for_byte_what_the_routes_answer(tmp_path: Path) -> None:
    keys = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(*keys)
    fast, routed = answers(keys, fast=True), answers(keys, fast=False)
    statuses = [status for _, status, _, _ in fast]
    assert statuses == [
        200, 304, 200, 304, 200, 304, 404, 404, 404, 503, 503, 422, 401, 401,
        200, 304, 404, 200, 304, 200, 304, 404, 403, 422, 429,
    ]  # fmt: skip
    assert fast == routed
