"""`python -m api.photo_worker`: processes proof photos from `tasks.v1`, outside any request.

For each task: decode the photo (Pillow; broken images and bombs refused), strip its EXIF
(location included), make a thumbnail, record its sha256; then, in one transaction, mark
the task done and complete the job (event `job.completed`). A task's offset is committed
only after that transaction, and the transaction checks the task is still pending: a
worker killed mid-task does it again after a restart, and the job completes exactly once.
A record that makes the worker raise anything but an outage goes to `tasks.v1.dlq`, its
task fails and its job goes back to the driver (`settle`): the tasks after it go on. In the
background, the blob sweep removes orphaned and expired uploads (api/blob_sweep.py).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import psycopg
import uvicorn
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from api import job_store
from api.blob_sweep import SweepLimits, sweep_blobs
from api.blobs import BlobStore, DirectoryBlobStore
from api.errors import InvalidPhoto
from api.job_rules import Action
from api.photos import process_photo
from runtime.http import json_response, metrics_response
from runtime.kafka import AckedProducer, Message, ProduceFailed, durable_producer, error_header
from runtime.logging import configure_logging
from runtime.one_write import OneWriteHttpToolsProtocol
from runtime.postgres import Pool, open_pool
from runtime.request_metrics import instrument
from runtime.settings import ServiceSettings
from schemas import topics
from schemas.tasks import ProofPhotoTask

log = logging.getLogger(__name__)
T = TypeVar("T")


class PhotoWorkerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PHOTO_WORKER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 18301  # /healthz, /readyz, /metrics
    kafka_bootstrap: str = "127.0.0.1:19092"
    group_id: str = topics.PHOTO_WORKER_GROUP
    # PgBouncer's read-write entry (the primary).
    database_dsn: str = "host=127.0.0.1 port=16432 dbname=telemetry user=telemetry"
    blob_dir: Path = Path(".telemetry/blobs")
    retry_s: float = 1.0
    # The blob sweep (api/blob_sweep.py): how often, when an unreferenced upload is an
    # orphan, and how long a proof's raw upload (with its EXIF location) is kept.
    blob_sweep_every_s: float = 600.0
    orphan_blob_after_s: float = 3600.0
    raw_photo_keep_hours: float = 7 * 24.0


async def handle(pool: Pool, blobs: BlobStore, task: ProofPhotoTask) -> str:
    """Does one task; returns what happened ("done", "failed" or "skipped"). Raises on a
    database that does not answer (the caller retries without committing the offset)."""
    async with pool.connection() as conn:
        current = await job_store.read_task(conn, task.task_id)
    if current is None or current.status != "pending":
        return "skipped"  # done before a crash, between its commit and the offset's
    try:
        data = await asyncio.to_thread(blobs.get, task.blob)
    except FileNotFoundError:
        data = b""  # lost with its disk: refused below like any broken photo
    try:
        photo = await asyncio.to_thread(process_photo, data)
    except InvalidPhoto as exc:
        return await finish(pool, task, None, str(exc))
    await asyncio.to_thread(blobs.put_as, f"{task.task_id}-photo", photo.clean)
    await asyncio.to_thread(blobs.put_as, f"{task.task_id}-thumbnail", photo.thumbnail)
    result = {
        "sha256": photo.sha256,
        "format": photo.format,
        "width": photo.width,
        "height": photo.height,
        "photo": f"{task.task_id}-photo",
        "thumbnail": f"{task.task_id}-thumbnail",
    }
    return await finish(pool, task, result, None)


async def finish(
    pool: Pool, task: ProofPhotoTask, result: dict[str, Any] | None, error: str | None
) -> str:
    """Marks the task done (with `result`) or failed (with `error`), and moves its job on in
    the same transaction: completed, or back to the driver with the reason in its event."""
    async with pool.connection() as conn, conn.transaction():
        locked = await conn.execute(
            "SELECT status FROM tasks WHERE task_id = %s FOR UPDATE", [task.task_id]
        )
        row = await locked.fetchone()
        if row is None or row[0] != "pending":
            return "skipped"  # another worker finished it meanwhile (a rebalance)
        outcome = "done" if error is None else "failed"
        await conn.execute(
            "UPDATE tasks SET status = %s, result = %s, error = %s, updated_at = now()"
            " WHERE task_id = %s",
            [outcome, orjson.dumps(result).decode() if result else None, error, task.task_id],
        )
        if error is None:
            await job_store.transition(conn, None, task.job_id, Action.FINISH)
        else:
            # A refused proof sends the job back to the driver, who may send another.
            await job_store.transition(conn, None, task.job_id, Action.REFUSE_PROOF, reason=error)
    return outcome


# What waits and is tried again, the offset held: the database or the disk away.
TRANSIENT = (psycopg.OperationalError, PoolTimeout, OSError)


class Steps(Protocol):
    """What settling one record does, as ports (the worker's real ones, or a test's)."""

    async def handle(self, task: ProofPhotoTask) -> str: ...

    async def refuse(self, task: ProofPhotoTask, reason: str) -> str: ...

    async def dead_letter(self, key: bytes | None, value: bytes, error: str) -> None: ...


async def settle(steps: Steps, key: bytes | None, value: bytes, retry_s: float) -> str:
    """Takes one `tasks.v1` record to an outcome, after which its offset may be committed.
    Transient failures are retried. Anything else the record makes us raise is poison: it
    goes to `tasks.v1.dlq` with its error, its task fails and its job goes back to the
    driver, and the records after it go on (one record never stops the worker)."""
    try:
        task = ProofPhotoTask.model_validate_json(value)
    except ValidationError as exc:
        log.error("not a task record, to the DLQ: %r", exc)
        malformed = f"not a task record: {exc}"
        await _retrying(lambda: steps.dead_letter(key, value, malformed), retry_s)
        return "malformed"
    try:
        return await _retrying(lambda: steps.handle(task), retry_s)
    except Exception as exc:
        log.exception("task %s failed unexpectedly, to the DLQ", task.task_id)
        error = f"{type(exc).__name__}: {exc}"[:500]
    await _retrying(lambda: steps.dead_letter(key, value, error), retry_s)
    reason = f"proof could not be processed ({error})"
    try:
        await _retrying(lambda: steps.refuse(task, reason), retry_s)
    except Exception:
        # The task or its job refuses the change too (not pending, not completing): the
        # record is in the DLQ with its error for an operator.
        log.exception("task %s could not be failed either", task.task_id)
    return "dead_lettered"


async def _retrying(operation: Callable[[], Awaitable[T]], retry_s: float) -> T:
    while True:
        try:
            return await operation()
        except (*TRANSIENT, ProduceFailed) as exc:
            log.warning("a task's step failed, retrying: %r", exc)
            await asyncio.sleep(retry_s)


@dataclass(frozen=True)
class WorkerSteps:
    """The real steps: the database, the blob store and the dead-letter topic."""

    pool: Pool
    blobs: BlobStore
    producer: AckedProducer

    async def handle(self, task: ProofPhotoTask) -> str:
        return await handle(self.pool, self.blobs, task)

    async def refuse(self, task: ProofPhotoTask, reason: str) -> str:
        return await finish(self.pool, task, None, reason)

    async def dead_letter(self, key: bytes | None, value: bytes, error: str) -> None:
        dead = Message(topics.dlq(topics.TASKS), key, value, (error_header(error),))
        await self.producer.send_all([dead])


async def consume(settings: PhotoWorkerSettings, steps: Steps, outcomes: Counter) -> None:
    consumer = AIOKafkaConsumer(
        topics.TASKS,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=10,
    )
    await consumer.start()
    try:
        async for message in consumer:
            outcome = await settle(steps, message.key, message.value or b"", settings.retry_s)
            outcomes.labels(outcome).inc()
            await consumer.commit()
    finally:
        await consumer.stop()


def create_app(settings: PhotoWorkerSettings, registry: CollectorRegistry) -> FastAPI:
    outcomes = Counter("photo_worker_tasks", "Tasks by outcome", ["outcome"], registry=registry)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool = await open_pool(settings.database_dsn, min_size=1, max_size=4, name="photo-worker")
        state["pool"] = pool
        producer = AckedProducer(
            lambda: durable_producer(settings.kafka_bootstrap, client_id="photo-worker-dlq"),
            timeout_s=5.0,
            shutdown_timeout_s=2.0,
        )
        steps = WorkerSteps(pool, DirectoryBlobStore(settings.blob_dir), producer)

        async def run_forever() -> None:
            while True:  # the broker may be down at start, or go away
                try:
                    await consume(settings, steps, outcomes)
                except (KafkaError, OSError) as exc:
                    log.warning("consumer failed, restarting: %r", exc)
                    await asyncio.sleep(settings.retry_s)

        async def sweep_forever() -> None:
            limits = SweepLimits(
                orphan_after_s=settings.orphan_blob_after_s,
                raw_keep_s=settings.raw_photo_keep_hours * 3600,
            )
            while True:
                try:
                    await sweep_blobs(pool, steps.blobs, limits)
                except Exception:  # the next sweep tries again; tasks go on meanwhile
                    log.exception("blob sweep failed")
                await asyncio.sleep(settings.blob_sweep_every_s)

        task = asyncio.create_task(run_forever())
        sweeper = asyncio.create_task(sweep_forever())
        state["task"] = task
        yield
        for running in (task, sweeper):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        await producer.close()
        await pool.close(timeout=5)

    app = FastAPI(title="telemetry photo worker", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> Response:
        alive = "task" in state and not state["task"].done()
        return json_response({"status": "ok" if alive else "stopped"}, 200 if alive else 503)

    @app.get("/readyz")
    async def readyz() -> Response:
        try:
            async with state["pool"].connection(timeout=1) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, PoolTimeout, KeyError):
            return json_response({"status": "unavailable"}, 503, {"Retry-After": "1"})
        return json_response({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return metrics_response(registry)

    return app


def main() -> None:
    settings = PhotoWorkerSettings()
    configure_logging(settings.log_level, "photo-worker")
    registry = CollectorRegistry()
    uvicorn.run(
        instrument(create_app(settings, registry), registry),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=OneWriteHttpToolsProtocol,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()
