"""The msgspec decoders (schemas/pings_wire.py) against the contract's pydantic models: the
stream's records and ingest's bodies accepted to the same values, and the same refused; the
records ingest encodes read back as the models wrote them."""

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ingest.validation import validate_body
from schemas.pings import MAX_PING_AGE, MAX_PING_AHEAD, PingBatchRecord
from schemas.pings_wire import (
    decode_record,
    decode_valid_batch,
    encode_record,
    from_model,
    wire_ping,
)

PING_ID = "6f1c2a8e-1d2b-4c3d-9e8f-0a1b2c3d4e5f"


def verdict(decode: Any, value: bytes) -> bytes | None:
    """The decoded record as canonical JSON (times with their offsets, floats by repr), or
    None when refused."""
    try:
        record = decode(value)
    except ValidationError:
        return None
    return msgspec.json.encode(record)


def by_the_models(value: bytes) -> Any:
    return from_model(PingBatchRecord.model_validate_json(value))


def assert_agree(value: bytes) -> None:
    assert verdict(decode_record, value) == verdict(by_the_models, value), value


def document(**changes: Any) -> dict[str, Any]:
    ping = {"ping_id": PING_ID, "ts": "2026-12-04T09:59:59.5Z", "lat": 52.52, "lon": 13.405}
    doc: dict[str, Any] = {
        "v": 1,
        "driver_id": "drv-1",
        "received_at": "2026-12-04T10:00:00.123456Z",
        "pings": [ping],
    }
    for name, value in changes.items():
        if name in doc:
            doc[name] = value
        else:
            ping[name] = value
    return doc


def test_a_canonical_record_is_decoded_without_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    value = PingBatchRecord.model_validate(document(speed_mps=3.5)).model_dump_json().encode()
    expected = verdict(by_the_models, value)

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the fast path fell back to the models")

    monkeypatch.setattr(PingBatchRecord, "model_validate_json", refuse)
    assert verdict(decode_record, value) == expected


EDGE_CASES: list[dict[str, Any] | bytes] = [
    document(),
    document(driver_id="drv-1\n"),  # Python's `$` would let the newline through
    document(driver_id="x" * 128),
    document(driver_id="x" * 129),
    document(driver_id="d:1@x.y-z_"),
    document(driver_id="-drv"),
    document(driver_id=""),
    document(driver_id=5),
    document(ts="2026-12-04T09:59:59.1234567Z"),  # msgspec rounds, pydantic truncates
    document(ts="2026-12-04T09:59:59.9999995Z"),
    document(ts="2026-12-04T09:59:59.123456789123Z"),
    document(received_at="2026-12-04T10:00:00.9999999+01:00", ts="2026-12-04T08:59:59Z"),
    document(ts="2026-12-04 09:59:59Z"),
    document(ts="2026-12-04t09:59:59z"),
    document(ts="2026-12-04T09:59Z"),
    document(ts="2026-12-04T09:59:59,5Z"),
    document(ts="2026-12-04T09:59:59"),  # naive
    document(ts="2026-12-04T10:59:59+01:00"),
    document(ts="2026-12-04T10:59:59+0100"),
    document(ts="2026-12-04T09:59:59-00:00"),
    document(ts="2026-12-04T09:59:60Z"),
    document(ts=1764842399),
    document(ts=1764842399.5),
    document(ts="1764842399"),
    document(ts="2026-11-27T10:00:00.123456Z"),  # exactly MAX_PING_AGE before
    document(ts="2026-11-27T10:00:00.123455Z"),
    document(ts="2026-12-04T10:05:00.123456Z"),  # exactly MAX_PING_AHEAD after
    document(ts="2026-12-04T10:05:00.123457Z"),
    document(received_at="0001-01-01T00:00:00Z", ts="0001-01-01T00:00:00Z"),  # overflows
    document(received_at="9999-12-31T23:59:59Z", ts="9999-12-31T23:59:59Z"),
    document(lat=0.0, lon=0.0),
    document(lat=-0.0, lon=0.0),
    document(lat=0, lon=0),
    document(lat=90, lon=180),
    document(lat=90.00000000000001),
    document(lat="52.5"),
    document(lat=True),
    document(lat=None),
    document(speed_mps=100.0),
    document(speed_mps=100.00000000000001),
    document(heading_deg=360.0),
    document(heading_deg=359.9999999999999),
    document(accuracy_m=100_000),
    document(battery_pct=-0.0),
    document(job_id=None),
    document(job_id=PING_ID.upper()),
    document(job_id=PING_ID.replace("-", "")),
    document(ping_id="{" + PING_ID + "}"),
    document(ping_id="urn:uuid:" + PING_ID),
    document(ping_id=PING_ID[:-1]),
    document(extra="field"),  # a ping refuses unknown fields
    document(v=2),
    document(v=1.0),
    document(v="1"),
    document(pings=[]),
    {k: v for k, v in document().items() if k != "v"},
    {**document(), "unknown": {"nested": [1, 2]}},  # a record ignores them
    b'{"v":1,"driver_id":"drv-1","received_at":"2026-12-04T10:00:00Z","pings":[{"ping_id":"'
    + PING_ID.encode()
    + b'","ts":"2026-12-04T09:59:59Z","lat":1e400,"lon":1}]}',
    b'{"v":1,"driver_id":"drv-1","received_at":"2026-12-04T10:00:00Z","pings":[{"ping_id":"'
    + PING_ID.encode()
    + b'","ts":"2026-12-04T09:59:59Z","lat":NaN,"lon":1}]}',
    b'{"v":1,"driver_id":"\\u0064rv-1","received_at":"2026-12-04T10:00:00Z","pings":[{"ping_id":"'
    + PING_ID.encode()
    + b'","ts":"2026-12-04T09:59:59Z","lat":1,"lon":1}]}',
    b'{"v":1,"driver_id":"drv-1","driver_id":"drv-2","received_at":"2026-12-04T10:00:00Z",'
    b'"pings":[{"ping_id":"' + PING_ID.encode() + b'","ts":"2026-12-04T09:59:59Z","lat":1,'
    b'"lat":2,"lon":1}]}',  # keys twice
    b'{"v":1,"driver_id":"drv-1","received_at":"2026-12-04T10:00:00Z","pings":[{"ping_id":"'
    + PING_ID.encode()
    + b'","ts":"2026-12-04T09:59:59Z","lat":1,"lon":1}], "x": "\xff"}',  # not UTF-8
    b'{"v":1,"driver_id":"drv-1","received_at":"2026-12-04T10:00:00Z","pings":[{"ping_id":"'
    + PING_ID.encode()
    + b'","ts":"2026-12-04T09:59:59Z","lat":1,"lon":1}]} trailing',
    b"[]",
    b"",
    b"\xff\x00garbage",
]


