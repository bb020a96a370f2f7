"""The Faust app: the worker that runs the consumer of `pings.v1` (streams/consumer.py)
around the batch step (streams/pipeline.py), partition and retention maintenance, and the
worker's probes."""

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import faust
from faust.app import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.clock import Clock, SystemClock
from runtime.heartbeat import beat
from runtime.kafka import AckedProducer, Message, ProduceFailed, durable_producer
from runtime.postgres import open_pool
from schemas import topics
from streams.clean import CleanBatch
from streams.config import StreamsSettings
from streams.consumer import PingConsumer
from streams.decode import Incoming
from streams.errors import SendFailed, SinkUnavailable
from streams.metrics import StreamsMetrics
from streams.pipeline import Backoff, Outgoing, PingBatchProcessor
from streams.sink import PingSink, SinkLimits

log = logging.getLogger(__name__)
# The exit status of a worker that stopped with a batch it could not finish: it exits
# without committing, so whoever takes its partitions replays the batch.
EXIT_UNFINISHED_BATCH = 75


def exit_without_commit() -> None:
    logging.shutdown()
    os._exit(EXIT_UNFINISHED_BATCH)


class KafkaSender:
    """The pipeline's Sender on our own durable producer: Faust's producer is neither
    idempotent nor bounded in time (its request timeout is 1200 s)."""

    def __init__(self, producer: AckedProducer) -> None:
        self._producer = producer

    async def send_all(self, messages: list[Outgoing]) -> None:
        try:
            await self._producer.send_all(
                [Message(m.topic, m.key, m.value, m.headers) for m in messages]
            )
        except ProduceFailed as exc:
            raise SendFailed(str(exc)) from exc


