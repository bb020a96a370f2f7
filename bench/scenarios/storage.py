"""storage: TimescaleDB and native PostgreSQL side by side, in one run. Each gets a stack of
its own (started here in a scratch state dir, one after the other, so they never share the
machine), and the same measurements:

- the stream's throughput: a backlog of pings produced straight to `pings.v1` while the
  worker is stopped, then the rate at which the started worker stores it (from the first
  stored ping to the last); beside it the bare consumer + COPY ceiling over the same
  records;
- bytes per million pings: a day of road-like tracks (`drivers` drivers, one ping every
  4 s) loaded ten days back as the stream writes them, its partition's size on native, its
  chunk's size before and after compression on TimescaleDB;
- queries over that day: a driver's 24-hour track, a driver's one-hour stats (the hourly
  table, or the continuous aggregate), the fleet's one-hour stats from raw pings; median
  and p95 of `repeat` runs, on TimescaleDB before and after compression.

Options (--set KEY=VALUE): storages (default timescaledb,native), backlog (pings, default
200000), drivers (default 48), repeat (default 20), ceiling_s (default 20)."""

import asyncio
import random
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import psycopg
from aiokafka import AIOKafkaProducer

from bench.baselines.bare_consumer import consume_copy
from bench.harness import STREAMS_GROUP
from bench.report import save_figure
from bench.routes import CITIES, Vehicle
from infra import postgres
from infra.procs import StackError, wait_until
from infra.stack import Stack, scratch_config
from runtime.kafka_lag import consumer_group_lag
from schemas import topics
from schemas.pings import Ping, PingBatchRecord
from streams.rows import PING_COLUMNS, PingRow, h3_cell

# This scenario starts its own stacks; the harness need not start the default one.
NEEDS_STACK = False
PINGS_PER_RECORD = 10
INTERVAL_S = 4


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    storages = str(options.get("storages", "timescaledb,native")).split(",")
    report = stack.report
    results = {}
    for storage in storages:
        config = scratch_config("telemetry-bench-storage-", storage=storage)
        own = Stack(config, report)
        try:
            own.up()
            actual = postgres.describe(config, "primary").get("storage", "")
            if not actual.startswith(storage):
                raise StackError(f"asked for {storage}, the server runs {actual!r}")
            report(f"{storage}: stream throughput")
            results[storage] = {"server": actual} | measure(own, options, report)
        finally:
            own.down()
            shutil.rmtree(config.state_dir, ignore_errors=True)
    return {
        "config": {k: options.get(k) for k in ("backlog", "drivers", "repeat") if k in options},
        "storages": results,
    }


def measure(stack: Stack, options: dict[str, Any], report: Callable[[str], None]) -> dict[str, Any]:
    config = stack.config
    primary = postgres.dsn(config, "primary")
    stream = stream_throughput(stack, int(options.get("backlog", 200_000)))
    ceiling = asyncio.run(
        consume_copy(
            config.kafka_bootstrap, topics.PINGS, primary, float(options.get("ceiling_s", 20))
        )
    )
    report("a day of pings, ten days back")
    day = (datetime.now(UTC) - timedelta(days=10)).date()
    drivers = [f"day-{i}" for i in range(int(options.get("drivers", 48)))]
    with psycopg.connect(primary, autocommit=True) as conn:
        timescale = bool(
            conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        )
        loaded = load_day(conn, drivers, day, timescale)
        repeat = int(options.get("repeat", 20))
        result: dict[str, Any] = {
            "stream": stream,
            "ceiling_pings_per_s": round(ceiling.pings_per_s, 1),
            "day": {"pings": loaded, "drivers": len(drivers)},
        }
        if timescale:
            chunk = day_chunk(conn, day)
            before = chunk_bytes(conn, chunk)
            result["queries_uncompressed"] = time_queries(conn, drivers, day, repeat)
            report("compressing the day's chunk")
            started = time.perf_counter()
            conn.execute("SELECT compress_chunk(%s)", [f"_timescaledb_internal.{chunk}"])
            compress_s = time.perf_counter() - started
            stats = conn.execute(
                "SELECT before_compression_total_bytes, after_compression_total_bytes"
                " FROM chunk_compression_stats('pings') WHERE chunk_name = %s",
                [chunk],
            ).fetchone()
            assert stats is not None
            result["bytes_per_million_pings"] = {
                "uncompressed": per_million(before, loaded),
                "compressed": per_million(stats[1], loaded),
            }
            result["compression"] = {
                "ratio": round(stats[0] / stats[1], 1),
                "seconds": round(compress_s, 1),
            }
            result["queries"] = time_queries(conn, drivers, day, repeat)
        else:
            size = conn.execute(
                "SELECT pg_total_relation_size(%s)", [f"pings_{day:%Y%m%d}"]
            ).fetchone()
            assert size is not None
            result["bytes_per_million_pings"] = {"uncompressed": per_million(size[0], loaded)}
            result["queries"] = time_queries(conn, drivers, day, repeat)
    return result


