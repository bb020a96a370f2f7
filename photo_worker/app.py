"""The photo worker's process: the `tasks.v1` consumer and the blob sweep as background tasks
of an app whose routes are its probes and metrics, served like every other service."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter

from jobs.blob_sweep import SweepLimits, sweep_blobs
from jobs.blobs import BlobStore, DirectoryBlobStore
from photo_worker.config import PhotoWorkerSettings
from photo_worker.worker import WorkerSteps, consume
from runtime.clock import Clock, SystemClock
from runtime.http import json_response, metrics_response
from runtime.kafka import AckedProducer, durable_producer
from runtime.postgres import DATABASE_ERRORS, Pool, open_pool

log = logging.getLogger(__name__)
# The database does not answer, or the lifespan has not opened the pool yet.
NOT_READY: tuple[type[Exception], ...] = (*DATABASE_ERRORS, LookupError)


async def _consume_forever(
    settings: PhotoWorkerSettings, steps: WorkerSteps, outcomes: Counter, clock: Clock
) -> None:
    while True:  # the broker may be down at start, or go away
        try:
            await consume(settings, steps, outcomes, clock)
        except (KafkaError, OSError) as exc:
            log.warning("consumer failed, restarting: %r", exc)
            await clock.sleep(settings.retry_s)


async def _sweep_forever(
    settings: PhotoWorkerSettings, pool: Pool, blobs: BlobStore, clock: Clock
) -> None:
    limits = SweepLimits(
        orphan_after_s=settings.orphan_blob_after_s,
        raw_keep_s=settings.raw_photo_keep_hours * 3600,
    )
    while True:
        try:
            await sweep_blobs(pool, blobs, limits, clock)
        except Exception:  # the next sweep tries again; tasks go on meanwhile
            log.exception("blob sweep failed")
        await clock.sleep(settings.blob_sweep_every_s)


def create_app(
    settings: PhotoWorkerSettings, registry: CollectorRegistry, clock: Clock | None = None
) -> FastAPI:
    """The worker's app. Its lifespan opens the pool and the DLQ producer, runs the consumer
    and the sweep until shutdown, then cancels them (an unfinished task's offset is not
    committed: the next worker does it again) and closes what it opened."""
    outcomes = Counter("photo_worker_tasks", "Tasks by outcome", ["outcome"], registry=registry)
    clock = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await open_pool(settings.database_dsn, min_size=1, max_size=4, name="photo-worker")
        producer = AckedProducer(
            lambda: durable_producer(settings.kafka_bootstrap, client_id="photo-worker-dlq"),
            timeout_s=5.0,
            shutdown_timeout_s=2.0,
        )
        steps = WorkerSteps(pool, DirectoryBlobStore(settings.blob_dir), producer)
        consumer = asyncio.create_task(_consume_forever(settings, steps, outcomes, clock))
        sweeper = asyncio.create_task(_sweep_forever(settings, pool, steps.blobs, clock))
        app.state.pool = pool
        app.state.consumer = consumer
        yield
        for running in (consumer, sweeper):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        await producer.close()
        await pool.close(timeout=5)

    app = FastAPI(title="telemetry photo worker", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        consumer: asyncio.Task[None] | None = getattr(request.app.state, "consumer", None)
        alive = consumer is not None and not consumer.done()
        return json_response({"status": "ok" if alive else "stopped"}, 200 if alive else 503)

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        pool: Pool | None = getattr(request.app.state, "pool", None)
        try:
            if pool is None:
                raise LookupError("not started")
            async with pool.connection(timeout=1) as conn:
                await conn.execute("SELECT 1")
        except NOT_READY:
            return json_response({"status": "unavailable"}, 503, {"Retry-After": "1"})
        return json_response({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return metrics_response(registry)

    return app
