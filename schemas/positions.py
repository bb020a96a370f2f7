"""`positions.v1`: a driver's latest position moved (produced by streams for the notifier)."""

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict


class PositionUpdate(BaseModel):
    """A `positions.v1` record: a driver's latest fix moved (at least once, keyed by driver)."""

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    driver_id: str
    ping_id: UUID
    ts: datetime
    lat: float
    lon: float
    speed_mps: float | None = None
    heading_deg: float | None = None
    job_id: UUID | None = None