def per_million(size: int, pings: int) -> int:
    return round(size / pings * 1_000_000)


# --- the stream ------------------------------------------------------------------------


def backlog_records(pings: int, drivers: int = 2000) -> Iterator[PingBatchRecord]:
    """Road-like tracks of the last hour, ten pings per record, drivers in turn."""
    rng = random.Random(7)
    city = CITIES["bengaluru"]
    vehicles = [Vehicle(rng, city) for _ in range(drivers)]
    start = datetime.now(UTC) - timedelta(hours=1)
    steps = dict.fromkeys(range(drivers), 0)
    for n in range(pings // PINGS_PER_RECORD):
        d = n % drivers
        batch = []
        for _ in range(PINGS_PER_RECORD):
            fix = vehicles[d].advance(INTERVAL_S / 4)  # dense enough to fit in the hour
            ts = start + timedelta(seconds=steps[d] * INTERVAL_S / 4)
            steps[d] += 1
            batch.append(
                Ping(
                    ping_id=uuid.uuid4(),
                    ts=ts,
                    lat=fix.lat,
                    lon=fix.lon,
                    speed_mps=fix.speed_mps,
                    heading_deg=fix.heading_deg % 360,
                    accuracy_m=5.0,
                )
            )
        yield PingBatchRecord(driver_id=f"bl-{d}", received_at=batch[-1].ts, pings=batch)


async def _produce(bootstrap: str, records: Iterator[PingBatchRecord]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20
    )
    await producer.start()
    try:
        sent = [
            await producer.send(
                topics.PINGS, record.model_dump_json().encode(), key=record.driver_id.encode()
            )
            for record in records
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def stream_throughput(stack: Stack, backlog: int) -> dict[str, Any]:
    config = stack.config
    workers = [n for n in stack.records if n.startswith("streams-")]
    for name in workers:
        stack.stop(name)
    asyncio.run(_produce(config.kafka_bootstrap, backlog_records(backlog)))
    primary = postgres.dsn(config, "primary")
    with psycopg.connect(primary, autocommit=True) as conn:

        def stored() -> int:
            row = conn.execute("SELECT count(*) FROM pings WHERE driver_id LIKE 'bl-%'")
            return int(row.fetchone()[0])  # type: ignore[index]

        for name in workers:
            stack.start(name)
        wait_until(lambda: stored() > 0, timeout_s=120, interval_s=0.05)
        first_at, first = time.perf_counter(), stored()
        if not wait_until(lambda: stored() >= backlog, timeout_s=900, interval_s=0.2):
            raise StackError(f"the stream stored {stored()} of {backlog} pings in 15 minutes")
        seconds = time.perf_counter() - first_at
    lags = asyncio.run(consumer_group_lag(config.kafka_bootstrap, STREAMS_GROUP, [topics.PINGS]))
    return {
        "pings": backlog,
        "workers": len(workers),
        "seconds": round(seconds, 1),
        "pings_per_s": round((backlog - first) / seconds, 1),
        "lag_after": sum(p.lag_messages for p in lags),
    }


# --- a day of pings ----------------------------------------------------------------------


def day_rows(drivers: list[str], day: date) -> Iterator[PingRow]:
    """A day of pings as the stream stores them (none flagged)."""
    rng = random.Random(11)
    city = CITIES["bengaluru"]
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    for driver in drivers:
        vehicle = Vehicle(rng, city)
        battery = 100.0
        for step in range(24 * 3600 // INTERVAL_S):
            fix = vehicle.advance(INTERVAL_S)
            ts = midnight + timedelta(seconds=step * INTERVAL_S)
            battery = max(5.0, battery - 0.002)
            yield (
                driver, ts, uuid.uuid4(), fix.lat, fix.lon, rng.uniform(3, 15), fix.speed_mps,
                fix.heading_deg % 360, round(battery, 1), None, ts + timedelta(seconds=1), [],
                h3_cell(fix.lat, fix.lon),
            )  # fmt: skip


def load_day(conn: psycopg.Connection[Any], drivers: list[str], day: date, timescale: bool) -> int:
    """The day's pings as the stream stores them, and their aggregates computed by the
    stream's own function; returns how many pings."""
    if not timescale:
        conn.execute("SELECT ensure_pings_partitions(%s, %s)", [day, day])
    rows = 0
    with conn.cursor().copy(f"COPY pings ({', '.join(PING_COLUMNS)}) FROM STDIN") as copy:
        for row in day_rows(drivers, day):
            copy.write_row(row)
            rows += 1
    conn.execute(
        "CREATE TEMP TABLE pings_new (driver_id text, ts timestamptz, ping_id uuid,"
        " flags text[], h3_cell bigint)"
    )
    for driver in drivers:
        with conn.transaction():
            conn.execute(
                "INSERT INTO pings_new SELECT driver_id, ts, ping_id, flags, h3_cell FROM pings"
                " WHERE driver_id = %s",
                [driver],
            )
            conn.execute("SELECT stream_recompute_aggregates(%s)", [not timescale])
            conn.execute("TRUNCATE pings_new")
    if timescale:
        end = day + timedelta(days=1)
        conn.execute("CALL refresh_continuous_aggregate('driver_stats_1h', %s, %s)", [day, end])
    conn.execute("ANALYZE pings")
    return rows


def day_chunk(conn: psycopg.Connection[Any], day: date) -> str:
    row = conn.execute(
        "SELECT chunk_name FROM timescaledb_information.chunks WHERE hypertable_name = 'pings'"
        " AND range_start <= %s AND %s < range_end",
        [day, day],
    ).fetchone()
    assert row is not None
    return str(row[0])


def chunk_bytes(conn: psycopg.Connection[Any], chunk: str) -> int:
    row = conn.execute(
        "SELECT total_bytes FROM chunks_detailed_size('pings') WHERE chunk_name = %s", [chunk]
    ).fetchone()
    assert row is not None
    return int(row[0])


# --- queries ---------------------------------------------------------------------------

TRACK = (
    "SELECT ts, lat, lon FROM pings WHERE driver_id = %s AND ts >= %s AND ts < %s"
    " AND NOT (flags && '{future,teleport}'::text[]) ORDER BY ts"
)
DRIVER_HOUR = (
    "SELECT pings, distance_m, avg_speed_mps, max_speed_mps FROM driver_stats_1h"
    " WHERE driver_id = %s AND bucket = %s"
)
FLEET_HOUR = (
    "SELECT count(*), count(DISTINCT driver_id), avg(speed_mps), max(speed_mps) FROM pings"
    " WHERE ts >= %s AND ts < %s"
)


def time_queries(
    conn: psycopg.Connection[Any], drivers: list[str], day: date, repeat: int
) -> dict[str, dict[str, float]]:
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    rng = random.Random(3)

    def track() -> None:
        rows = conn.execute(
            TRACK, [rng.choice(drivers), midnight, midnight + timedelta(days=1)]
        ).fetchall()
        assert len(rows) == 24 * 3600 // INTERVAL_S

    def driver_hour() -> None:
        hour = midnight + timedelta(hours=rng.randrange(24))
        assert conn.execute(DRIVER_HOUR, [rng.choice(drivers), hour]).fetchone() is not None

    def fleet_hour() -> None:
        hour = midnight + timedelta(hours=rng.randrange(24))
        conn.execute(FLEET_HOUR, [hour, hour + timedelta(hours=1)]).fetchone()

    return {
        name: timed(query, repeat)
        for name, query in (
            ("track_24h", track),
            ("driver_stats_1h", driver_hour),
            ("fleet_stats_1h_raw", fleet_hour),
        )
    }


def timed(query: Callable[[], None], repeat: int) -> dict[str, float]:
    query()  # warm the cache: every storage is measured warm
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        query()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 2),
    }


def plot(report: dict[str, Any], path: Path) -> Path:
    """Throughput, bytes per million pings and query latency, per storage."""
    results = report["storages"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6))
    fig.suptitle(f"{report['scenario']} - {report['started_at']}")
    ax = axes[0]
    names = list(results)
    ax.bar([f"{n}\nstream" for n in names], [results[n]["stream"]["pings_per_s"] for n in names])
    ax.bar([f"{n}\nbare COPY" for n in names], [results[n]["ceiling_pings_per_s"] for n in names])
    ax.set_title("pings stored per second")
    ax = axes[1]
    sizes = {
        f"{n}\n{kind}": size / 1e6
        for n in names
        for kind, size in results[n]["bytes_per_million_pings"].items()
    }
    ax.bar(list(sizes), list(sizes.values()))
    ax.set_title("MB per million pings")
    ax = axes[2]
    variants = {
        f"{n}{' uncompressed' if key == 'queries_uncompressed' else ''}": results[n][key]
        for n in names
        for key in ("queries_uncompressed", "queries")
        if key in results[n]
    }
    queries = ["track_24h", "driver_stats_1h", "fleet_stats_1h_raw"]
    width = 0.8 / len(variants)
    for k, (label, timings) in enumerate(variants.items()):
        ax.bar(
            [i - 0.4 + (k + 0.5) * width for i in range(len(queries))],
            [timings[q]["p50_ms"] for q in queries],
            width,
            label=label,
        )
    ax.set_xticks(range(len(queries)), queries)
    ax.set_yscale("log")
    ax.set_title("query p50, ms (log scale)")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def summary(report: dict[str, Any]) -> list[str]:
    lines = []
    for storage, r in report["storages"].items():
        size = r["bytes_per_million_pings"]
        line = (
            f"{storage} ({r['server']}): stream {r['stream']['pings_per_s']:,.0f} pings/s "
            f"({r['stream']['pings']:,} backlog, {r['stream']['workers']} worker), bare COPY "
            f"ceiling {r['ceiling_pings_per_s']:,.0f} pings/s; a day of {r['day']['pings']:,} "
            f"pings: {size['uncompressed'] / 1e6:,.1f} MB per million pings"
        )
        if "compressed" in size:
            line += (
                f" uncompressed, {size['compressed'] / 1e6:,.1f} MB compressed (ratio "
                f"{r['compression']['ratio']}, {r['compression']['seconds']} s to compress)"
            )
        lines.append(line)
        for label, key in (("", "queries"), (" before compression", "queries_uncompressed")):
            if key in r:
                q = r[key]
                lines.append(
                    f"{storage} queries{label} (p50 / p95 ms): 24-h track "
                    f"{q['track_24h']['p50_ms']} / {q['track_24h']['p95_ms']}, driver hour "
                    f"{q['driver_stats_1h']['p50_ms']} / {q['driver_stats_1h']['p95_ms']}, "
                    f"fleet hour from raw {q['fleet_stats_1h_raw']['p50_ms']} / "
                    f"{q['fleet_stats_1h_raw']['p95_ms']}"
                )
    return lines
