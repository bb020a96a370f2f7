"""Pure cleaning of one batch: per driver, order the pings, and flag the ones that must not
move the latest position (the rules: docs/services.md, "Streams").

The per-driver state is the driver's latest accepted position as stored in the database,
read in the same transaction that writes the batch: state and results commit together, so
a replay after a crash sees exactly the state its first attempt saw committed, and a
replayed batch is classified the same way (exactly-once results)."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import msgspec

from runtime.geo import haversine_m
from schemas.pings import MAX_SPEED_MPS
from schemas.pings_wire import WirePing, WireRecord

# Flags. Only LATE pings still count in the aggregates: a late ping is a real fix that
# arrived after newer ones (a retry after a 503, an offline flush), not a wrong one.
FUTURE = "future"  # fix time too far ahead of the record's receipt: a wrong device clock
LATE = "late"  # not newer than the driver's latest position
TELEPORT = "teleport"  # implied speed from the previous valid ping above MAX_SPEED_MPS


class Position(msgspec.Struct, frozen=True, gc=False):
    """A driver's latest accepted fix."""

    ts: datetime
    lat: float
    lon: float
    ping_id: UUID | None = None


# Structs, not frozen dataclasses: one is made per ping, and a frozen dataclass takes
# nine times as long to build.
class CleanPing(msgspec.Struct, frozen=True, gc=False):
    """A ping after cleaning: its driver, the ping, and what cleaning found (late, teleport, future)
    and whether it counts in the aggregates."""

    driver_id: str
    ping: WirePing
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
    """A batch after cleaning: every ping, and each driver's newest position that moved."""

    pings: list[CleanPing]
    # Per driver, the position this batch sets: its newest valid ping when newer than the
    # stored one, or the stored one itself when this batch set it before (a replay after a
    # crash between the commit and the publish must publish it again: at least once).
    moved: dict[str, CleanPing]


def _time_then_id(entry: tuple[WirePing, datetime]) -> tuple[datetime, UUID]:
    return entry[0].ts, entry[0].ping_id


def clean(
    records: list[WireRecord], latest: dict[str, Position], future_tolerance: timedelta
) -> CleanBatch:
    """Classifies every ping of the batch. A ping id seen twice in the batch is kept once.

    The batch is the reorder window: pings of one driver are taken in time order whatever
    order they arrived in, so a flush after a dead zone, or two requests overtaking each
    other, are not mistaken for late pings. A ping more than `future_tolerance` ahead of
    its record's receipt is flagged `future`: taken as the latest position, it would make
    every later real ping of the driver `late`."""
    by_driver: dict[str, dict[UUID, tuple[WirePing, datetime]]] = {}
    for record in records:
        seen = by_driver.setdefault(record.driver_id, {})
        for ping in record.pings:
            seen.setdefault(ping.ping_id, (ping, record.received_at))
    out: list[CleanPing] = []
    moved: dict[str, CleanPing] = {}
    for driver_id, pings in by_driver.items():
        stored = latest.get(driver_id)
        # The previous valid fix, as plain values: this loop runs for every ping.
        if stored is not None:
            previous_ts, previous_lat, previous_lon = stored.ts, stored.lat, stored.lon
        else:
            previous_ts = None
            previous_lat = previous_lon = 0.0
        # By time, then id (as the database orders a driver's pings: uuids compare as
        # their 128-bit numbers in both).
        for ping, received_at in sorted(pings.values(), key=_time_then_id):
            flags: tuple[str, ...] = ()
            ts = ping.ts
            if ts > received_at + future_tolerance:
                flags = (FUTURE,)
            elif previous_ts is not None and (
                ts <= previous_ts
                # the implied speed from the previous valid fix
                or haversine_m(previous_lat, previous_lon, ping.lat, ping.lon)
                / (ts - previous_ts).total_seconds()
                > MAX_SPEED_MPS
            ):
                flags = (LATE,) if ts <= previous_ts else (TELEPORT,)
            result = CleanPing(driver_id, ping, received_at, flags)
            out.append(result)
            if not flags:
                previous_ts, previous_lat, previous_lon = ts, ping.lat, ping.lon
                moved[driver_id] = result
            elif stored is not None and ping.ping_id == stored.ping_id:
                moved[driver_id] = result
    return CleanBatch(out, moved)
