"""Track simplification and the GeoJSON shape, pure."""

import math
from datetime import UTC, datetime, timedelta

import pytest

from api.errors import InvalidInput
from api.reads.extras import MAX_TRACK, track_span
from api.track import MAX_POINTS, feature, simplify

T0, T1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)


def test_a_straight_road_keeps_its_ends_only() -> None:
    road = [(77.6 + i * 1e-4, 12.9) for i in range(500)]
    assert simplify(road) == [road[0], road[-1]]


def test_corners_survive_and_gps_jitter_does_not() -> None:
    # East 1 km, then north 1 km, with 1 m of noise on every fix.
    east = [(77.6 + i * 1e-4, 12.9 + 1e-5 * math.sin(i)) for i in range(100)]
    north = [(east[-1][0] + 1e-5 * math.sin(i), 12.9 + i * 1e-4) for i in range(1, 100)]
    simple = simplify(east + north)
    assert len(simple) <= 5
    corner = east[-1]
    assert any(math.dist(p, corner) < 2e-4 for p in simple)


def test_a_long_winding_track_is_capped() -> None:
    spiral = [(77.6 + 0.01 * math.cos(i / 5), 12.9 + 0.01 * math.sin(i / 7)) for i in range(20_000)]
    assert len(simplify(spiral)) <= MAX_POINTS


def test_the_feature_is_geojson_and_null_below_two_fixes() -> None:
    f = feature([(77.6, 12.9), (77.61, 12.91)], {"job_id": "j"}, T0, T1)
    assert f["type"] == "Feature"
    assert f["geometry"] == {"type": "LineString", "coordinates": [[77.6, 12.9], [77.61, 12.91]]}
    assert f["properties"] | {} == {
        "job_id": "j", "from": T0.isoformat(), "to": T1.isoformat(), "fixes": 2, "points": 2,
    }  # fmt: skip
    assert feature([(77.6, 12.9)], {}, T0, T1)["geometry"] is None
    assert feature([], {}, T0, T1)["properties"]["fixes"] == 0


def test_the_track_spans_the_job_narrowed_by_from_and_to() -> None:
    h = timedelta(hours=1)
    now = T0 + 100 * h
    assigned, completed = T0, T0 + 5 * h
    assert track_span(assigned, completed, None, None, now) == (assigned, completed)
    assert track_span(assigned, None, None, None, T0 + 2 * h) == (assigned, T0 + 2 * h)
    assert track_span(assigned, completed, T0 + h, T0 + 2 * h, now) == (T0 + h, T0 + 2 * h)
    assert track_span(None, None, None, None, now) == (now, now)  # never assigned: empty
    # A long job: the latest 48 h, or 48 h from `from`.
    assert track_span(assigned, None, None, None, now) == (now - MAX_TRACK, now)
    assert track_span(assigned, None, T0 + h, None, now) == (T0 + h, T0 + h + MAX_TRACK)
    for start, end in ((T0 + 2 * h, T0 + h), (T0, T0 + MAX_TRACK + h)):
        with pytest.raises(InvalidInput):
            track_span(assigned, None, start, end, now)
