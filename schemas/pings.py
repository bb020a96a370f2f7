"""GPS pings: what a driver app posts, and the Kafka record ingest produces for a batch."""

from datetime import timedelta
from typing import Annotated, Final, Literal, Self
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.ids import EntityId

MAX_PINGS_PER_BATCH = 500
MAX_BATCH_BYTES = 256 * 1024
MAX_SPEED_MPS = 100.0
MAX_ACCURACY_M = 100_000.0
# A fix time is accepted from MAX_PING_AGE before its receipt to MAX_PING_AHEAD after it:
# ingest checks it against its clock, the stream re-checks the record.
MAX_PING_AGE: Final = timedelta(days=7)
MAX_PING_AHEAD: Final = timedelta(minutes=5)

Latitude = Annotated[float, Field(ge=-90.0, le=90.0)]
Longitude = Annotated[float, Field(ge=-180.0, le=180.0)]


class Ping(BaseModel):
    """One GPS fix. Static rules only: rules relative to 'now' live in the ingest validator,
    so that replaying an old record through the stream never rejects it."""

    # allow_inf_nan=False rejects NaN and +-inf even though JSON parsers may produce them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    ping_id: UUID
    ts: AwareDatetime
    lat: Latitude
    lon: Longitude
    # Past this no fix is meant (and a float4 column would overflow to +Inf long before a
    # double does): refused, not stored.
    accuracy_m: Annotated[float, Field(ge=0.0, le=MAX_ACCURACY_M)] | None = None
    speed_mps: Annotated[float, Field(ge=0.0, le=MAX_SPEED_MPS)] | None = None
    heading_deg: Annotated[float, Field(ge=0.0, lt=360.0)] | None = None
    battery_pct: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    job_id: UUID | None = None

    @model_validator(mode="after")
    def _not_null_island(self) -> Self:
        # (0, 0) is what broken GPS stacks report when they have no fix.
        if self.lat == 0.0 and self.lon == 0.0:
            raise ValueError("(0, 0) is not a real position")
        return self


class PingBatchRecord(BaseModel):
    """The value of one `pings.v1` record: one driver's accepted pings from one request.

    One record per request, not per ping: per-message overhead, not bytes, is what
    limits a Python pipeline.
    """

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    driver_id: EntityId
    received_at: AwareDatetime
    pings: list[Ping] = Field(min_length=1, max_length=MAX_PINGS_PER_BATCH)

    @model_validator(mode="after")
    def _pings_within_the_accepted_window(self) -> Self:
        # Anyone who can write to the topic can bypass ingest: a ping dated year 1 would
        # otherwise make the sink create a partition for every day since.
        try:
            earliest = self.received_at - MAX_PING_AGE
            latest = self.received_at + MAX_PING_AHEAD
        except OverflowError:
            # A receipt within a week of year 1 or of year 9999 (an OverflowError is not
            # a ValueError: pydantic would let it out, and it would stop the stream).
            raise ValueError(
                f"received_at {self.received_at.isoformat()} is out of range"
            ) from None
        for ping in self.pings:
            if not earliest <= ping.ts <= latest:
                raise ValueError(
                    f"ping {ping.ping_id} at {ping.ts.isoformat()} lies outside "
                    f"[received_at - {MAX_PING_AGE}, received_at + {MAX_PING_AHEAD}]"
                )
        return self


class PingBatch(BaseModel):
    """The body of `POST /v1/pings`."""

    model_config = ConfigDict(extra="forbid")

    pings: list[Ping] = Field(min_length=1, max_length=MAX_PINGS_PER_BATCH)


class PingRejection(BaseModel):
    """Why one ping of a batch was refused; `code` is a small fixed vocabulary."""

    index: int
    ping_id: str | None
    code: str
    reason: str


class PingsAccepted(BaseModel):
    """The answer to `POST /v1/pings` (202): the valid pings are durable in Kafka."""

    accepted: int
    rejected: list[PingRejection]
