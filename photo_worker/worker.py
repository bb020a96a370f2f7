"""The photo worker's work: processes proof photos from `tasks.v1`, outside any request.

For each task: decode the photo (Pillow; broken images and bombs refused), strip its EXIF
(location included), make a thumbnail, record its sha256; then, in one transaction, mark
the task done and complete the job (event `job.completed`). A task's offset is committed
only after that transaction, and the transaction checks the task is still pending: a
worker killed mid-task does it again after a restart, and the job completes exactly once.
A record that makes the worker raise anything but an outage goes to `tasks.v1.dlq`, its
task fails and its job goes back to the driver (`settle`): the tasks after it go on. Beside
it, photo_worker/app.py runs the blob sweep (jobs/blob_sweep.py).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer
from prometheus_client import Counter
from pydantic import ValidationError

from jobs import store as job_store
from jobs.blobs import BlobStore
from jobs.errors import InvalidPhoto
from jobs.photos import process_photo
from photo_worker.config import PhotoWorkerSettings
from runtime.clock import Clock, SystemClock
from runtime.kafka import AckedProducer, Message, ProduceFailed, error_header
from runtime.postgres import TRANSIENT_ERRORS, Pool
from schemas import topics
from schemas.tasks import ProofPhotoTask

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    """Settles the task and its job in one transaction (jobs/store.py `finish_task`)."""
    async with pool.connection() as conn, conn.transaction():
        return await job_store.finish_task(conn, task, result, error)


# What waits and is tried again, the offset held: the database or the disk away.
# (ProduceFailed: the broker away, for the dead-letter step.)
TRANSIENT: tuple[type[Exception], ...] = (*TRANSIENT_ERRORS, OSError, ProduceFailed)


class Steps(Protocol):
    """What settling one record does, as ports (the worker's real ones, or a test's)."""

    async def handle(self, task: ProofPhotoTask) -> str: ...

    async def refuse(self, task: ProofPhotoTask, reason: str) -> str: ...

    async def dead_letter(self, key: bytes | None, value: bytes, error: str) -> None: ...


async def settle(
    steps: Steps,
    key: bytes | None,
    value: bytes,
    retry_s: float,
    clock: Clock | None = None,
) -> str:
    """Takes one `tasks.v1` record to an outcome, after which its offset may be committed.
    Transient failures are retried. Anything else the record makes us raise is poison: it
    goes to `tasks.v1.dlq` with its error, its task fails and its job goes back to the
    driver, and the records after it go on (one record never stops the worker)."""
    clock = clock or SystemClock()
    try:
        task = ProofPhotoTask.model_validate_json(value)
    except ValidationError as exc:
        log.error("not a task record, to the DLQ: %r", exc)
        malformed = f"not a task record: {exc}"
        await _retrying(lambda: steps.dead_letter(key, value, malformed), retry_s, clock)
        return "malformed"
    try:
        return await _retrying(lambda: steps.handle(task), retry_s, clock)
    except Exception as exc:
        log.exception("task %s failed unexpectedly, to the DLQ", task.task_id)
        error = f"{type(exc).__name__}: {exc}"[:500]
    await _retrying(lambda: steps.dead_letter(key, value, error), retry_s, clock)
    reason = f"proof could not be processed ({error})"
    try:
        await _retrying(lambda: steps.refuse(task, reason), retry_s, clock)
    except Exception:
        # The task or its job refuses the change too (not pending, not completing): the
        # record is in the DLQ with its error for an operator.
        log.exception("task %s could not be failed either", task.task_id)
    return "dead_lettered"


async def _retrying(operation: Callable[[], Awaitable[T]], retry_s: float, clock: Clock) -> T:
    while True:
        try:
            return await operation()
        except TRANSIENT as exc:
            log.warning("a task's step failed, retrying: %r", exc)
            await clock.sleep(retry_s)


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


async def consume(
    settings: PhotoWorkerSettings, steps: Steps, outcomes: Counter, clock: Clock
) -> None:
    """Settles `tasks.v1` records one by one, committing each offset once its record is
    settled. Returns never; raises what the broker raises (the caller starts again)."""
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
            value = message.value or b""
            outcome = await settle(steps, message.key, value, settings.retry_s, clock)
            outcomes.labels(outcome).inc()
            await consumer.commit()
    finally:
        await consumer.stop()
