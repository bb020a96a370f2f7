"""Pure decoding of `pings.v1` records into typed batches, poison separated out."""

from collections.abc import Sequence

import msgspec
from pydantic import ValidationError

from schemas import pings_wire
from schemas.pings_wire import WireRecord
from streams.errors import InvalidMessage


class Incoming(msgspec.Struct, frozen=True, gc=False):
    """A decoded record with the bytes it came from (a record refused later by the
    database is dead-lettered as it arrived)."""

    key: bytes | None
    value: bytes
    record: WireRecord
    request_id: str | None = None  # the ingest request's, from the record's header
    partition: int | None = None  # of `pings.v1`: the sink locks by it


class Poison(msgspec.Struct, frozen=True, gc=False):
    """A record that can never be stored: its bytes, and why, for the dead-letter topic."""

    key: bytes | None
    value: bytes
    error: str
    request_id: str | None = None


def decode_record(value: bytes) -> WireRecord:
    """The record, or InvalidMessage: undecodable, the wrong schema, a malformed driver id,
    or a ping outside the record's time window (the stream trusts no producer)."""
    try:
        return pings_wire.decode_record(value)
    except ValidationError as exc:
        raise InvalidMessage(str(exc)) from exc


# A record as consumed: its key and value, the request id its headers carry, if any, and
# its partition.
Raw = (
    tuple[bytes | None, bytes]
    | tuple[bytes | None, bytes, str | None]
    | tuple[bytes | None, bytes, str | None, int]
)


def split_batch(messages: Sequence[Raw]) -> tuple[list[Incoming], list[Poison]]:
    records: list[Incoming] = []
    poison: list[Poison] = []
    for message in messages:
        key, value = message[0], message[1]
        request_id = message[2] if len(message) >= 3 else None
        partition = message[3] if len(message) == 4 else None
        try:
            records.append(Incoming(key, value, decode_record(value), request_id, partition))
        except InvalidMessage as exc:
            poison.append(Poison(key, value, str(exc), request_id))
        except Exception as exc:
            # Decoding is pure: whatever else it raises is this record's doing, never an
            # outage. Dead-lettered like an invalid one, so it cannot stop the stream.
            poison.append(Poison(key, value, f"{type(exc).__name__}: {exc}", request_id))
    return records, poison
