"""Pure validation of a posted batch: which pings are accepted and why others are not."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from ingest.errors import InvalidBatch
from schemas.pings import MAX_PING_AGE, MAX_PING_AHEAD, MAX_PINGS_PER_BATCH, Ping, PingBatch


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one ping is refused: `code` is a small fixed vocabulary (metrics label on it),
    `reason` the human sentence."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one ping of a batch was refused: its index, its id if it has one, a code, a message."""

    index: int
    ping_id: str | None
    code: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "ping_id": self.ping_id,
            "code": self.code,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class BatchVerdict:
    """A batch after validation: the pings accepted, and the ones rejected with why."""

    accepted: list[Ping]
    rejected: list[Rejection]


def parse_batch(body: bytes) -> list[Any]:
    """The raw `pings` list of a body, or InvalidBatch saying what is wrong with the shape."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidBatch(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidBatch('body must be a JSON object {"pings": [...]}')
    unknown = sorted(set(doc) - {"pings"})
    if unknown:
        raise InvalidBatch(f"unknown fields: {', '.join(unknown)}")
    pings = doc.get("pings")
    if not isinstance(pings, list):
        raise InvalidBatch('"pings" must be a list')
    if not 1 <= len(pings) <= MAX_PINGS_PER_BATCH:
        raise InvalidBatch(f'"pings" must hold 1 to {MAX_PINGS_PER_BATCH} pings, got {len(pings)}')
    return pings


def _problem(exc: ValidationError) -> Problem:
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    first = errors[0]
    if first["type"] == "extra_forbidden":
        code = "unknown_field"
    elif first["type"] == "model_type":
        code = "not_an_object"
    elif first["loc"]:
        code = str(first["loc"][0])  # a field of Ping: a fixed set
    elif "(0, 0)" in first["msg"]:
        code = "null_island"
    else:
        code = "invalid"
    return Problem(code, "; ".join(parts))


def validate_ping(raw: Any, now: datetime) -> Ping | Problem:
    """The ping, or why it is refused. `now` is injected: the time window moves."""
    try:
        ping = Ping.model_validate(raw)
    except ValidationError as exc:
        return _problem(exc)
    if ping.ts > now + MAX_PING_AHEAD:
        return Problem("ts_future", "ts: more than 5 minutes in the future")
    if ping.ts < now - MAX_PING_AGE:
        return Problem("ts_too_old", "ts: more than 7 days old")
    return ping


def validate_body(body: bytes, now: datetime) -> BatchVerdict:
    """Validates a posted body. InvalidBatch if it is not a batch at all."""
    try:
        # The whole body at once, parsed by pydantic-core straight from JSON bytes: the
        # fast path for the usual request in which every ping is valid.
        pings = PingBatch.model_validate_json(body).pings
    except ValidationError:
        # Something is wrong: redo it ping by ping to say which ones and why.
        return validate_batch(parse_batch(body), now)
    earliest, latest = now - MAX_PING_AGE, now + MAX_PING_AHEAD
    if all(earliest <= p.ts <= latest for p in pings):
        return BatchVerdict(pings, [])
    return validate_batch([p.model_dump(mode="json") for p in pings], now)


def validate_batch(raw_pings: list[Any], now: datetime) -> BatchVerdict:
    accepted: list[Ping] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(raw_pings):
        result = validate_ping(raw, now)
        if isinstance(result, Ping):
            accepted.append(result)
            continue
        ping_id = raw.get("ping_id") if isinstance(raw, dict) else None
        ping_id = ping_id if isinstance(ping_id, str) else None
        rejected.append(Rejection(index, ping_id, result.code, result.reason))
    return BatchVerdict(accepted, rejected)
