"""Jobs: the api's request and answer bodies (docs/api.md) and the events on
`job-events.v1`, which the notifier reads too."""

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from schemas.auth import Principal, Role
from schemas.ids import EntityId
from schemas.pings import Latitude, Longitude


class JobStatus(StrEnum):
    CREATED = "created"
    ASSIGNED = "assigned"
    PICKED_UP = "picked_up"
    COMPLETING = "completing"  # the proof photo is being processed
    COMPLETED = "completed"
    CANCELLED = "cancelled"


def visible_to(who: Principal, customer_id: str | None, driver_id: str | None) -> bool:
    """Who sees a job, for every service that shows one: a customer their own jobs, a
    driver the jobs assigned to them, a dispatcher (and ops) all."""
    match who.role:
        case Role.DISPATCHER | Role.OPS:
            return True
        case Role.CUSTOMER:
            return customer_id == who.sub
        case Role.DRIVER:
            return driver_id == who.sub
    return False


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lat: Latitude
    lon: Longitude


class JobCreate(BaseModel):
    """`POST /v1/jobs`. A dispatcher may name the customer the job is for; a customer's
    job is always their own."""

    model_config = ConfigDict(extra="forbid")

    pickup: Point
    dropoff: Point
    # Free text for the customer's own reference; control characters (a NUL byte, which
    # PostgreSQL text cannot hold) are refused.
    reference: Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    customer_id: EntityId | None = None


class JobAssign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    driver_id: EntityId


class DriverPositionView(BaseModel):
    lat: float
    lon: float
    ts: datetime
    speed_mps: float | None


class Job(BaseModel):
    job_id: UUID
    status: JobStatus
    customer_id: str | None
    driver_id: str | None
    pickup: Point
    dropoff: Point
    reference: str | None
    seq: int
    created_at: datetime
    updated_at: datetime
    driver_position: DriverPositionView | None = None
    # Seconds to the dropoff while the job is under way; `eta_basis` says whether it rests
    # on a live position or falls back to a typical speed (no recent fix).
    eta_seconds: int | None = None
    eta_basis: Literal["live", "stale_position"] | None = None


class JobPage(BaseModel):
    jobs: list[Job]
    # Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: str | None


EventType = Literal["job.created", "job.status", "job.completed", "job.arrived"]


class JobEvent(BaseModel):
    """The value of a `job-events.v1` record (key: the job id). `seq` is the job's own
    sequence, assigned when the event was committed: consumers drop a seq they have."""

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    job_id: UUID
    seq: int
    type: EventType
    status: JobStatus
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


# A share token as the api makes them (token_urlsafe(24): 32 characters); anything else
# is refused before any lookup.
SHARE_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"


def share_token_hash(token: str) -> bytes:
    """What `share_links` keeps of a token (sha256): a leaked table leaks no working link."""
    return hashlib.sha256(token.encode()).digest()


class ShareCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # How long the link works: a minute to a week (a day by default).
    ttl_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 24 * 3600


class ShareLink(BaseModel):
    """A new share link: `url` is its JSON view, `page_url` the page to send to a phone."""

    token: str
    url: str
    page_url: str
    expires_at: datetime


class SharesRevoked(BaseModel):
    """`DELETE /v1/jobs/{id}/share`: how many live links ended."""

    revoked: int


class SharedJob(BaseModel):
    """What a share link shows: where the delivery is, never who ordered it or what."""

    status: JobStatus
    driver_position: DriverPositionView | None
    eta_seconds: int | None
    eta_basis: Literal["live", "stale_position"] | None
    updated_at: datetime
    expires_at: datetime
