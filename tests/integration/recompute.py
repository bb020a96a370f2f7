"""Test helpers: recompute the stream's aggregates from the stored raw pings, in Python."""

from collections import defaultdict
from datetime import datetime
from itertools import pairwise
from typing import Any

import psycopg

from runtime.geo import haversine_m


def stored_stats(dsn: str, drivers: list[str]) -> dict[tuple[str, datetime], tuple[int, float]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT driver_id, bucket, pings, distance_m FROM driver_stats_1m"
            " WHERE driver_id = ANY(%s)",
            [drivers],
        ).fetchall()
    return {(d, b): (n, dist) for d, b, n, dist in rows}


def recomputed_stats(dsn: str, drivers: list[str]) -> dict[tuple[str, datetime], tuple[int, float]]:
    """(pings, distance_m) per driver and minute, from the valid stored pings."""
    with psycopg.connect(dsn) as conn:
        raw = conn.execute(
            "SELECT driver_id, ts, lat, lon FROM pings WHERE driver_id = ANY(%s)"
            " AND cardinality(flags) = 0 ORDER BY driver_id, ts, ping_id",
            [drivers],
        ).fetchall()
    minutes: dict[tuple[str, datetime], list[Any]] = defaultdict(list)
    for row in raw:
        minutes[(row[0], row[1].replace(second=0, microsecond=0))].append(row)
    return {
        key: (len(rows), sum(haversine_m(a[2], a[3], b[2], b[3]) for a, b in pairwise(rows)))
        for key, rows in minutes.items()
    }


def assert_stats_match(dsn: str, drivers: list[str]) -> None:
    actual, expected = stored_stats(dsn, drivers), recomputed_stats(dsn, drivers)
    assert actual.keys() == expected.keys()
    for key, (n, dist) in expected.items():
        assert actual[key][0] == n, key
        assert abs(actual[key][1] - dist) <= 1e-6 * max(1.0, dist), key
