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
import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra import postgres
from infra.config import StackConfig
from runtime.geo import haversine_m
from schemas import topics
from schemas.auth import Role
from schemas.positions import PositionUpdate
from tests.support.driving import ping_at, post, stored, wait_stored
from tests.support.recompute import recomputed_stats
from tests.support.stack import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.storage]


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
    assert stats is not None
    valid = [p for p, r in zip(pings, rows, strict=True) if not r[5]]
    expected_m = sum(
        haversine_m(a["lat"], a["lon"], b["lat"], b["lon"]) for a, b in pairwise(valid)
    )
    assert stats[0] == 3
    assert stats[1] == pytest.approx(expected_m, rel=1e-6)
    assert stats[2] == pytest.approx((5.0 + 10.0 + 20.0) / 3)
    assert stats[3] == pytest.approx(20.0)

    def hourly() -> tuple[int, float] | None:
        with psycopg.connect(postgres.dsn(config, "primary")) as conn:
            row = conn.execute(
                "SELECT pings, distance_m FROM driver_stats_1h WHERE driver_id = %s", [driver]
            ).fetchone()
        return None if row is None else (row[0], row[1])

    # On TimescaleDB an hour materialised just before these pings were stored catches up at
    # the continuous aggregate's next refresh (every minute); on native PostgreSQL at once.
    expected = (3, expected_m)
    caught_up = wait_for(
        lambda: (
            h
            if (h := hourly()) and h[0] == 3 and math.isclose(h[1], expected_m, rel_tol=1e-6)
            else None
        ),
        timeout_s=120,
    )
    assert caught_up == pytest.approx(expected, rel=1e-6)


def test_stats_equal_a_recomputation_from_the_stored_raw_pings_after_many_batches(
    config: StackConfig, token: Callable[..., str]
) -> None:
    drivers = [f"drv-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    start = datetime.now(UTC) - timedelta(minutes=10)
    tracks = {
        driver: [
            ping_at(start + timedelta(seconds=7 * i), 60.0 * i + n, speed_mps=float(i % 9))
            for i in range(60)
        ]
        for n, driver in enumerate(drivers)
    }
    total = 60 * len(drivers)
    # The second half is sent and stored first, so the first half arrives late for certain
    # (posted together, both could land in one batch, which the stream orders itself).
    for driver, pings in tracks.items():
        post(config, token(Role.DRIVER, driver), pings[30:])
    for driver in drivers:
        wait_stored(config, driver, 30)
    for driver, pings in tracks.items():
        jwt = token(Role.DRIVER, driver)
        post(config, jwt, pings[:30])
        post(config, jwt, pings[10:20])  # a client retry: the same ping ids again
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
    # Recompute from the raw rows. The first half, sent second, is late: late pings count.
    assert any(row[5] == ["late"] for row in raw)
    assert all(set(row[5]) <= {"late"} for row in raw)
    cells: dict[tuple[int, datetime], set[str]] = defaultdict(set)
    top_speed: dict[tuple[str, datetime], float] = defaultdict(float)
    for row in raw:
        bucket = row[1].replace(second=0, microsecond=0)
        cells[(row[6], bucket)].add(row[0])
        top_speed[(row[0], bucket)] = max(top_speed[(row[0], bucket)], row[4])
    expected = recomputed_stats(postgres.dsn(config, "primary"), drivers)
    actual = {(d, b): (n, dist, mx) for d, b, n, dist, mx in stats}
    assert actual.keys() == expected.keys()
    for minute, (n, dist) in expected.items():
        assert actual[minute][0] == n
        assert math.isclose(actual[minute][1], dist, rel_tol=1e-6, abs_tol=1e-6)
        assert actual[minute][2] == pytest.approx(top_speed[minute])
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
            # Records that decode but that ingest would never have produced: the stream
            # re-checks them (a NUL byte in the driver id, a ping dated year 1).
            for record in (
                raw_record("drv\x00nul", datetime.now(UTC)),
                raw_record(driver, datetime(1, 1, 1, tzinfo=UTC)),
            ):
                await producer.send_and_wait(topics.PINGS, record, key=driver.encode())
        finally:
            await producer.stop()
        post(config, token(Role.DRIVER, driver), [ping_at(datetime.now(UTC), 0)])
        await asyncio.to_thread(wait_stored, config, driver, 1)
        dead: list[Any] = []
        async with asyncio.timeout(20):
            while len(dead) < 4:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    dead += [m for m in messages if m.key == driver.encode()]
    finally:
        await consumer.stop()
    assert marker in dead[0].value
    assert dict(dead[0].headers)["error"]
    assert dead[1].value == b'{"v": 1, "driver_id": "x"}'
    assert b"driver_id" in dict(dead[2].headers)["error"]
    assert b"outside" in dict(dead[3].headers)["error"]
    assert len(stored(config, driver)) == 1  # the good ping only; no year-1 partitions


def raw_record(driver_id: str, ts: datetime) -> bytes:
    ping = ping_at(ts, 0)
    received = datetime.now(UTC).isoformat()
    return orjson.dumps({"v": 1, "driver_id": driver_id, "received_at": received, "pings": [ping]})


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
    assert httpx.get(f"{base}/readyz").json() == {"status": "ready"}
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "streams_records_total",
        "streams_batch_failures_total",
        "streams_flush_seconds_bucket",
    ):
        assert name in metrics.text


