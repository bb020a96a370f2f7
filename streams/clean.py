"""Pure cleaning of one batch: per driver, order the pings, and flag the ones that must not
move the latest position (design section 8).

The per-driver state is the driver's latest accepted position as stored in the database,
read in the same transaction that writes the batch: state and results commit together, so
a replay after a crash sees exactly the state its first attempt saw committed, and a
replayed batch is classified the same way (exactly-once results)."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from runtime.geo import haversine_m
from schemas.pings import MAX_SPEED_MPS, Ping, PingBatchRecord

# Flags. Only LATE pings still count in the aggregates: a late ping is a real fix that
# arrived after newer ones (a retry after a 503, an offline flush), not a wrong one.
FUTURE = "future"  # fix time too far ahead of the record's receipt: a wrong device clock
LATE = "late"  # not newer than the driver's latest position
TELEPORT = "teleport"  # implied speed from the previous valid ping above MAX_SPEED_MPS


@dataclass(frozen=True, slots=True)
class Position:
    """A driver's latest accepted fix."""

    ts: datetime
    lat: float
    lon: float
    ping_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class CleanPing:
    driver_id: str
    ping: Ping
    received_at: datetime
    flags: tuple[str, ...]

    @property
    def moves_position(self) -> bool:
        return not self.flags

    @property
    def counted(self) -> bool:
        """Whether it counts in the aggregates."""
        return FUTURE not in self.flags and TELEPORT not in self.flags


@dataclass(frozen=True, slots=True)
class CleanBatch:
    pings: list[CleanPing]
    # Per driver, the position this batch sets: its newest valid ping when newer than the
    # stored one, or the stored one itself when this batch set it before (a replay after a
    # crash between the commit and the publish must publish it again: at least once).
    moved: dict[str, CleanPing]


def implied_speed_mps(a: Position, b: Ping) -> float:
    seconds = (b.ts - a.ts).total_seconds()
    distance = haversine_m(a.lat, a.lon, b.lat, b.lon)
    if seconds <= 0:
        return 0.0 if distance == 0 else float("inf")
    return distance / seconds


def clean(
    records: list[PingBatchRecord], latest: dict[str, Position], future_tolerance: timedelta
) -> CleanBatch:
    """Classifies every ping of the batch. A ping id seen twice in the batch is kept once.

    The batch is the reorder window: pings of one driver are taken in time order whatever
    order they arrived in, so a flush after a dead zone, or two requests overtaking each
    other, are not mistaken for late pings. A ping more than `future_tolerance` ahead of
    its record's receipt is flagged `future`: taken as the latest position, it would make
    every later real ping of the driver `late`."""
    by_driver: dict[str, dict[UUID, tuple[Ping, datetime]]] = {}
    for record in records:
        seen = by_driver.setdefault(record.driver_id, {})
        for ping in record.pings:
            seen.setdefault(ping.ping_id, (ping, record.received_at))
    out: list[CleanPing] = []
    moved: dict[str, CleanPing] = {}
    for driver_id, pings in by_driver.items():
        stored = latest.get(driver_id)
        previous = stored
        # By time, then id (as the database orders a driver's pings: uuids compare as
        # their 128-bit numbers in both).
        for ping, received_at in sorted(pings.values(), key=lambda p: (p[0].ts, p[0].ping_id)):
            flags: tuple[str, ...] = ()
            if ping.ts > received_at + future_tolerance:
                flags = (FUTURE,)
            elif previous is not None and ping.ts <= previous.ts:
                flags = (LATE,)
            elif previous is not None and implied_speed_mps(previous, ping) > MAX_SPEED_MPS:
                flags = (TELEPORT,)
            result = CleanPing(driver_id, ping, received_at, flags)
            out.append(result)
            if result.moves_position:
                previous = Position(ping.ts, ping.lat, ping.lon, ping.ping_id)
                moved[driver_id] = result
            elif stored is not None and ping.ping_id == stored.ping_id:
                moved[driver_id] = result
    return CleanBatch(out, moved)
