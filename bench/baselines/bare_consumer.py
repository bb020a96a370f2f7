"""The stream's ceiling: a bare aiokafka consumer decoding the same records and storing their
pings by COPY (staging table, then INSERT ... ON CONFLICT DO NOTHING, as the sink does), with
no Faust, cleaning or aggregates."""

import time
import uuid
from dataclasses import dataclass

import psycopg
from aiokafka import AIOKafkaConsumer

from schemas.pings import PingBatchRecord

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
    records: int
    pings: int
    seconds: float

    @property
    def pings_per_s(self) -> float:
        return self.pings / self.seconds if self.seconds else 0.0


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
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, prepare_threshold=None
    ) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(
            f"CREATE TABLE {TABLE} (LIKE pings INCLUDING DEFAULTS,"
            " PRIMARY KEY (driver_id, ts, ping_id))"
        )
        await consumer.start()
        records = pings = 0
        started = time.perf_counter()
        try:
            while time.perf_counter() - started < duration_s:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                messages = [m for ms in batches.values() for m in ms]
                if not messages:
                    continue
                rows = []
                for m in messages:
                    try:
                        record = PingBatchRecord.model_validate_json(m.value)
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
                    async with conn.cursor().copy(
                        f"COPY stage ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(TYPES)
                        for row in rows:
                            await copy.write_row(row)
                    await conn.execute(
                        f"INSERT INTO {TABLE} SELECT * FROM stage ON CONFLICT DO NOTHING"
                    )
                await consumer.commit()
                records += len(messages)
                pings += len(rows)
            elapsed = time.perf_counter() - started
        finally:
            await consumer.stop()
            await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    return ConsumeResult(records, pings, elapsed)
