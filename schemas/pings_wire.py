"""The `pings.v1` record decoded with msgspec, for the stream's hot path; and the body of
`POST /v1/pings` decoded, and its record encoded, with msgspec, for ingest's.

The pydantic models in schemas.pings stay the contract. msgspec decodes a record into
plain structs about five times faster, and `decode_record` takes its answer only where it
is known to equal the models': ASCII records without escapes or sub-microsecond fractions
that pass every rule below. Anything else (an error, a number for a time, a UUID in
braces, a fraction msgspec would round where pydantic truncates) is decided by the models,
and their error is the one reported. tests/unit/test_pings_wire.py checks that the two
agree, value for value, on generated records and bodies."""

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
    Ping,
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


class WireBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """schemas.pings.PingBatch, field for field."""

    pings: Annotated[list[WirePing], msgspec.Meta(min_length=1, max_length=MAX_PINGS_PER_BATCH)]


_DECODER = msgspec.json.Decoder(WireRecord)
_BATCH_DECODER = msgspec.json.Decoder(WireBatch)
_ENCODER = msgspec.json.Encoder()
# The id rule as a full match: Python's `$` also matches before a final newline, the
# models' (Rust) regex does not.
_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
# A time with more than six fractional digits: msgspec rounds it, pydantic truncates. (Led
# by the minutes, so that the search skips the coordinates' digits quickly.)
_LONG_FRACTION = re.compile(rb":\d\d:\d\d\.\d{7}")


def _plain(value: bytes) -> bool:
    """Text on which msgspec and the models are known to read the same values."""
    return value.isascii() and b"\\" not in value and _LONG_FRACTION.search(value) is None


def _within(pings: list[WirePing], received_at: datetime) -> bool:
    """The models' per-ping rules beyond field types: the window around the receipt, and
    no (0, 0). OverflowError: a receipt at the ends of time, which the models refuse."""
    earliest = received_at - MAX_PING_AGE
    latest = received_at + MAX_PING_AHEAD
    return all(earliest <= p.ts <= latest and not (p.lat == 0.0 and p.lon == 0.0) for p in pings)


def _obeys_the_models(record: WireRecord) -> bool:
    """The rules the models check beyond field types (schemas.pings's validators)."""
    if _ID.fullmatch(record.driver_id) is None:
        return False
    try:
        return _within(record.pings, record.received_at)
    except OverflowError:
        return False  # the models refuse it, with their error


def wire_ping(p: Ping) -> WirePing:
    """The struct of a ping the models validated."""
    return WirePing(p.ping_id, p.ts, p.lat, p.lon, p.accuracy_m, p.speed_mps,
                    p.heading_deg, p.battery_pct, p.job_id)  # fmt: skip


def from_model(record: PingBatchRecord) -> WireRecord:
    """The struct of a record the models validated."""
    pings = [wire_ping(p) for p in record.pings]
    return WireRecord(record.driver_id, record.received_at, pings, record.v)


def decode_record(value: bytes) -> WireRecord:
    """The record as the models would decode it; pydantic's ValidationError otherwise."""
    if _plain(value):
        try:
            record = _DECODER.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:
            if _obeys_the_models(record):
                return record
    return from_model(PingBatchRecord.model_validate_json(value))


def decode_valid_batch(body: bytes, now: datetime) -> list[WirePing] | None:
    """The pings of a `POST /v1/pings` body when msgspec reads them as the models would
    and every one is valid at `now`; None otherwise, and the models decide (ingest's
    validation, which says what is wrong with which ping)."""
    if not _plain(body):
        return None
    try:
        pings = _BATCH_DECODER.decode(body).pings
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return pings if _within(pings, now) else None


def encode_record(driver_id: str, received_at: datetime, pings: list[WirePing]) -> bytes:
    """A `pings.v1` record's value: what PingBatchRecord would dump, as JSON the models and
    `decode_record` read back to the same values. The arguments are valid already (the
    driver id from a verified token, pings valid at `received_at`)."""
    return _ENCODER.encode(WireRecord(driver_id, received_at, pings))
