"""Pure cleaning of one batch: per driver, order the pings, and flag the ones that must not
move the latest position or count in aggregates (design section 8).

The per-driver state is the driver's latest accepted position as stored in the database,
read in the same transaction that writes the batch: state and results commit together, so
a replay after a crash sees exactly the state its first attempt saw committed, and a
replayed batch is classified the same way (exactly-once results)."""

from dataclasses import dataclass
from datetime import datetime

from runtime.geo import haversine_m
from schemas.pings import MAX_SPEED_MPS, Ping, PingBatchRecord

TELEPORT = "teleport"  # implied speed from the previous valid ping above MAX_SPEED_MPS
LATE = "late"  # not newer than the driver's latest position


@dataclass(frozen=True, slots=True)
class Position:
    """A driver's latest accepted fix."""

    ts: datetime
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class CleanPing:
    driver_id: str
    ping: Ping
    received_at: datetime
    flags: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.flags


@dataclass(frozen=True, slots=True)
class CleanBatch:
    pings: list[CleanPing]
    # Per driver, the newest valid ping of this batch when it is newer than the stored one.
    moved: dict[str, CleanPing]


def implied_speed_mps(a: Position, b: Ping) -> float:
    seconds = (b.ts - a.ts).total_seconds()
    distance = haversine_m(a.lat, a.lon, b.lat, b.lon)
    if seconds <= 0:
        return 0.0 if distance == 0 else float("inf")
    return distance / seconds


def clean(records: list[PingBatchRecord], latest: dict[str, Position]) -> CleanBatch:
    """Classifies every ping of the batch. A ping id seen twice in the batch is kept once.

    The batch is the reorder window: pings of one driver are taken in time order whatever
    order they arrived in, so a flush after a dead zone, or two requests overtaking each
    other, are not mistaken for late pings."""
    by_driver: dict[str, dict[object, tuple[Ping, datetime]]] = {}
    for record in records:
        seen = by_driver.setdefault(record.driver_id, {})
        for ping in record.pings:
            seen.setdefault(ping.ping_id, (ping, record.received_at))
    out: list[CleanPing] = []
    moved: dict[str, CleanPing] = {}
    for driver_id, pings in by_driver.items():
        previous = latest.get(driver_id)
        for ping, received_at in sorted(pings.values(), key=lambda p: (p[0].ts, str(p[0].ping_id))):
            flags: tuple[str, ...] = ()
            if previous is not None and ping.ts <= previous.ts:
                flags = (LATE,)
            elif previous is not None and implied_speed_mps(previous, ping) > MAX_SPEED_MPS:
                flags = (TELEPORT,)
            result = CleanPing(driver_id, ping, received_at, flags)
            out.append(result)
            if result.valid:
                previous = Position(ping.ts, ping.lat, ping.lon)
                moved[driver_id] = result
    return CleanBatch(out, moved)
