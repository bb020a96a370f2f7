"""The stream against the real broker and database: ordering, flags, aggregates, the DLQ,
positions.v1."""

import asyncio
import math
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra import postgres
from infra.config import StackConfig
from runtime.geo import destination, haversine_m
from schemas import topics
from schemas.auth import Role
from schemas.positions import PositionUpdate
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration
ORIGIN = (12.97, 77.59)


def ping_at(ts: datetime, metres_east: float, **extra: Any) -> dict[str, Any]:
    lat, lon = destination(*ORIGIN, 90.0, metres_east)
    return {"ping_id": str(uuid.uuid4()), "ts": ts.isoformat(), "lat": lat, "lon": lon, **extra}


def post(config: StackConfig, token: str, pings: list[dict[str, Any]]) -> None:
    r = httpx.post(
        f"http://127.0.0.1:{config.ingest_port}/v1/pings",
        json={"pings": pings},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 202, r.text


def stored(config: StackConfig, driver: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        return conn.execute(
            "SELECT ping_id::text, ts, lat, lon, speed_mps, flags, h3_cell FROM pings"
            " WHERE driver_id = %s ORDER BY ts, ping_id",
            [driver],
        ).fetchall()


def wait_stored(config: StackConfig, driver: str, count: int) -> list[tuple[Any, ...]]:
    return wait_for(lambda: rows if len(rows := stored(config, driver)) >= count else None, 30)


def position(config: StackConfig, driver: str) -> tuple[Any, ...] | None:
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        return conn.execute(
            "SELECT ping_id::text, ts FROM driver_positions WHERE driver_id = %s", [driver]
        ).fetchone()


def test_late_and_out_of_order_pings_never_move_the_position_back(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    jwt = token(Role.DRIVER, driver)
    t0 = datetime.now(UTC) - timedelta(minutes=3)
    newest = ping_at(t0 + timedelta(seconds=60), 600)
    post(config, jwt, [ping_at(t0 + timedelta(seconds=30), 300), newest, ping_at(t0, 0)])
    wait_stored(config, driver, 3)
    assert position(config, driver) == (newest["ping_id"], datetime.fromisoformat(newest["ts"]))

    late = ping_at(t0 + timedelta(seconds=45), 450)
    post(config, jwt, [late])
    rows = wait_stored(config, driver, 4)
    assert {r[0]: r[5] for r in rows}[late["ping_id"]] == ["late"]
    assert position(config, driver) == (newest["ping_id"], datetime.fromisoformat(newest["ts"]))


def test_a_teleport_is_stored_flagged_and_ignored_by_position_and_aggregates(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    bucket = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    pings = [
        ping_at(bucket + timedelta(seconds=1), 0, speed_mps=5.0),
        ping_at(bucket + timedelta(seconds=11), 100, speed_mps=10.0),
        ping_at(bucket + timedelta(seconds=21), 20_000, speed_mps=11.0),  # 2 km/s: teleport
        ping_at(bucket + timedelta(seconds=31), 300, speed_mps=20.0),
    ]
    post(config, token(Role.DRIVER, driver), pings)
    rows = wait_stored(config, driver, 4)
    assert [r[5] for r in rows] == [[], [], ["teleport"], []]
    assert position(config, driver) == (pings[3]["ping_id"], datetime.fromisoformat(pings[3]["ts"]))

    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        stats = conn.execute(
            "SELECT pings, distance_m, avg_speed_mps, max_speed_mps FROM driver_stats_1m"
            " WHERE driver_id = %s AND bucket = %s",
            [driver, bucket],
        ).fetchone()
        hourly = conn.execute(
            "SELECT pings, distance_m FROM driver_stats_1h WHERE driver_id = %s", [driver]
        ).fetchone()
    assert stats is not None
    valid = [p for p, r in zip(pings, rows, strict=True) if not r[5]]
    expected_m = sum(
        haversine_m(a["lat"], a["lon"], b["lat"], b["lon"]) for a, b in pairwise(valid)
    )
    assert stats[0] == 3
    assert stats[1] == pytest.approx(expected_m, rel=1e-6)
    assert stats[2] == pytest.approx((5.0 + 10.0 + 20.0) / 3)
    assert stats[3] == pytest.approx(20.0)
    assert (
        hourly is not None and hourly[0] == 3 and hourly[1] == pytest.approx(expected_m, rel=1e-6)
    )


def test_stats_equal_a_recomputation_from_the_stored_raw_pings_after_many_batches(
    config: StackConfig, token: Callable[..., str]
) -> None:
    drivers = [f"drv-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    start = datetime.now(UTC) - timedelta(minutes=10)
    total = 0
    for n, driver in enumerate(drivers):
        jwt = token(Role.DRIVER, driver)
        pings = [
            ping_at(start + timedelta(seconds=7 * i), 60.0 * i + n, speed_mps=float(i % 9))
            for i in range(60)
        ]
        # Several requests, the second half sent first: the stream must order them.
        post(config, jwt, pings[30:])
        post(config, jwt, pings[:30])
        post(config, jwt, pings[10:20])  # a client retry: the same ping ids again
        total += 60
    for driver in drivers:
        wait_stored(config, driver, 60)
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        raw = conn.execute(
            "SELECT driver_id, ts, lat, lon, speed_mps, flags, h3_cell FROM pings"
            " WHERE driver_id = ANY(%s) ORDER BY driver_id, ts, ping_id",
            [drivers],
        ).fetchall()
        stats = conn.execute(
            "SELECT driver_id, bucket, pings, distance_m, max_speed_mps FROM driver_stats_1m"
            " WHERE driver_id = ANY(%s)",
            [drivers],
        ).fetchall()
        density = dict(
            ((cell, bucket), drivers_n)
            for cell, bucket, drivers_n in conn.execute(
                "SELECT cell, bucket, drivers FROM cell_density_1m WHERE (cell, bucket) IN"
                " (SELECT h3_cell, date_trunc('minute', ts) FROM pings WHERE driver_id = ANY(%s))",
                [drivers],
            ).fetchall()
        )
    assert len(raw) == total  # the retried pings are stored once
    # Recompute in Python from the raw rows.
    minutes: dict[tuple[str, datetime], list[tuple[Any, ...]]] = defaultdict(list)
    cells: dict[tuple[int, datetime], set[str]] = defaultdict(set)
    for row in raw:
        if row[5]:
            continue
        bucket = row[1].replace(second=0, microsecond=0)
        minutes[(row[0], bucket)].append(row)
        cells[(row[6], bucket)].add(row[0])
    expected = {
        key: (
            len(rows),
            sum(haversine_m(a[2], a[3], b[2], b[3]) for a, b in pairwise(rows)),
            max(r[4] for r in rows),
        )
        for key, rows in minutes.items()
    }
    actual = {(d, b): (n, dist, mx) for d, b, n, dist, mx in stats}
    assert actual.keys() == expected.keys()
    for key, (n, dist, mx) in expected.items():
        assert actual[key][0] == n
        assert math.isclose(actual[key][1], dist, rel_tol=1e-6, abs_tol=1e-6)
        assert actual[key][2] == pytest.approx(mx)
    # Only our drivers' pings in those cells in these minutes: the density is at least ours.
    for key, members in cells.items():
        assert density[key] >= len(members)


async def test_poison_goes_to_the_dlq_and_the_partition_keeps_flowing(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex.encode()
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        dlq = [TopicPartition(topics.dlq(topics.PINGS), p) for p in range(3)]
        consumer.assign(dlq)
        for tp, offset in (await consumer.end_offsets(dlq)).items():
            consumer.seek(tp, offset)
        producer = AIOKafkaProducer(bootstrap_servers=config.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            # Same key as the driver: same partition, right before its good pings.
            await producer.send_and_wait(
                topics.PINGS, b"\xff\xfe not json " + marker, key=driver.encode()
            )
            await producer.send_and_wait(
                topics.PINGS, b'{"v": 1, "driver_id": "x"}', key=driver.encode()
            )
        finally:
            await producer.stop()
        post(config, token(Role.DRIVER, driver), [ping_at(datetime.now(UTC), 0)])
        await asyncio.to_thread(wait_stored, config, driver, 1)
        dead: list[Any] = []
        async with asyncio.timeout(20):
            while len(dead) < 2:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    dead += [m for m in messages if m.key == driver.encode()]
    finally:
        await consumer.stop()
    assert marker in dead[0].value
    assert dict(dead[0].headers)["error"]
    assert dead[1].value == b'{"v": 1, "driver_id": "x"}'


async def test_moved_positions_are_published_on_positions_v1(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topics.POSITIONS, p) for p in range(topics.DRIVER_TOPIC_PARTITIONS)]
        consumer.assign(parts)
        for tp, offset in (await consumer.end_offsets(parts)).items():
            consumer.seek(tp, offset)
        now = datetime.now(UTC)
        newest = ping_at(now, 50)
        post(config, token(Role.DRIVER, driver), [ping_at(now - timedelta(seconds=5), 0), newest])
        updates: list[PositionUpdate] = []
        async with asyncio.timeout(20):
            while not updates:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    updates += [
                        PositionUpdate.model_validate_json(m.value)
                        for m in messages
                        if m.key == driver.encode()
                    ]
    finally:
        await consumer.stop()
    # One update per batch that moved the driver: the newest valid ping of it.
    assert [str(u.ping_id) for u in updates] == [newest["ping_id"]]


def test_the_worker_exposes_health_and_prometheus_metrics(config: StackConfig) -> None:
    base = f"http://127.0.0.1:{config.streams_web_port}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "streams_records_total",
        "streams_sink_failures_total",
        "streams_flush_seconds_bucket",
    ):
        assert name in metrics.text
