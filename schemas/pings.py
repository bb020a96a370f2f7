"""GPS pings: what a driver app posts, and the Kafka record ingest produces for a batch."""

from datetime import datetime
from typing import Annotated, Literal, Self
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

MAX_PINGS_PER_BATCH = 500
MAX_BATCH_BYTES = 256 * 1024
MAX_SPEED_MPS = 100.0

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
    accuracy_m: Annotated[float, Field(ge=0.0)] | None = None
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
    limits a Python pipeline (design section 10).
    """

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    driver_id: str = Field(min_length=1)
    received_at: datetime
    pings: list[Ping] = Field(min_length=1)
