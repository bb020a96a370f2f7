"""The api HTTP app."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter

from api import (
    http_errors,
    job_routes,
    keys_routes,
    ops_routes,
    position_routes,
    probes,
    proof_routes,
    share_routes,
    task_routes,
)
from api.config import ApiSettings
from api.deps import State
from api.ops import LagMonitor, mount_ops_page
from api.overview import AlertmanagerClient, OverviewMonitor, PrometheusClient
from api.principal_limit import PrincipalLimit
from api.reads.cache import CacheMetrics, CacheSettings, ViewCache
from api.reads.fast import FastReads
from api.reads.routing import DbGate, Pools, ReadMetrics, ReadRouter
from api.reads.views import ReadPath, ViewLoaders, Views, write_through
from jobs import relay
from jobs.blobs import DirectoryBlobStore
from runtime.auth import verifier_from_settings
from runtime.clock import Clock, SystemClock
from runtime.http import (
    BodyLimit,
    app_options,
    install_error_handlers,
)
from runtime.kafka import AckedProducer, durable_producer
from runtime.postgres import Pool, open_pool

# Tracks simplified at once per process: each is up to MAX_FIXES points of CPU work.
TRACKS_AT_ONCE = 2

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
    pools: Pools,
    registry: CollectorRegistry,
    db_errors: Callable[[], None],
    clock: Clock,
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
    cache = ViewCache(client, cache_settings, CacheMetrics(registry), clock)
    return ReadPath(cache, Views.from_settings(settings), ViewLoaders(router, clock), router)


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
async def _relay(
    settings: ApiSettings, pool: Pool, read_path: ReadPath, clock: Clock
) -> AsyncIterator[None]:
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
            after_publish=lambda job_ids: write_through(
                pool, cache, views, job_ids, max_links, clock
            ),
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
    clock: Clock | None = None,
) -> FastAPI:
    """The api app. Pools open in its lifespan (`open_*_pool`, or real ones from the
    settings); `read_path` replaces the cache and the view loaders built from the settings
    (a test's). The lifespan also runs the replica watch and, when enabled, the relay."""
    registry = registry or CollectorRegistry()
    db_errors = Counter("api_db_unavailable", "Requests failed by the database", registry=registry)
    pools = Pools()
    clock = clock or SystemClock()
    shared = State(
        settings=settings,
        pools=pools,
        read_path=read_path or build_read_path(settings, pools, registry, db_errors.inc, clock),
        verifier=verifier_from_settings(settings),
        limit=PrincipalLimit(settings.principal_rate_per_s, settings.principal_burst, clock=clock),
        blobs=DirectoryBlobStore(settings.blob_dir),
        db_errors=db_errors,
        lag=LagMonitor(
            settings.kafka_bootstrap,
            settings.lag_window,
            settings.lag_min_interval_s,
            clock=clock,
        ),
        overview=OverviewMonitor(
            PrometheusClient(settings.prometheus_url),
            AlertmanagerClient(settings.alertmanager_url),
            settings.overview_min_interval_s,
            clock,
        ),
        simplifying=asyncio.Semaphore(TRACKS_AT_ONCE),
        registry=registry,
        clock=clock,
    )
    open_read = open_read_pool or pool_opener(settings, settings.read_dsn, "api-read")
    open_write = open_write_pool or pool_opener(settings, settings.write_dsn, "api-write")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pools.read, pools.write = await open_read(), await open_write()
        cache, router = shared.read_path.cache, shared.read_path.router
        await cache.warm_up()
        async with (
            _replica_watch(router),
            _relay(settings, pools.writer(), shared.read_path, clock),
        ):
            yield
        await cache.close()
        for pool in (pools.reader(), pools.writer()):
            await pool.close(timeout=5)

    app = FastAPI(title="telemetry api", lifespan=lifespan, **app_options(settings.docs_enabled))
    app.state.api = shared
    install_error_handlers(app)
    http_errors.install(app)
    # JSON bodies are small; the proof photo's upload bounds its own (api/uploads.py).
    app.add_middleware(
        BodyLimit, limit=settings.max_body_bytes, exempt=lambda path: path.endswith("/complete")
    )
    # The cached views' happy path skips FastAPI's routing (the routes stay the contract,
    # and answer everything the fast path passes on).
    app.add_middleware(
        FastReads, read_path=shared.read_path, verifier=shared.verifier, limit=shared.limit
    )
    routers = (job_routes, proof_routes, task_routes, share_routes, ops_routes, keys_routes)
    for router in (module.router for module in routers):
        app.include_router(router)
    mount_ops_page(app)
    share_routes.mount_share_page(app)
    app.include_router(position_routes.router)
    app.include_router(probes.router)
    if settings.metrics_port is None:  # else served on a port of its own
        app.include_router(probes.metrics_router)
    return app
