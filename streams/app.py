"""The Faust app: a thin agent around the pure decode/rows steps and the sink."""

import asyncio
import logging
import time
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.postgres import open_pool
from schemas import topics
from schemas.pings import PingBatchRecord
from schemas.positions import PositionUpdate
from streams.clean import LATE, TELEPORT, CleanBatch, CleanPing
from streams.config import StreamsSettings
from streams.decode import split_batch
from streams.errors import SinkUnavailable
from streams.metrics import StreamsMetrics
from streams.sink import PingSink

log = logging.getLogger(__name__)


def position_update(moved: CleanPing) -> PositionUpdate:
    p = moved.ping
    return PositionUpdate(
        driver_id=moved.driver_id, ping_id=p.ping_id, ts=p.ts, lat=p.lat, lon=p.lon,
        speed_mps=p.speed_mps, heading_deg=p.heading_deg, job_id=p.job_id,
    )  # fmt: skip


def create_app(settings: StreamsSettings, metrics: StreamsMetrics | None = None) -> faust.App:
    metrics = metrics or StreamsMetrics()
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        topic_partitions=topics.DRIVER_TOPIC_PARTITIONS,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # A worker killed without goodbye holds its partitions until this runs out.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 5,
    )
    pings = app.topic(
        settings.pings_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=topics.DRIVER_TOPIC_PARTITIONS,
    )
    positions = app.topic(settings.positions_topic, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(topics.dlq(settings.pings_topic), key_serializer="raw", value_serializer="raw")
    state: dict[str, Any] = {}

    async def sink() -> PingSink:
        if "sink" not in state:
            pool = await open_pool(
                settings.database_dsn, min_size=1, max_size=settings.pool_max_size, name="streams"
            )
            state["pool"] = pool
            state["sink"] = PingSink(pool)
        result: PingSink = state["sink"]
        return result

    async def write_until_done(records: list[PingBatchRecord]) -> CleanBatch:
        # The batch's offsets are acked only when this returns, so retrying here (rather
        # than skipping) keeps at-least-once: nothing is committed past unwritten rows.
        backoff_s = 0.1
        target = await sink()
        while True:
            started = time.perf_counter()
            try:
                batch = await target.write(records)
            except SinkUnavailable as exc:
                metrics.sink_failures.inc()
                log.warning("sink write failed, retrying in %.1f s: %s", backoff_s, exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, settings.retry_backoff_max_s)
                continue
            metrics.flush_latency.observe(time.perf_counter() - started)
            return batch

    @app.agent(pings)
    async def process_pings(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            messages = [(e.message.key, e.message.value) for e in events]
            records, poison = split_batch(messages)
            for bad in poison:
                log.warning("poison record to DLQ: %s", bad.error[:200])
                await dlq.send(
                    key=bad.key, value=bad.value, headers={"error": bad.error.encode()[:4000]}
                )
            metrics.poison.inc(len(poison))
            batch = await write_until_done(records)
            # After the commit: the notifier only ever hears of positions that are stored.
            for moved in batch.moved.values():
                update = position_update(moved)
                await positions.send(
                    key=moved.driver_id.encode(), value=update.model_dump_json().encode()
                )
            metrics.records.inc(len(records))
            metrics.pings.inc(len(batch.pings))
            for flag in (TELEPORT, LATE):
                metrics.flagged.labels(flag).inc(sum(1 for p in batch.pings if flag in p.flags))

    async def maintain_partitions() -> None:
        try:
            target = await sink()
            created = await target.ensure_partitions(
                settings.partition_days_back, settings.partition_days_ahead
            )
            dropped = await target.drop_partitions_older_than(settings.retention_days)
        except Exception as exc:  # maintenance must never kill the worker; it runs again
            log.warning("partition maintenance failed: %r", exc)
            return
        if created or dropped:
            log.info("pings partitions: %d created, %d dropped", created, dropped)

    # Every worker keeps the daily partitions ahead: at start, then periodically. Idempotent.
    app.task(maintain_partitions)
    app.timer(interval=settings.maintenance_interval_s, on_leader=False)(maintain_partitions)

    # Faust's view functions receive its web adapter and the request.
    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type: pass the full header instead.
        return web.bytes(
            generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return app
