"""Ping validation (schemas/pings.py): every bad ping is rejected with a reason, good ones pass."""

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import InvalidBatch
from ingest.validation import Problem, parse_batch, validate_batch, validate_body, validate_ping
from schemas.pings import Ping

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
REJECTION_CODES = set(Ping.model_fields) | {
    "unknown_field", "not_an_object", "null_island", "ts_future", "ts_too_old", "invalid",
}  # fmt: skip


def good(**changes: Any) -> dict[str, Any]:
    ping: dict[str, Any] = {
        "ping_id": str(uuid.uuid4()),
        "ts": (NOW - timedelta(seconds=3)).isoformat(),
        "lat": 12.97,
        "lon": 77.59,
        "accuracy_m": 5.0,
        "speed_mps": 10.0,
        "heading_deg": 90.0,
        "battery_pct": 80.0,
    }
    ping.update(changes)
    return {k: v for k, v in ping.items() if v is not ...}


def test_a_good_ping_is_accepted() -> None:
    assert isinstance(validate_ping(good(), NOW), Ping)


@pytest.mark.parametrize(
    ("changes", "code", "reason_part"),
    [
        ({"lat": 90.01}, "lat", "lat"),
        ({"lat": -90.01}, "lat", "lat"),
        ({"lon": 180.5}, "lon", "lon"),
        ({"lon": -180.5}, "lon", "lon"),
        ({"lat": math.nan}, "lat", "lat"),
        ({"lon": math.inf}, "lon", "lon"),
        ({"lat": 0.0, "lon": 0.0}, "null_island", "(0, 0)"),
        ({"ts": (NOW + timedelta(minutes=5, seconds=1)).isoformat()}, "ts_future", "future"),
        ({"ts": (NOW - timedelta(days=7, seconds=1)).isoformat()}, "ts_too_old", "7 days"),
        ({"ts": "2026-11-27T12:00:00"}, "ts", "ts"),  # no timezone: ambiguous
        ({"accuracy_m": -1.0}, "accuracy_m", "accuracy_m"),
        ({"accuracy_m": 1e300}, "accuracy_m", "accuracy_m"),
        ({"speed_mps": 100.5}, "speed_mps", "speed_mps"),
        ({"heading_deg": 360.0}, "heading_deg", "heading_deg"),
        ({"heading_deg": -0.1}, "heading_deg", "heading_deg"),
        # Unknown fields are refused; a driver id never comes from the body.
        ({"driver_id": "someone-else"}, "unknown_field", "driver_id"),
        ({"ping_id": ...}, "ping_id", "ping_id"),
        ({"ping_id": "not-a-uuid"}, "ping_id", "ping_id"),
    ],
)
def test_bad_pings_are_rejected_with_a_reason(
    changes: dict[str, Any], code: str, reason_part: str
) -> None:
    result = validate_ping(good(**changes), NOW)
    assert isinstance(result, Problem)
    assert result.code == code
    assert reason_part in result.reason


def test_edges_of_the_time_window_are_accepted() -> None:
    assert isinstance(validate_ping(good(ts=(NOW + timedelta(minutes=5)).isoformat()), NOW), Ping)
    assert isinstance(validate_ping(good(ts=(NOW - timedelta(days=7)).isoformat()), NOW), Ping)


def test_a_mixed_batch_keeps_the_good_and_reports_the_bad() -> None:
    bad = good(lat=123.0)
    verdict = validate_batch([good(), bad, "not an object", good()], NOW)
    assert len(verdict.accepted) == 2
    assert [(r.index, r.ping_id) for r in verdict.rejected] == [(1, bad["ping_id"]), (2, None)]


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"pings": {}}', b'{"pings": []}', b'{"pings": [1], "x": 1}', b"null"],
)
def test_malformed_bodies_are_refused_whole(body: bytes) -> None:
    with pytest.raises(InvalidBatch):
        parse_batch(body)


def test_batch_size_limit() -> None:
    assert len(parse_batch(orjson.dumps({"pings": [good()] * 500}))) == 500
    with pytest.raises(InvalidBatch, match="1 to 500"):
        parse_batch(orjson.dumps({"pings": [good()] * 501}))


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ping_like = st.fixed_dictionaries(
    {},
    optional={
        "ping_id": st.uuids().map(str) | json_values,
        "ts": st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat) | json_values,
        "lat": st.floats() | json_values,
        "lon": st.floats() | json_values,
        "accuracy_m": st.floats() | st.none(),
        "speed_mps": st.floats() | st.none(),
        "heading_deg": st.floats() | st.none(),
        "battery_pct": st.floats() | st.none(),
        "job_id": st.uuids().map(str) | json_values,
        "extra": json_values,
    },
)


@given(st.lists(ping_like | json_values, min_size=1, max_size=20))
def test_every_ping_is_either_accepted_or_rejected_with_a_reason(raw: list[Any]) -> None:
    verdict = validate_batch(raw, NOW)
    assert len(verdict.accepted) + len(verdict.rejected) == len(raw)
    assert all(r.reason and r.code for r in verdict.rejected)
    # The metric label stays a small fixed vocabulary whatever the input.
    assert {r.code for r in verdict.rejected} <= REJECTION_CODES
    for ping in verdict.accepted:
        assert -90 <= ping.lat <= 90 and -180 <= ping.lon <= 180
        assert NOW - timedelta(days=7) <= ping.ts <= NOW + timedelta(minutes=5)


def test_the_fast_path_and_the_ping_by_ping_path_agree() -> None:
    all_good = [good(), good(), good()]
    verdict = validate_body(orjson.dumps({"pings": all_good}), NOW)
    assert [str(p.ping_id) for p in verdict.accepted] == [p["ping_id"] for p in all_good]
    assert verdict.rejected == []

    stale = good(ts=(NOW - timedelta(days=8)).isoformat())
    mixed = [good(), stale, good(lat=100.0), good()]
    fast = validate_body(orjson.dumps({"pings": mixed}), NOW)
    slow = validate_batch(mixed, NOW)
    assert fast == slow
    assert [r.index for r in fast.rejected] == [1, 2]
    # Only the time window is wrong: structurally valid, still reported per ping.
    only_stale = validate_body(orjson.dumps({"pings": [good(), stale]}), NOW)
    assert [(r.index, r.code) for r in only_stale.rejected] == [(1, "ts_too_old")]
    assert len(only_stale.accepted) == 1


def test_a_body_that_is_no_batch_is_refused_whole_on_either_path() -> None:
    with pytest.raises(InvalidBatch):
        validate_body(b'{"pings": []}', NOW)
    with pytest.raises(InvalidBatch):
        validate_body(b"\xff", NOW)
