"""Test helpers: recompute the stream's aggregates from the stored raw pings, in Python."""

from collections import defaultdict
from datetime import datetime, timedelta
from itertools import pairwise

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
