"""The notifier's WebSocket protocol (docs/notifier.md): what a client sends, what the server
answers, and the close codes that say why a connection ended."""

from datetime import datetime
from enum import IntEnum
from typing import Annotated, Any, Literal
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
    every event after it, exactly once, or `resync` when they are no longer retained.
    `job_id` may be left out by a share link's holder (its link names the job; the share
    view does not show the id): a user must name the job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["subscribe"]
    job_id: UUID | None = None
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
# Sent as JSON text frames, built with orjson by notifier/frames.py (one encoding for every
# subscriber); these models are their published shapes (docs/asyncapi.yaml), and a test
# reads every frame the notifier builds back through them.

ResyncReason = Literal["not_retained", "unknown_seq"]


class Fix(BaseModel):
    """The driver's newest fix."""

    model_config = ConfigDict(extra="forbid")

    ts: datetime
    lat: float
    lon: float
    speed_mps: float | None
    heading_deg: float | None


class Snapshot(BaseModel):
    """First after each subscribe. `job` is the job now (the api's job view; a share link's
    subscriber gets the share view: status, position and times only), `seq` its newest
    event. Job events follow in seq order: those after `resumed_from` when the client gave
    `last_seq`, else those after `seq`. `position`: while the job is under way."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["snapshot"]
    job_id: UUID
    seq: int
    job: dict[str, Any]
    position: Fix | None
    resumed_from: int | None


class EventMessage(BaseModel):
    """A job event, in seq order, each exactly once; `at` is its commit time. A share
    link's subscriber gets `data` empty (it may name the driver or the dispatcher)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["job.created", "job.status", "job.completed", "job.arrived"]
    job_id: UUID
    seq: int
    status: str
    at: datetime
    data: dict[str, Any]


class PositionMessage(Fix):
    """The driver's newest fix while the job is under way. Latest-value, not in the seq
    stream: drop one older (by `ts`) than the one you have."""

    type: Literal["position"]
    job_id: UUID


class Resync(BaseModel):
    """The events after `last_seq` cannot be replayed; a fresh snapshot follows."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["resync"]
    job_id: UUID
    reason: ResyncReason


class ServerPing(BaseModel):
    """Every `ping_interval_s` (25 s); the client may answer `pong`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["ping"]
    ts: datetime


SERVER_MESSAGES: tuple[type[BaseModel], ...] = (
    Snapshot,
    EventMessage,
    PositionMessage,
    Resync,
    ServerPing,
)
CLIENT_MESSAGES: tuple[type[BaseModel], ...] = (Auth, Subscribe, Unsubscribe, Pong)
