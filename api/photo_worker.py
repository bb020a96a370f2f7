"""`python -m api.photo_worker`: processes proof photos from `tasks.v1`, outside any request.

For each task: decode the photo (Pillow; broken images and bombs refused), strip its EXIF
(location included), make a thumbnail, record its sha256; then, in one transaction, mark
the task done and complete the job (event `job.completed`). A task's offset is committed
only after that transaction, and the transaction checks the task is still pending: a
worker killed mid-task does it again after a restart, and the job completes exactly once.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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
from api.blobs import BlobStore, DirectoryBlobStore
from api.errors import InvalidPhoto
from api.job_rules import Action
from api.photos import process_photo
from runtime.http import json_response, metrics_response
from runtime.logging import configure_logging
from runtime.one_write import OneWriteHttpToolsProtocol
from runtime.postgres import Pool, open_pool
from runtime.request_metrics import instrument
from runtime.settings import ServiceSettings
from schemas import topics
from schemas.tasks import ProofPhotoTask

log = logging.getLogger(__name__)


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
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        photo = await asyncio.to_thread(process_photo, data)
    except InvalidPhoto as exc:
        outcome, error = "failed", str(exc)
    else:
        await asyncio.to_thread(blobs.put_as, f"{task.task_id}-photo", photo.clean)
        await asyncio.to_thread(blobs.put_as, f"{task.task_id}-thumbnail", photo.thumbnail)
        outcome = "done"
        result = {
            "sha256": photo.sha256,
            "format": photo.format,
            "width": photo.width,
            "height": photo.height,
            "photo": f"{task.task_id}-photo",
            "thumbnail": f"{task.task_id}-thumbnail",
        }
    async with pool.connection() as conn, conn.transaction():
        locked = await conn.execute(
            "SELECT status FROM tasks WHERE task_id = %s FOR UPDATE", [task.task_id]
        )
        row = await locked.fetchone()
        if row is None or row[0] != "pending":
            return "skipped"  # another worker finished it meanwhile (a rebalance)
        await conn.execute(
            "UPDATE tasks SET status = %s, result = %s, error = %s, updated_at = now()"
            " WHERE task_id = %s",
            [outcome, orjson.dumps(result).decode() if result else None, error, task.task_id],
        )
        # A broken proof sends the job back to the driver, who may send another.
        action = Action.FINISH if outcome == "done" else Action.REFUSE_PROOF
        await job_store.transition(conn, None, task.job_id, action)
    return outcome


async def consume(
    settings: PhotoWorkerSettings, pool: Pool, blobs: BlobStore, outcomes: Counter
) -> None:
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
            try:
                task = ProofPhotoTask.model_validate_json(message.value or b"")
            except ValidationError as exc:
                log.error("not a task record, skipped: %r", exc)
                outcomes.labels("malformed").inc()
            else:
                while True:
                    try:
                        outcomes.labels(await handle(pool, blobs, task)).inc()
                        break
                    except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
                        log.warning("task %s failed, retrying: %r", task.task_id, exc)
                        await asyncio.sleep(settings.retry_s)
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
        blobs = DirectoryBlobStore(settings.blob_dir)

        async def run_forever() -> None:
            while True:  # the broker may be down at start, or go away
                try:
                    await consume(settings, pool, blobs, outcomes)
                except (KafkaError, OSError) as exc:
                    log.warning("consumer failed, restarting: %r", exc)
                    await asyncio.sleep(settings.retry_s)

        task = asyncio.create_task(run_forever())
        state["task"] = task
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
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