@pytest.mark.parametrize("case", EDGE_CASES)
def test_the_decoder_agrees_with_the_models_on_edge_cases(case: dict[str, Any] | bytes) -> None:
    assert_agree(case if isinstance(case, bytes) else json.dumps(case).encode())


def time_text(moment: datetime, digits: int, separator: str, zone: str) -> str:
    text = moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}{moment.microsecond % 1000:03d}"[:digits]
    return text + zone


def mostly(
    rate: int, valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """`odd` one time in `rate`, `valid` otherwise (never odd with rate 0): a record draws
    its rate, so that many records are valid and compared by value."""
    if rate == 0:
        return valid
    return st.integers(1, rate).flatmap(lambda n: odd if n == 1 else valid)


@st.composite
def times(draw: st.DrawFn, around: datetime, rate: int, spread: bool = True) -> Any:
    offset = (
        timedelta(0)
        if not spread
        else draw(
            mostly(
                rate,
                st.timedeltas(-MAX_PING_AGE, MAX_PING_AHEAD)
                | st.sampled_from([-MAX_PING_AGE, MAX_PING_AHEAD, timedelta(0)]),
                st.timedeltas(-MAX_PING_AGE * 2, MAX_PING_AHEAD * 2),
            )
        )
    )
    moment = around + offset
    minutes = draw(st.sampled_from([0, 60, -330, 14 * 60]) | st.integers(-1439, 1439))
    sign = "-" if minutes < 0 else "+"
    zone = draw(
        mostly(
            rate,
            st.sampled_from(["Z", f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"]),
            st.sampled_from(["z", "", f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"]),
        )
    )
    local = moment.astimezone(
        UTC if zone in ("Z", "z", "") else timezone(timedelta(minutes=minutes))
    )
    return draw(
        mostly(
            rate,
            st.builds(time_text, st.just(local), st.integers(0, 6), st.just("T"), st.just(zone)),
            st.builds(
                time_text,
                st.just(local),
                st.integers(0, 9),
                st.sampled_from(["T", "t", " "]),
                st.just(zone),
            )
            | st.just(local.timestamp()),
        )
    )


def uuids(rate: int) -> st.SearchStrategy[Any]:
    return st.uuids().flatmap(
        lambda u: mostly(
            rate,
            st.just(str(u)),
            st.sampled_from([str(u).upper(), u.hex, "{" + str(u) + "}", str(u)[:-1], str(u.int)]),
        )
    )


def bounded(low: float, high: float, rate: int) -> st.SearchStrategy[Any]:
    return mostly(
        rate,
        st.floats(low, high, allow_nan=False) | st.sampled_from([low, high, -0.0, int(high)]),
        st.floats(low - 1, high + 1, allow_nan=False) | st.sampled_from(["2", True, None]),
    )


@st.composite
def records(draw: st.DrawFn) -> bytes:
    rate = draw(st.sampled_from([0, 0, 20, 5]))
    received = draw(st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1))).replace(tzinfo=UTC)
    pings = []
    for _ in range(draw(mostly(rate, st.integers(1, 3), st.just(0)))):
        ping: dict[str, Any] = {
            "ping_id": draw(uuids(rate)),
            "ts": draw(times(received, rate)),
            "lat": draw(bounded(-90.0, 90.0, rate)),
            "lon": draw(bounded(-180.0, 180.0, rate)),
        }
        for name, (low, high) in {
            "accuracy_m": (0.0, 100_000.0),
            "speed_mps": (0.0, 100.0),
            "heading_deg": (0.0, 359.9),
            "battery_pct": (0.0, 100.0),
        }.items():
            if draw(st.booleans()):
                ping[name] = draw(st.none() | bounded(low, high, rate))
        if draw(st.booleans()):
            ping["job_id"] = draw(st.none() | uuids(rate))
        if rate and draw(st.integers(1, rate)) == 1:
            ping["extra"] = 1
        pings.append(ping)
    doc: dict[str, Any] = {
        "driver_id": draw(
            mostly(
                rate,
                st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True),
                st.sampled_from(["drv\n", "x" * 128, "x" * 129, "-x", "a b"]) | st.text(max_size=4),
            )
        ),
        "received_at": draw(times(received, rate, spread=False)),
        "pings": pings,
    }
    version = draw(mostly(rate, st.sampled_from([1, None]), st.sampled_from([2, "1", 1.0])))
    if version is not None:
        doc["v"] = version
    if draw(st.integers(0, 9)) == 0:
        doc["unknown"] = [1]
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_the_decoder_agrees_with_the_models_on_generated_records(value: bytes) -> None:
    assert_agree(value)


# The body of POST /v1/pings: ingest's msgspec path against its validation by the models.


def body_of(record: bytes) -> tuple[bytes, datetime | None]:
    """A body made of a record's pings (its other fields dropped, an unknown one kept), and
    the record's receipt as the moment of the request (None when it is not a time)."""
    try:
        doc = json.loads(record)
        received = datetime.fromisoformat(doc["received_at"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return record, None
    body = {"pings": doc.get("pings")} | ({"unknown": 1} if "unknown" in doc else {})
    return json.dumps(body, ensure_ascii=record.isascii()).encode(), received


def assert_body_agrees(body: bytes, now: datetime) -> None:
    """Where the msgspec path answers, the models accept every ping, with the same values."""
    fast = decode_valid_batch(body, now)
    if fast is None:
        return  # the models decide alone: nothing to compare
    verdict = validate_body(body, now)
    assert not verdict.rejected, body
    assert msgspec.json.encode(fast) == msgspec.json.encode(
        [wire_ping(p) for p in verdict.accepted]
    ), body


@pytest.mark.parametrize("case", EDGE_CASES)
def test_the_body_decoder_agrees_with_the_models_on_edge_cases(
    case: dict[str, Any] | bytes,
) -> None:
    body, now = body_of(case if isinstance(case, bytes) else json.dumps(case).encode())
    # `now` is a server's clock: never within a week of the ends of time.
    ends_of_time = (datetime(2, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
    if now is not None and now.tzinfo is not None and ends_of_time[0] < now < ends_of_time[1]:
        assert_body_agrees(body, now)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_the_body_decoder_agrees_with_the_models_on_generated_bodies(value: bytes) -> None:
    body, now = body_of(value)
    if now is not None and now.tzinfo is not None:
        assert_body_agrees(body, now)


def test_a_valid_body_takes_the_msgspec_path_and_an_invalid_one_the_models() -> None:
    now = datetime(2026, 12, 4, 10, tzinfo=UTC)
    valid = json.dumps({"pings": document()["pings"]}).encode()
    assert decode_valid_batch(valid, now) is not None
    for bad in (document(lat=91.0), document(lat=0, lon=0), document(extra=1)):
        assert decode_valid_batch(json.dumps({"pings": bad["pings"]}).encode(), now) is None
    too_old = json.dumps({"pings": document()["pings"]}).encode()
    assert decode_valid_batch(too_old, now + MAX_PING_AGE + timedelta(days=1)) is None


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_an_encoded_record_reads_back_as_the_models_would_have_written_it(value: bytes) -> None:
    try:
        record = PingBatchRecord.model_validate_json(value)
    except ValidationError:
        return
    encoded = encode_record(record.driver_id, record.received_at, from_model(record).pings)
    assert PingBatchRecord.model_validate_json(encoded) == record
    assert msgspec.json.encode(decode_record(encoded)) == msgspec.json.encode(from_model(record))
