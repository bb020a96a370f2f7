"""Pure decoding of `pings.v1` records into typed batches, poison separated out."""

from dataclasses import dataclass

from pydantic import ValidationError

from schemas.pings import PingBatchRecord
from streams.errors import InvalidMessage


@dataclass(frozen=True, slots=True)
class Poison:
    key: bytes | None
    value: bytes
    error: str


def decode_record(value: bytes) -> PingBatchRecord:
    try:
        return PingBatchRecord.model_validate_json(value)
    except ValidationError as exc:
        raise InvalidMessage(str(exc)) from exc


def split_batch(
    messages: list[tuple[bytes | None, bytes]],
) -> tuple[list[PingBatchRecord], list[Poison]]:
    records: list[PingBatchRecord] = []
    poison: list[Poison] = []
    for key, value in messages:
        try:
            records.append(decode_record(value))
        except InvalidMessage as exc:
            poison.append(Poison(key, value, str(exc)))
    return records, poison
