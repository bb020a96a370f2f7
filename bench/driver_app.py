"""A simulated driver app: GPS fixes with noise, dead zones, and a bounded offline buffer
flushed as one batch when the network comes back (pure; time and randomness injected)."""

import math
import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bench.routes import Vehicle
from runtime.geo import destination
from schemas.pings import MAX_PINGS_PER_BATCH

PingDict = dict[str, Any]


@dataclass
class DriverApp:
    """One simulated driver app: drives its route, buffers fixes in dead zones, and posts them as a
    real app would."""

    driver_id: str
    vehicle: Vehicle
    rng: random.Random
    interval_s: float
    gps_noise_m: float = 4.0
    # Chance per second of driving into a dead zone (tunnel, basement, bad cell), and how long.
    dead_zone_rate_per_s: float = 1 / 900
    dead_zone_s: tuple[float, float] = (20.0, 180.0)
    # Phones cap what they keep offline; the oldest fixes are dropped beyond it.
    buffer_max: int = 5000
    # Only when a scenario asks for it: a fix that jumps kilometres away (broken GPS).
    teleport_probability: float = 0.0
    job_id: str | None = None
    outbox: deque[PingDict] = field(init=False)
    dropped: int = 0
    _offline_until: datetime | None = None

    def __post_init__(self) -> None:
        self.outbox = deque(maxlen=self.buffer_max)

    def online(self, now: datetime) -> bool:
        return self._offline_until is None or now >= self._offline_until

    def record_fix(self, ts: datetime) -> PingDict:
        """Advance the vehicle by one interval and queue the fix taken at `ts`."""
        fix = self.vehicle.advance(self.interval_s)
        lat, lon = self._noisy(fix.lat, fix.lon)
        if self.teleport_probability and self.rng.random() < self.teleport_probability:
            lat, lon = destination(lat, lon, self.rng.uniform(0, 360), self.rng.uniform(5e3, 20e3))
        ping: PingDict = {
            "ping_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "ts": ts.isoformat(),
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "accuracy_m": round(self.rng.uniform(3.0, 15.0), 1),
            "speed_mps": round(fix.speed_mps, 2),
            "heading_deg": round(fix.heading_deg, 1) % 360.0,
            "battery_pct": 80.0,
        }
        if self.job_id is not None:
            ping["job_id"] = self.job_id
        if len(self.outbox) == self.outbox.maxlen:
            self.dropped += 1
        self.outbox.append(ping)
        self._maybe_enter_dead_zone(ts)
        return ping

    def _noisy(self, lat: float, lon: float) -> tuple[float, float]:
        north = self.rng.gauss(0.0, self.gps_noise_m)
        east = self.rng.gauss(0.0, self.gps_noise_m)
        dlat = north / 111_320.0
        dlon = east / (111_320.0 * max(0.01, math.cos(math.radians(lat))))
        return lat + dlat, lon + dlon

    def _maybe_enter_dead_zone(self, now: datetime) -> None:
        if not self.online(now):
            return
        if self.rng.random() < self.dead_zone_rate_per_s * self.interval_s:
            self._offline_until = now + timedelta(seconds=self.rng.uniform(*self.dead_zone_s))

    def take_batch(self, now: datetime, max_pings: int = MAX_PINGS_PER_BATCH) -> list[PingDict]:
        """What to post now: nothing while offline, else the oldest buffered fixes."""
        if not self.online(now):
            return []
        count = min(max_pings, len(self.outbox))
        return [self.outbox.popleft() for _ in range(count)]