class LazySink:
    """Opens the pool on first use (inside the worker's event loop), then delegates."""

    def __init__(self, settings: StreamsSettings, metrics: StreamsMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._sink: PingSink | None = None
        # The first batch and the maintenance task ask at once: one pool, not two.
        self._opening = asyncio.Lock()

    async def get(self) -> PingSink:
        async with self._opening:
            return await self._open()

    async def _open(self) -> PingSink:
        if self._sink is None:
            s = self._settings
            pool = await open_pool(
                s.database_dsn, min_size=1, max_size=s.pool_max_size, name="streams"
            )
            limits = SinkLimits(
                lock_timeout_ms=s.lock_timeout_ms,
                statement_timeout_ms=s.statement_timeout_ms,
                future_tolerance=timedelta(seconds=s.future_tolerance_s),
                arrival_radius_m=s.arrival_radius_m,
            )
            self._sink = PingSink(pool, limits, self._count_aggregates)
        return self._sink

    def _count_aggregates(self, incremented: int, recounted: int) -> None:
        self._metrics.aggregate_minutes.labels("increment").inc(incremented)
        self._metrics.aggregate_minutes.labels("recount").inc(recounted)

    async def write(self, batch: list[Incoming]) -> CleanBatch:
        return await (await self.get()).write(batch)


@dataclass
class StreamsApp:
    """The Faust app, with the processor its worker must tell when it is stopping."""

    app: faust.App
    processor: PingBatchProcessor


class WorkerBoot(BootStrategy):
    """Faust runs the worker: its web server, timers, services, signals and lifecycle.
    `pings.v1` is consumed by PingConsumer and every send goes through our own durable
    producer, so Faust's own consumer and producer are not started."""

    enable_kafka_consumer = False
    enable_kafka_producer = False


class WorkerApp(faust.App):
    """The Faust app of a stream worker, booted without Faust's own consumer and producer
    (WorkerBoot)."""

    BootStrategy = WorkerBoot


def create_app(
    settings: StreamsSettings,
    metrics: StreamsMetrics | None = None,
    *,
    on_unfinished_batch: Callable[[], None] = exit_without_commit,
) -> StreamsApp:
    """The worker: the consumer feeding the batch step, the sink and the producer it uses,
    partition maintenance and the probes. `on_unfinished_batch` ends the process when a
    batch cannot finish (its offsets uncommitted: another worker replays it)."""
    metrics = metrics or StreamsMetrics()
    clock = SystemClock()
    app = WorkerApp(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        topic_replication_factor=settings.topic_replication_factor,
        store="memory://",
        datadir=str(settings.data_dir),
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )
    sink = LazySink(settings, metrics)
    producer = AckedProducer(
        lambda: durable_producer(settings.kafka_bootstrap, client_id="streams"),
        timeout_s=settings.produce_timeout_s,
        shutdown_timeout_s=settings.shutdown_grace_s,
    )
    processor = PingBatchProcessor(
        sink,
        KafkaSender(producer),
        positions_topic=settings.positions_topic,
        dlq_topic=topics.dlq(settings.pings_topic),
        metrics=metrics,
        backoff=Backoff(max_s=settings.retry_backoff_max_s),
        shutdown_grace_s=settings.shutdown_grace_s,
        max_pings=settings.batch_max_pings,
        concurrent_flushes=settings.concurrent_flushes,
        clock=clock,
    )

    consumer = PingConsumer(settings, processor.process, on_unfinished_batch)

    async def consume() -> None:
        await app.add_runtime_dependency(consumer)

    app.task(consume)

    @app.on_before_shutdown.connect
    async def close_producer(*_: Any, **__: Any) -> None:
        # Faust says this before it stops its services: the consumer stops first (its
        # batch in flight still sends positions and dead letters), then the producer.
        await consumer.stop()
        await producer.close()

    _schedule_maintenance(app, settings, sink)
    if settings.heartbeat_path is not None:
        _beat_while_running(app, settings.heartbeat_path, clock)
    _add_pages(app, settings, processor, sink, metrics, clock)
    return StreamsApp(app, processor)


async def maintain_once(settings: StreamsSettings, sink: LazySink) -> None:
    """Keeps the daily partitions ahead and drops what retention ends. Never raises: it runs
    again at the next interval."""
    try:
        target = await sink.get()
        created = await target.ensure_partitions(
            settings.partition_days_back, settings.partition_days_ahead
        )
        dropped = await target.drop_partitions_older_than(settings.retention_days)
        rows = await target.drop_aggregates_older_than(
            timedelta(days=settings.minute_aggregates_retention_days),
            timedelta(days=settings.hourly_aggregates_retention_days),
        )
    except Exception as exc:  # maintenance must never kill the worker; it runs again
        log.warning("maintenance failed: %r", exc)
        return
    if created or dropped or rows:
        log.info(
            "maintenance: %d partitions created, %d dropped, %d aggregate rows expired",
            created, dropped, rows,
        )  # fmt: skip


def _schedule_maintenance(app: faust.App, settings: StreamsSettings, sink: LazySink) -> None:
    async def maintain() -> None:
        await maintain_once(settings, sink)

    # Every worker keeps the daily partitions ahead: at start, then periodically. Idempotent.
    app.task(maintain)
    app.timer(interval=settings.maintenance_interval_s, on_leader=False)(maintain)


def _beat_while_running(app: faust.App, path: Path, clock: Clock) -> None:
    # The supervisor's proof that this worker's loop turns (runtime/heartbeat.py).
    async def heartbeat() -> None:
        await beat(path, clock)

    app.task(heartbeat)


def _add_pages(
    app: faust.App,
    settings: StreamsSettings,
    processor: PingBatchProcessor,
    sink: LazySink,
    metrics: StreamsMetrics,
    clock: Clock,
) -> None:
    """The worker's probes and metrics on Faust's web server, counted in the request
    metrics like every service's pages."""

    def counted(route: str) -> Callable[[Any], Any]:
        def wrap(view: Any) -> Any:
            @functools.wraps(view)
            async def counted_view(web: Any, request: Any) -> Any:
                started = clock.monotonic()
                response = await view(web, request)
                elapsed = clock.monotonic() - started
                metrics.requests.observe(route, request.method, response.status, elapsed)
                return response

            return app.page(route)(counted_view)

        return wrap

    # Faust's view functions receive its web adapter and the request.
    @counted("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        stalled_s = processor.health.stalled_for(clock.monotonic())
        if stalled_s > settings.health_stall_s:
            return web.json(
                {"status": "stalled", "batch_waiting_s": round(stalled_s, 1)}, status=503
            )
        return web.json({"status": "ok"})

    @counted("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        try:
            await (await sink.get()).ping()
        except SinkUnavailable as exc:
            return web.json({"status": "unavailable", "database": str(exc)}, status=503)
        return web.json({"status": "ready"})

    @counted("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type: pass the full header instead.
        return web.bytes(
            generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
