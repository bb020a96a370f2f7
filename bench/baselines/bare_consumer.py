"""The stream's ceiling: a bare aiokafka consumer decoding the same records with the
stream's decoder and storing their pings by COPY (staging table, then INSERT ... ON
CONFLICT DO NOTHING, as the sink does), with no Faust, cleaning or aggregates."""

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from schemas.pings_wire import decode_record

TABLE = "bench_bare_pings"
COLUMNS = (
    "driver_id, ts, ping_id, lat, lon, accuracy_m, speed_mps, heading_deg, battery_pct,"
    " job_id, received_at"
)
TYPES = [
    "text",
    "timestamptz",
    "uuid",
    "float8",
    "float8",
    "float4",
    "float4",
    "float4",
    "float4",
    "uuid",
    "timestamptz",
]


@dataclass(frozen=True)
class ConsumeResult:
    """What the bare consumer stored: records, pings and the time it took."""

    records: int
    pings: int
    seconds: float

    @property
    def pings_per_s(self) -> float:
        return self.pings / self.seconds if self.seconds else 0.0


@contextlib.asynccontextmanager
async def _scratch_table(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection with a fresh copy of `pings` to store into, dropped afterwards."""
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, prepare_threshold=None
    ) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(
            f"CREATE TABLE {TABLE} (LIKE pings INCLUDING DEFAULTS,"
            " PRIMARY KEY (driver_id, ts, ping_id))"
        )
        try:
            yield conn
        finally:
            await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


async def _store(
    conn: psycopg.AsyncConnection[Any], messages: list[ConsumerRecord[Any, Any]]
) -> int:
    """Decodes the records and stores their pings in one transaction; returns how many."""
    rows = []
    for m in messages:
        try:
            record = decode_record(m.value)
        except ValueError:
            continue
        rows += [
            (record.driver_id, p.ts, p.ping_id, p.lat, p.lon, p.accuracy_m, p.speed_mps,
             p.heading_deg, p.battery_pct, p.job_id, record.received_at)
            for p in record.pings
        ]  # fmt: skip
    async with conn.transaction():
        await conn.execute(
            f"CREATE TEMP TABLE stage (LIKE {TABLE} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        async with conn.cursor().copy(f"COPY stage ({COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(TYPES)
            for row in rows:
                await copy.write_row(row)
        await conn.execute(f"INSERT INTO {TABLE} SELECT * FROM stage ON CONFLICT DO NOTHING")
    return len(rows)


async def consume_copy(bootstrap: str, topic: str, dsn: str, duration_s: float) -> ConsumeResult:
    """Consumes `topic` from its start for `duration_s` into a scratch copy of `pings`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    async with _scratch_table(dsn) as conn:
        await consumer.start()
        records = pings = 0
        started = time.perf_counter()
        try:
            while time.perf_counter() - started < duration_s:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                messages = [m for ms in batches.values() for m in ms]
                if not messages:
                    continue
                pings += await _store(conn, messages)
                await consumer.commit()
                records += len(messages)
            elapsed = time.perf_counter() - started
        finally:
            await consumer.stop()
    return ConsumeResult(records, pings, elapsed)


async def drain_copy(
    bootstrap: str, topic: str, dsn: str, start: dict[int, int], end: dict[int, int]
) -> ConsumeResult:
    """Consumes the records of `topic` between the offsets `start` and `end` (per partition)
    into a scratch copy of `pings`, as fast as it can; the time is until the last one."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    partitions = [TopicPartition(topic, p) for p, offset in end.items() if offset > start[p]]
    async with _scratch_table(dsn) as conn:
        await consumer.start()
        records = pings = 0
        try:
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, start[tp.partition])
            remaining = set(partitions)
            started = time.perf_counter()
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
                messages = []
                for tp, ms in batches.items():
                    messages += [m for m in ms if m.offset < end[tp.partition]]
                    if await consumer.position(tp) >= end[tp.partition]:
                        remaining.discard(tp)
                if messages:
                    pings += await _store(conn, messages)
                    records += len(messages)
            elapsed = time.perf_counter() - started
        finally:
            await consumer.stop()
    return ConsumeResult(records, pings, elapsed)
