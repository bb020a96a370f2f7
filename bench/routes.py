"""Road-like routes inside a city and a vehicle that follows them (pure, seeded)."""

import math
import random
from dataclasses import dataclass, field

from runtime.geo import bearing_deg, destination, haversine_m

LatLon = tuple[float, float]


@dataclass(frozen=True)
class City:
    """A simulated city: its name, its centre and how far its routes reach."""

    name: str
    south: float
    west: float
    north: float
    east: float
    # Street grids are rarely aligned with north: legs run along this angle or square to it.
    grid_angle_deg: float = 0.0

    def contains(self, point: LatLon) -> bool:
        return self.south <= point[0] <= self.north and self.west <= point[1] <= self.east

    def random_point(self, rng: random.Random) -> LatLon:
        return rng.uniform(self.south, self.north), rng.uniform(self.west, self.east)


CITIES = {
    "bengaluru": City("bengaluru", 12.86, 77.48, 13.08, 77.72, grid_angle_deg=12.0),
    "delhi-ncr": City("delhi-ncr", 28.40, 76.95, 28.75, 77.40, grid_angle_deg=-8.0),
}


def random_route(rng: random.Random, city: City, legs: int = 12) -> list[LatLon]:
    """A Manhattan-like path: legs of 150 m to 1.5 km along the city's grid axes."""
    points = [city.random_point(rng)]
    heading = city.grid_angle_deg + 90.0 * rng.randrange(4)
    while len(points) <= legs:
        # Mostly straight on or a right-angle turn, rarely a U-turn: like driving streets.
        heading += rng.choices([0.0, 90.0, -90.0, 180.0], weights=[4, 3, 3, 0.3])[0]
        length = rng.uniform(150.0, 1500.0)
        nxt = destination(*points[-1], heading % 360.0, length)
        if not city.contains(nxt):
            heading += 180.0  # bounce off the city's edge
            continue
        points.append(nxt)
    return points


def route_between(rng: random.Random, city: City, start: LatLon, end: LatLon) -> list[LatLon]:
    """A street-like path from `start` to `end`: a staircase of one to three steps along the
    city's grid axes, so that the distance driven is what a road factor says it is."""
    # Flat-Earth offsets are exact enough inside a city.
    north = (end[0] - start[0]) * 111_320.0
    east = (end[1] - start[1]) * 111_320.0 * math.cos(math.radians(start[0]))
    axis = math.radians(city.grid_angle_deg)
    along = north * math.cos(axis) + east * math.sin(axis)  # along the grid's first axis
    across = -north * math.sin(axis) + east * math.cos(axis)  # along its second
    steps = rng.randint(1, 3)
    first = city.grid_angle_deg if along >= 0 else city.grid_angle_deg + 180.0
    second = city.grid_angle_deg + (90.0 if across >= 0 else -90.0)
    legs = [(first, abs(along) / steps), (second, abs(across) / steps)]
    if rng.random() < 0.5:
        legs.reverse()
    points = [start]
    for _ in range(steps):
        for bearing, length in legs:
            if length > 1.0:
                points.append(destination(*points[-1], bearing % 360.0, length))
    points[-1] = end  # no drift: the path ends where it must
    return points


@dataclass(frozen=True)
class Fix:
    """Where the vehicle truly is (before GPS noise)."""

    lat: float
    lon: float
    speed_mps: float
    heading_deg: float


@dataclass
class Vehicle:
    """Drives a route at realistic urban speeds, stopping at some corners (traffic).
    Wandering, it takes a fresh random route where one ends; sent to a place
    (`drive_to`), it stops there and says it has `arrived`."""

    rng: random.Random
    city: City
    min_speed_mps: float = 4.0
    max_speed_mps: float = 16.0
    stop_probability: float = 0.3
    max_stop_s: float = 45.0
    route: list[LatLon] = field(default_factory=list)
    _leg: int = 0
    _along_m: float = 0.0
    _speed_mps: float = 0.0
    _stopped_s: float = 0.0
    target: LatLon | None = None

    def __post_init__(self) -> None:
        if not self.route:
            self.route = random_route(self.rng, self.city)
        self._speed_mps = self.rng.uniform(self.min_speed_mps, self.max_speed_mps)

    def _new_route(self) -> None:
        start = self.position()
        rest = random_route(self.rng, self.city)
        self.route = [start, *rest[1:]]
        self._leg = 0
        self._along_m = 0.0

    def drive_to(self, target: LatLon) -> None:
        self.route = route_between(self.rng, self.city, self.position(), target)
        self._leg = 0
        self._along_m = 0.0
        self.target = target

    def wander(self) -> None:
        self.target = None
        self._new_route()

    @property
    def arrived(self) -> bool:
        return self.target is not None and self._leg >= len(self.route) - 1

    def _current_leg(self) -> tuple[LatLon, LatLon]:
        if self._leg >= len(self.route) - 1:
            self._new_route()
        return self.route[self._leg], self.route[self._leg + 1]

    def position(self) -> LatLon:
        start, end = self.route[self._leg], self.route[min(self._leg + 1, len(self.route) - 1)]
        return destination(*start, bearing_deg(*start, *end), self._along_m)

    def advance(self, dt_s: float) -> Fix:
        remaining = dt_s
        while remaining > 1e-9:
            if self._stopped_s > 0:
                pause = min(self._stopped_s, remaining)
                self._stopped_s -= pause
                remaining -= pause
                continue
            if self.arrived:
                break
            start, end = self._current_leg()
            left_m = haversine_m(*start, *end) - self._along_m
            step_m = self._speed_mps * remaining
            if step_m < left_m:
                self._along_m += step_m
                break
            # Reached the corner: new leg, new cruising speed, perhaps a stop.
            remaining -= left_m / self._speed_mps
            self._leg += 1
            self._along_m = 0.0
            self._speed_mps = self.rng.uniform(self.min_speed_mps, self.max_speed_mps)
            if self.rng.random() < self.stop_probability:
                self._stopped_s = self.rng.uniform(5.0, self.max_stop_s)
        if self.arrived:
            lat, lon = self.route[-1]
            return Fix(lat, lon, 0.0, 0.0)  # standing: no heading to speak of
        start, end = self._current_leg()
        lat, lon = self.position()
        speed = 0.0 if self._stopped_s > 0 else self._speed_mps
        return Fix(lat, lon, speed, bearing_deg(*start, *end))
