"""The server's messages as encoded frames (schemas/notifier.py describes them). A frame is
encoded once and the same bytes go to every subscriber it is for."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from schemas.jobs import JobEvent
from schemas.notifier import ResyncReason
from schemas.positions import PositionUpdate


def _dumps(value: object) -> bytes:
    # "Z" for UTC, as the api's JSON writes it.
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


@dataclass(frozen=True, slots=True)
class EventFrame:
    """A job event ready to send: to a user (`full`) or to a share link's subscriber
    (`public`, without `data`, which may name the driver or the dispatcher)."""

    job_id: UUID
    seq: int
    status: str
    type: str
    at: datetime
    full: bytes
    public: bytes

    def for_share(self, share: bool) -> bytes:
        return self.public if share else self.full


def event_frame(event: JobEvent) -> EventFrame:
    body: dict[str, Any] = {
        "type": event.type,
        "job_id": event.job_id,
        "seq": event.seq,
        "status": event.status.value,
        "at": event.at,
    }
    return EventFrame(
        job_id=event.job_id,
        seq=event.seq,
        status=event.status.value,
        type=event.type,
        at=event.at,
        full=_dumps(body | {"data": event.data}),
        public=_dumps(body | {"data": {}}),
    )


def position_frame(job_id: UUID, position: PositionUpdate) -> bytes:
    """Latest-value: a client drops a position older (by `ts`) than the one it has."""
    return _dumps(
        {
            "type": "position",
            "job_id": job_id,
            "ts": position.ts,
            "lat": position.lat,
            "lon": position.lon,
            "speed_mps": position.speed_mps,
            "heading_deg": position.heading_deg,
        }
    )


def snapshot_frame(
    job_id: UUID,
    seq: int,
    job: dict[str, Any],
    position: PositionUpdate | None,
    resumed_from: int | None,
) -> bytes:
    return _dumps(
        {
            "type": "snapshot",
            "job_id": job_id,
            "seq": seq,
            "job": job,
            "position": None
            if position is None
            else position.model_dump(
                mode="json", include={"ts", "lat", "lon", "speed_mps", "heading_deg"}
            ),
            "resumed_from": resumed_from,
        }
    )


def resync_frame(job_id: UUID, reason: ResyncReason) -> bytes:
    return _dumps({"type": "resync", "job_id": job_id, "reason": reason})


def ping_frame(now: datetime) -> bytes:
    return _dumps({"type": "ping", "ts": now})
