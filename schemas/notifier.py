"""The notifier's WebSocket protocol (docs/notifier.md): what a client sends, what the server
answers, and the close codes that say why a connection ended."""

from enum import IntEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

# The path the notifier serves its WebSocket on.
WS_PATH = "/ws"


class CloseCode(IntEnum):
    """Why the server closed. 1xxx are the RFC's; 44xx mirror the HTTP status they mean, so
    a client can act on them: reconnect and resume after GOING_AWAY, TRY_AGAIN_LATER and
    SLOW_CONSUMER; get a new token after AUTH_FAILED; never retry FORBIDDEN as is."""

    GOING_AWAY = 1001  # the process is shutting down
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # a dependency (the database) did not answer
    BAD_MESSAGE = 4400  # not JSON, an unknown type, a missing field
    AUTH_FAILED = 4401  # no auth message in time, a bad or expired token
    FORBIDDEN = 4403  # not your job (or no such job: the same answer)
    SLOW_CONSUMER = 4408  # more than the limit of output unsent
    TOO_MANY_SUBSCRIPTIONS = 4429


# Client messages -----------------------------------------------------------------------


class Auth(BaseModel):
    """First message: a user's JWT, or a share link's token (which sees its job only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=4096)]


class Subscribe(BaseModel):
    """Follow a job. `last_seq`: the newest job event the client has; the server then sends
    every event after it, exactly once, or `resync` when they are no longer retained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["subscribe"]
    job_id: UUID
    last_seq: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None


class Unsubscribe(BaseModel):
    """Client message: stop following a job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["unsubscribe"]
    job_id: UUID


class Pong(BaseModel):
    """The client's optional answer to an application ping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["pong"]


ClientMessage = Annotated[Auth | Subscribe | Unsubscribe | Pong, Field(discriminator="type")]
CLIENT_MESSAGE: TypeAdapter[Auth | Subscribe | Unsubscribe | Pong] = TypeAdapter(ClientMessage)


# Server messages -----------------------------------------------------------------------
# Sent as JSON text frames, built with orjson from these shapes:
#
#   {"type": "snapshot", "job_id", "seq", "job": {...}, "position": {...} | null,
#    "resumed_from": n | null}
#       `job` is the job now (a share link's subscriber sees the share view: status and
#       times only), `seq` the job's newest event; job events follow in seq order, those
#       after `resumed_from` (when the client gave `last_seq`) or after `seq`.
#   {"type": "job.created" | "job.status" | "job.completed" | "job.arrived", "job_id",
#    "seq", "status", "at", "data"}
#       `at` is the commit time; a share link's subscriber gets `data` empty.
#   {"type": "position", "job_id", "ts", "lat", "lon", "speed_mps", "heading_deg"}
#       latest-value, not in the seq stream: drop one older than the one you have.
#   {"type": "resync", "job_id", "reason"}
#       the events after `last_seq` are no longer retained; a fresh snapshot follows.
#   {"type": "ping", "ts"}
#       every `ping_interval_s` (25 s); the client may answer {"type": "pong"}.

ResyncReason = Literal["not_retained", "unknown_seq"]
