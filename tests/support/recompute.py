"""Test helpers: recompute the stream's aggregates from the stored raw pings, in Python."""

from collections import defaultdict
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg

from runtime.geo import haversine_m

Stats = dict[tuple[str, datetime], tuple[int, float]]


def stored_stats(dsn: str, drivers: list[str], table: str = "driver_stats_1m") -> Stats:
    """(pings, distance_m) per driver and bucket, as stored in `table`."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT driver_id, bucket, pings, distance_m FROM {table} WHERE driver_id = ANY(%s)",
            [drivers],
        ).fetchall()
    return {(d, b): (n, dist) for d, b, n, dist in rows}


def recomputed_stats(dsn: str, drivers: list[str]) -> Stats:
    """(pings, distance_m) per driver and minute, from the stored pings that count (all but
    `future` and `teleport`). Each step between consecutive pings belongs to the later
    ping's minute, when the earlier one lies in that minute or the one before it."""
    with psycopg.connect(dsn) as conn:
        raw = conn.execute(
            "SELECT driver_id, ts, lat, lon FROM pings WHERE driver_id = ANY(%s)"
            " AND NOT (flags && '{future,teleport}'::text[]) ORDER BY driver_id, ts, ping_id",
            [drivers],
        ).fetchall()
    stats: dict[tuple[str, datetime], list[float]] = defaultdict(lambda: [0, 0.0])
    for row in raw:
        stats[(row[0], minute(row[1]))][0] += 1
    for a, b in pairwise(raw):
        if a[0] == b[0] and minute(b[1]) - minute(a[1]) <= timedelta(minutes=1):
            stats[(b[0], minute(b[1]))][1] += haversine_m(a[2], a[3], b[2], b[3])
    return {key: (int(n), dist) for key, (n, dist) in stats.items()}


def minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def recomputed_hourly(dsn: str, drivers: list[str]) -> Stats:
    """The hourly rollup of `recomputed_stats`."""
    hours: dict[tuple[str, datetime], list[float]] = defaultdict(lambda: [0, 0.0])
    for (driver, bucket), (n, dist) in recomputed_stats(dsn, drivers).items():
        hours[(driver, bucket.replace(minute=0))][0] += n
        hours[(driver, bucket.replace(minute=0))][1] += dist
    return {key: (int(n), dist) for key, (n, dist) in hours.items()}


def assert_stats_match(dsn: str, drivers: list[str]) -> None:
    assert_same(stored_stats(dsn, drivers), recomputed_stats(dsn, drivers))


def assert_same(actual: Stats, expected: Stats) -> None:
    assert actual.keys() == expected.keys()
    for key, (n, dist) in expected.items():
        assert actual[key][0] == n, key
        assert abs(actual[key][1] - dist) <= 1e-6 * max(1.0, dist), key


# The whole database's aggregates (a scratch database's): every column, every table.
Row = tuple[float | None, ...]


def _close(a: Row, b: Row) -> bool:
    return all(
        (x is None and y is None)
        or (x is not None and y is not None and abs(x - y) <= 1e-6 * max(1.0, abs(y)))
        for x, y in zip(a, b, strict=True)
    )


def exact_aggregates(conn: psycopg.Connection[Any]) -> dict[str, dict[tuple[Any, ...], Row]]:
    """Every aggregate recomputed from the raw pings: per driver-minute and driver-hour
    (pings, distance, average and top speed), per cell-minute (distinct drivers)."""
    raw = conn.execute(
        "SELECT driver_id, ts, lat, lon, speed_mps, h3_cell FROM pings"
        " WHERE NOT (flags && '{future,teleport}'::text[]) ORDER BY driver_id, ts, ping_id"
    ).fetchall()
    sums: dict[str, dict[tuple[Any, ...], list[Any]]] = {"minutes": {}, "hours": {}}
    cells: dict[tuple[int, datetime], set[str]] = defaultdict(set)
    previous = None
    for driver, ts, lat, lon, speed, cell in raw:
        bucket = minute(ts)
        step = 0.0
        if (
            previous is not None
            and previous[0] == driver
            and previous[1] >= bucket - timedelta(minutes=1)
        ):
            step = haversine_m(previous[2], previous[3], lat, lon)
        for table, key in (
            ("minutes", (driver, bucket)),
            ("hours", (driver, bucket.replace(minute=0))),
        ):
            acc = sums[table].setdefault(key, [0, 0.0, [], None])
            acc[0] += 1
            acc[1] += step
            if speed is not None:
                acc[2].append(speed)
                acc[3] = speed if acc[3] is None else max(acc[3], speed)
        cells[(cell, bucket)].add(driver)
        previous = (driver, ts, lat, lon)
    out: dict[str, dict[tuple[Any, ...], Row]] = {
        table: {
            key: (n, dist, sum(speeds) / len(speeds) if speeds else None, top)
            for key, (n, dist, speeds, top) in rows.items()
        }
        for table, rows in sums.items()
    }
    out["cells"] = {key: (len(drivers),) for key, drivers in cells.items()}
    return out


def stored_aggregates(conn: psycopg.Connection[Any]) -> dict[str, dict[tuple[Any, ...], Row]]:
    stats = "SELECT driver_id, bucket, pings, distance_m, avg_speed_mps, max_speed_mps FROM "
    return {
        "minutes": {(d, b): r for d, b, *r in conn.execute(stats + "driver_stats_1m")},
        "hours": {(d, b): r for d, b, *r in conn.execute(stats + "driver_stats_1h")},
        "cells": {
            (c, b): (n,)
            for c, b, n in conn.execute("SELECT cell, bucket, drivers FROM cell_density_1m")
        },
    }


def assert_aggregates_exact(dsn: str, *, hourly: bool = True) -> None:
    """Every stored aggregate row equals its recomputation from the raw pings, and there is
    a stored row for every recomputed one. `hourly=False` leaves the hourly rollup out (on
    TimescaleDB a continuous aggregate, refreshed on its own schedule)."""
    with psycopg.connect(dsn) as conn:
        expected, actual = exact_aggregates(conn), stored_aggregates(conn)
    for table in ("minutes", "hours", "cells") if hourly else ("minutes", "cells"):
        assert actual[table].keys() == expected[table].keys(), table
        wrong = {
            key: (actual[table][key], row)
            for key, row in expected[table].items()
            if not _close(tuple(actual[table][key]), row)
        }
        assert not wrong, f"{table}: stored vs recomputed {wrong}"