def stats_of(config: StackConfig, driver: str) -> dict[datetime, tuple[int, float]]:
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        rows = conn.execute(
            "SELECT bucket, pings, distance_m FROM driver_stats_1m WHERE driver_id = %s",
            [driver],
        ).fetchall()
    return {bucket: (n, dist) for bucket, n, dist in rows}


def test_a_ping_ahead_of_its_receipt_is_flagged_future_and_never_freezes_the_driver(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    jwt = token(Role.DRIVER, driver)
    now = datetime.now(UTC)
    ahead = ping_at(now + timedelta(minutes=4), 0)  # ingest accepts up to 5 min ahead
    post(config, jwt, [ahead])
    wait_stored(config, driver, 1)
    real = ping_at(now, 10)
    post(config, jwt, [real])
    rows = wait_stored(config, driver, 2)
    assert {r[0]: r[5] for r in rows} == {real["ping_id"]: [], ahead["ping_id"]: ["future"]}
    assert position(config, driver) == (real["ping_id"], datetime.fromisoformat(real["ts"]))
    assert sum(n for n, _ in stats_of(config, driver).values()) == 1  # future is not counted


def test_late_pings_count_in_the_minute_aggregates(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    jwt = token(Role.DRIVER, driver)
    bucket = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    early = [ping_at(bucket + timedelta(seconds=5 * i), 20.0 * i) for i in range(1, 6)]
    newest = ping_at(bucket + timedelta(seconds=40), 160)
    post(config, jwt, [newest])
    wait_stored(config, driver, 1)
    post(config, jwt, early)  # a retry after a 503, arriving after the newer ping
    rows = wait_stored(config, driver, 6)
    assert sum(1 for r in rows if r[5] == ["late"]) == 5
    assert position(config, driver) == (newest["ping_id"], datetime.fromisoformat(newest["ts"]))
    _, distance = wait_for(
        lambda: got if (got := stats_of(config, driver).get(bucket)) and got[0] == 6 else None
    )
    assert distance == pytest.approx(140.0, rel=1e-3)  # from 20 m east to 160 m east


def test_the_step_across_a_minute_boundary_belongs_to_the_later_minute(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    # A straight 150 s trace at 10 m/s, a fix every 10 s over three minutes: 1,500 m.
    trace = [ping_at(start + timedelta(seconds=10 * i + 5), 100.0 * i) for i in range(16)]
    post(config, token(Role.DRIVER, driver), trace)
    wait_stored(config, driver, 16)
    stats = wait_for(lambda: got if len(got := stats_of(config, driver)) == 3 else None)
    assert sum(n for n, _ in stats.values()) == 16
    assert sum(d for _, d in stats.values()) == pytest.approx(1500.0, rel=1e-3)
