"""Estimated time to the dropoff, pure.

Great-circle distance times a road factor (streets are not straight: about 1.3, and 1.4
for short trips, where the detours weigh more), over the driver's average speed of the
last minutes spent moving (stops at corners included: that is what city traffic looks
like; minutes standing at a pickup are not, api/reads/positions.py), clamped to what a
delivery vehicle does in a city, plus a dwell time at each stop still ahead. While the
job is assigned the route runs through the pickup. When the position is stale (no fix for
`stale_after_s`, a dead zone or a closed app), the recent speed says nothing about now:
the estimate falls back to a typical city speed and says so (`basis`)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from runtime.geo import haversine_m

LatLon = tuple[float, float]
Basis = Literal["live", "stale_position"]


@dataclass(frozen=True)
class EtaSettings:
    """How an ETA is estimated from straight-line distance: road factors and the speeds a city
    delivery keeps."""

    road_factor: float = 1.3
    short_trip_road_factor: float = 1.4
    short_trip_m: float = 2000.0
    # Average speeds a city delivery keeps over minutes, stops included.
    min_speed_mps: float = 1.5
    max_speed_mps: float = 20.0
    fallback_speed_mps: float = 6.0  # about 22 km/h: a typical city average
    dwell_s: float = 120.0  # at a pickup or a dropoff
    stale_after_s: float = 300.0
    max_eta_s: float = 12 * 3600.0


@dataclass(frozen=True)
class Eta:
    """An estimate: seconds to the next stop, and what it rests on (the driver's recent speed or a
    typical one)."""

    seconds: int
    basis: Basis


def road_distance_m(a: LatLon, b: LatLon, settings: EtaSettings) -> float:
    straight = haversine_m(a[0], a[1], b[0], b[1])
    factor = (
        settings.short_trip_road_factor
        if straight < settings.short_trip_m
        else settings.road_factor
    )
    return straight * factor


def estimate(
    position: LatLon,
    fix_time: datetime,
    recent_speed_mps: float | None,
    stops: list[LatLon],
    now: datetime,
    settings: EtaSettings = EtaSettings(),
) -> Eta:
    """Seconds until the last of `stops` (the pickup, if still ahead, then the dropoff)."""
    stale = (now - fix_time).total_seconds() > settings.stale_after_s
    if stale or recent_speed_mps is None:
        speed = settings.fallback_speed_mps
    else:
        speed = min(max(recent_speed_mps, settings.min_speed_mps), settings.max_speed_mps)
    distance = 0.0
    here = position
    for stop in stops:
        distance += road_distance_m(here, stop, settings)
        here = stop
    # The dwell at the dropoff is not part of getting there; the pickup's is.
    dwell = settings.dwell_s * (len(stops) - 1)
    seconds = min(distance / speed + dwell, settings.max_eta_s)
    return Eta(round(seconds), "stale_position" if stale else "live")
