"""The api HTTP app."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Path, Request, Security
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CollectorRegistry, Counter

from api import http_errors
from api.config import ApiSettings
from api.fast_reads import POSITION_ROLES, FastReads
from api.job_routes import job_router
from api.ops import LagMonitor, mount_ops_page, ops_router
from api.overview import OverviewMonitor, PrometheusClient
from api.positions import DriverPosition
from api.principal_limit import PrincipalLimit
from api.reads import DbGate, ReadMetrics, ReadRouter
from api.share_routes import share_router
from api.task_routes import task_router
from api.view_cache import CacheMetrics, CacheSettings, ViewCache
from api.views import ReadPath, ViewLoaders, Views, position_answer, write_through
from jobs import relay
from jobs.blobs import DirectoryBlobStore
from runtime.auth import require_role, verifier_from_settings
from runtime.http import (
    METRICS_RESPONSES,
    PROBE_RESPONSES,
    BodyLimit,
    app_options,
    bearer_credentials,
    bearer_scheme,
    error_responses,
    install_error_handlers,
    json_response,
    metrics_response,
)
from runtime.kafka import AckedProducer, durable_producer
from runtime.postgres import DATABASE_ERRORS, Pool, open_pool
from schemas.auth import Principal
from schemas.ids import ID_PATTERN, MAX_ID_LENGTH

# A path id is checked before any query: a NUL byte or a megabyte id is a 422, not a 500.
PathId = Annotated[str, Path(pattern=ID_PATTERN, max_length=MAX_ID_LENGTH)]


# The primary does not answer, or the lifespan has not opened its pool yet.
NOT_READY: tuple[type[Exception], ...] = (*DATABASE_ERRORS, KeyError)

# Pools open inside the server's event loop, so the app is given how to open one.
PoolOpener = Callable[[], Awaitable[Pool]]


def pool_opener(settings: ApiSettings, dsn: str, name: str) -> PoolOpener:
    """A real pool through PgBouncer: its read-only entry (the replica) or its read-write
    one (the primary)."""

    async def open_real_pool() -> Pool:
        return await open_pool(
            dsn,
            min_size=1,
            max_size=settings.pool_max_size,
            name=name,
            timeout_s=settings.pool_timeout_s,
        )

    return open_real_pool


def build_read_path(
    settings: ApiSettings,
    pools: dict[str, Pool],
    registry: CollectorRegistry,
    db_errors: Callable[[], None],
) -> ReadPath:
    """The cache, the read router and its cap, from the settings (nothing connects yet)."""
    read_metrics = ReadMetrics(registry)
    gate = DbGate(
        settings.db_max_concurrency, settings.db_max_waiting, settings.db_wait_s, read_metrics
    )
    router = ReadRouter(
        pools,
        gate,
        read_metrics,
        max_lag_s=settings.replica_max_lag_s,
        check_every_s=settings.replica_check_s,
        on_unavailable=db_errors,
    )
    # A blocking pool: a call may wait for a free connection (a plain pool fails at once
    # when all are taken). The cache bounds each call by `redis_timeout_s` of Redis's time;
    # the client's own timeouts are the hard limit past that.
    client = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_max_wait_s,
            socket_connect_timeout=settings.redis_max_wait_s,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_max_wait_s,
        )
    )
    cache_settings = CacheSettings(
        enabled=settings.cache_enabled,
        timeout_s=settings.redis_timeout_s,
        max_wait_s=settings.redis_max_wait_s,
        ryw_window_s=settings.ryw_window_s,
    )
    cache = ViewCache(client, cache_settings, CacheMetrics(registry))
    return ReadPath(cache, Views.from_settings(settings), ViewLoaders(router), router)


@asynccontextmanager
async def _replica_watch(router: ReadRouter) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    task = asyncio.create_task(router.watch_replica(stopping))
    try:
        yield
    finally:
        stopping.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


@asynccontextmanager
async def _relay(settings: ApiSettings, pool: Pool, read_path: ReadPath) -> AsyncIterator[None]:
    """The outbox relay as a background task of the process, when enabled."""
    if not settings.relay_enabled:
        yield
        return
    producer = AckedProducer(
        lambda: durable_producer(settings.kafka_bootstrap, client_id="api-outbox-relay"),
        timeout_s=settings.relay_send_timeout_s,
        shutdown_timeout_s=2.0,
    )
    stopping = asyncio.Event()
    limits = relay.RelayLimits(
        batch=settings.relay_batch,
        poll_s=settings.relay_poll_s,
        keep_sent_s=settings.outbox_keep_sent_hours * 3600,
        idempotency_ttl_s=settings.idempotency_ttl_hours * 3600,
    )
    views, cache, max_links = read_path.views, read_path.cache, settings.max_share_links_per_job
    task = asyncio.create_task(
        relay.run(
            pool,
            producer,
            limits,
            stopping,
            after_publish=lambda job_ids: write_through(pool, cache, views, job_ids, max_links),
        )
    )
    try:
        yield
    finally:
        stopping.set()
        # A round in flight gets its send deadline to finish; past it, its rows stay unsent
        # and the next relay sends them.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, settings.relay_send_timeout_s + 1)
        await producer.close()


def create_app(
    settings: ApiSettings,
    registry: CollectorRegistry | None = None,
    *,
    open_read_pool: PoolOpener | None = None,
    open_write_pool: PoolOpener | None = None,
    read_path: ReadPath | None = None,
) -> FastAPI:
    """The api app. Pools open in its lifespan (`open_*_pool`, or real ones from the
    settings); `read_path` replaces the cache and the view loaders built from the settings
    (a test's). The lifespan also runs the replica watch and, when enabled, the relay."""
    verifier = verifier_from_settings(settings)
    limit = PrincipalLimit(settings.principal_rate_per_s, settings.principal_burst)
    registry = registry or CollectorRegistry()
    db_errors = Counter("api_db_unavailable", "Requests failed by the database", registry=registry)
    openers = {
        "read": open_read_pool or pool_opener(settings, settings.read_dsn, "api-read"),
        "write": open_write_pool or pool_opener(settings, settings.write_dsn, "api-write"),
    }
    pools: dict[str, Pool] = {}
    read_path = read_path or build_read_path(settings, pools, registry, db_errors.inc)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for name, opener in openers.items():
            pools[name] = await opener()
        await read_path.cache.warm_up()
        async with _replica_watch(read_path.router), _relay(settings, pools["write"], read_path):
            yield
        await read_path.cache.close()
        for pool in pools.values():
            await pool.close(timeout=5)

    app = FastAPI(title="telemetry api", lifespan=lifespan, **app_options(settings.docs_enabled))
    install_error_handlers(app)
    http_errors.install(app)
    # JSON bodies are small; the proof photo's upload bounds its own (api/uploads.py).
    app.add_middleware(
        BodyLimit, limit=settings.max_body_bytes, exempt=lambda path: path.endswith("/complete")
    )

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    ) -> Principal:
        who = verifier.verify(bearer_credentials(credentials))
        limit.admit(who)
        return who

    async def dispatcher_or_ops(who: Annotated[Principal, Depends(principal)]) -> Principal:
        return require_role(who, list(POSITION_ROLES))

    # The cached views' happy path skips FastAPI's routing (the routes below stay the
    # contract, and answer everything the fast path passes on).
    app.add_middleware(FastReads, read_path=read_path, verifier=verifier, limit=limit)

    blobs = DirectoryBlobStore(settings.blob_dir)
    app.include_router(job_router(pools, read_path, principal, db_errors.inc, blobs, settings))
    app.include_router(task_router(read_path, principal))
    app.include_router(share_router(read_path))
    lag_monitor = LagMonitor(
        settings.kafka_bootstrap, settings.lag_window, settings.lag_min_interval_s
    )
    overview_monitor = OverviewMonitor(
        PrometheusClient(settings.prometheus_url), settings.overview_min_interval_s
    )
    app.include_router(ops_router(lag_monitor, overview_monitor, principal))
    mount_ops_page(app)

    @app.get(
        "/v1/drivers/{driver_id}/position",
        summary="A driver's latest position",
        response_model=DriverPosition,
        responses=error_responses(401, 403, 404, 422, 429, 503),
    )
    async def driver_position(
        driver_id: PathId, request: Request, _: Annotated[Principal, Depends(dispatcher_or_ops)]
    ) -> Response:
        return await position_answer(read_path, driver_id, request.headers.get("if-none-match"))

    @app.get("/healthz", responses=PROBE_RESPONSES)
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", responses=PROBE_RESPONSES)
    async def readyz() -> Response:
        # Ready when every route can be served: writes need the primary, and reads fall
        # back to it. A replica away only degrades reads (api_replica_up, an alert); it must
        # not take the process out of HAProxy.
        try:
            async with pools["write"].connection(timeout=1) as conn:
                await conn.execute("SELECT 1")
        except NOT_READY:
            return json_response(
                {"status": "unavailable", "database": False}, 503, {"Retry-After": "1"}
            )
        return json_response({"status": "ready", "replica": read_path.router.replica_answers})

    if settings.metrics_port is None:

        @app.get("/metrics", responses=METRICS_RESPONSES)
        async def prometheus() -> Response:
            return metrics_response(registry)

    return app
