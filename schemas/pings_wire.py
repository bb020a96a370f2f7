"""The `pings.v1` record decoded with msgspec, for the stream's hot path.

The pydantic models in schemas.pings stay the contract. msgspec decodes a record into
plain structs about five times faster, and `decode_record` takes its answer only where it
is known to equal the models': ASCII records without escapes or sub-microsecond fractions
that pass every rule below. Anything else (an error, a number for a time, a UUID in
braces, a fraction msgspec would round where pydantic truncates) is decided by the models,
and their error is the one reported. tests/unit/test_pings_wire.py checks that the two
agree, value for value, on generated records."""

import re
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from schemas.ids import ID_PATTERN
from schemas.pings import (
    MAX_ACCURACY_M,
    MAX_PING_AGE,
    MAX_PING_AHEAD,
    MAX_PINGS_PER_BATCH,
    MAX_SPEED_MPS,
    PingBatchRecord,
)

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class WirePing(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """schemas.pings.Ping, field for field."""

    ping_id: UUID
    ts: AwareTime
    lat: Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)]
    lon: Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)]
    accuracy_m: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_ACCURACY_M)] | None = None
    speed_mps: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_SPEED_MPS)] | None = None
    heading_deg: Annotated[float, msgspec.Meta(ge=0.0, lt=360.0)] | None = None
    battery_pct: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] | None = None
    job_id: UUID | None = None


class WireRecord(msgspec.Struct, frozen=True, gc=False):
    """schemas.pings.PingBatchRecord, field for field (unknown fields ignored, as there)."""

    driver_id: str
    received_at: AwareTime
    pings: Annotated[list[WirePing], msgspec.Meta(min_length=1, max_length=MAX_PINGS_PER_BATCH)]
    v: Literal[1] = 1


_DECODER = msgspec.json.Decoder(WireRecord)
# The id rule as a full match: Python's `$` also matches before a final newline, the
# models' (Rust) regex does not.
_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
# A time with more than six fractional digits: msgspec rounds it, pydantic truncates. (Led
# by the minutes, so that the search skips the coordinates' digits quickly.)
_LONG_FRACTION = re.compile(rb":\d\d:\d\d\.\d{7}")


def _obeys_the_models(record: WireRecord) -> bool:
    """The rules the models check beyond field types (schemas.pings's validators)."""
    if _ID.fullmatch(record.driver_id) is None:
        return False
    try:
        earliest = record.received_at - MAX_PING_AGE
        latest = record.received_at + MAX_PING_AHEAD
    except OverflowError:
        return False  # the models refuse it, with their error
    for p in record.pings:
        if not earliest <= p.ts <= latest or (p.lat == 0.0 and p.lon == 0.0):
            return False
    return True


def from_model(record: PingBatchRecord) -> WireRecord:
    """The struct of a record the models validated."""
    pings = [
        WirePing(p.ping_id, p.ts, p.lat, p.lon, p.accuracy_m, p.speed_mps,
                 p.heading_deg, p.battery_pct, p.job_id)
        for p in record.pings
    ]  # fmt: skip
    return WireRecord(record.driver_id, record.received_at, pings, record.v)


def decode_record(value: bytes) -> WireRecord:
    """The record as the models would decode it; pydantic's ValidationError otherwise."""
    if value.isascii() and b"\\" not in value and _LONG_FRACTION.search(value) is None:
        try:
            record = _DECODER.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:
            if _obeys_the_models(record):
                return record
    return from_model(PingBatchRecord.model_validate_json(value))
