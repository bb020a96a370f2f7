"""The simulated world's deliveries (docs/api.md): customers order jobs through the
api, a dispatcher gives each to the nearest idle driver, the driver drives to the pickup
and on to the dropoff (bench/routes.py) and completes with a generated photo.

Customers watch their job meanwhile, as the app's tracking screen does; each ETA they read
is scored against the moment the driver truly reached the dropoff (the route truth), which
is how `telemetry bench jobs` measures the ETA's error."""

import asyncio
import io
import random
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import aiohttp
import orjson
from PIL import Image

from bench.driver_app import DriverApp
from bench.routes import City, LatLon
from bench.stats import FleetStats
from bench.tokens import Tokens
from runtime.geo import destination, haversine_m
from schemas.auth import Role


@dataclass(frozen=True)
class JobsConfig:
    """The simulated deliveries: how often customers order, and where the api is."""

    api_urls: list[str]
    # A new order per fleet process every so many seconds, on average, while a driver is
    # free to take it (customers of a busy fleet wait; the simulator does not queue them).
    every_s: float = 15.0
    customers: int = 50
    dropoff_m: tuple[float, float] = (1000.0, 5000.0)
    # Pickups anywhere in the city, or (a dense city; tests) this close to a free driver.
    pickup_near_m: float | None = None
    # Time spent at the pickup (loading) and at the dropoff (handing over) before the tap.
    dwell_s: tuple[float, float] = (30.0, 120.0)
    # How often a customer's tracking screen reads the job.
    poll_s: float = 20.0
    dispatcher_id: str = "dispatch-sim"
    attempts: int = 6  # a call answered 5xx/429 or not at all, retried with its key


class Phase(Enum):
    """Where a simulated driver is in a delivery."""

    IDLE = "idle"
    TO_PICKUP = "to_pickup"
    AT_PICKUP = "at_pickup"
    TO_DROPOFF = "to_dropoff"
    AT_DROPOFF = "at_dropoff"


class Action(Enum):
    """What a simulated delivery does next."""

    PICKUP = "pickup"
    COMPLETE = "complete"


@dataclass
class Order:
    """One simulated delivery: its job, customer, pickup, dropoff, and driver once assigned."""

    job_id: str
    customer_id: str
    pickup: LatLon
    dropoff: LatLon
    arrived_at: float | None = None  # route truth: when the driver reached the dropoff
    # What the customer read: (wall time, eta_seconds, eta_basis, job status).
    etas: list[tuple[float, int, str, str]] = field(default_factory=list)

    def scored(self) -> list[list[Any]]:
        """Per ETA read: [error_s (predicted arrival minus actual: negative when the
        driver came later than said),
        actual seconds to go, basis, status at the read]."""
        if self.arrived_at is None:
            return []
        return [
            [read_at + eta - self.arrived_at, self.arrived_at - read_at, basis, status]
            for read_at, eta, basis, status in self.etas
            if read_at <= self.arrived_at
        ]


@dataclass
class Courier:
    """A driver's side of the flow; time is wall-clock seconds, passed in."""

    app: DriverApp
    dwell_s: tuple[float, float]
    phase: Phase = Phase.IDLE
    order: Order | None = None
    wait_until: float = 0.0

    @property
    def idle(self) -> bool:
        return self.phase is Phase.IDLE

    def take(self, order: Order) -> None:
        self.order = order
        self.phase = Phase.TO_PICKUP
        self.app.job_id = order.job_id
        self.app.vehicle.drive_to(order.pickup)

    def observe(self, fix_time: float) -> None:
        """After each fix: has the vehicle reached where it was going?"""
        if not self.app.vehicle.arrived or self.order is None:
            return
        if self.phase is Phase.TO_PICKUP:
            self.phase = Phase.AT_PICKUP
        elif self.phase is Phase.TO_DROPOFF:
            self.phase = Phase.AT_DROPOFF
            self.order.arrived_at = fix_time
        else:
            return
        self.wait_until = fix_time + self.app.rng.uniform(*self.dwell_s)

    def due(self, now: float) -> Action | None:
        if now < self.wait_until:
            return None
        if self.phase is Phase.AT_PICKUP:
            return Action.PICKUP
        if self.phase is Phase.AT_DROPOFF:
            return Action.COMPLETE
        return None

    def picked_up(self) -> None:
        assert self.order is not None
        self.phase = Phase.TO_DROPOFF
        self.app.vehicle.drive_to(self.order.dropoff)

    def release(self) -> None:
        """Done (or the job went away): back to wandering the streets."""
        self.order = None
        self.phase = Phase.IDLE
        self.app.job_id = None
        self.app.vehicle.wander()


def proof_photo(rng: random.Random, size: tuple[int, int] = (640, 480)) -> bytes:
    """A JPEG of noise: decodes like a phone's photo, compresses like one (poorly)."""
    image = Image.effect_noise(size, 60.0).convert("RGB")
    # Tint per seed so that photos of different runs differ.
    image = Image.blend(
        image, Image.new("RGB", size, tuple(rng.randrange(256) for _ in "rgb")), 0.3
    )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


class Api:
    """The customers', dispatcher's and drivers' calls, retried as their apps do: a POST
    keeps its Idempotency-Key, so a retry never changes anything twice."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: JobsConfig,
        tokens: Tokens,
        rng: random.Random,
    ) -> None:
        self._session = session
        self._config = config
        self._tokens = tokens
        self._rng = rng

    async def call(
        self,
        method: str,
        path: str,
        sub: str,
        role: Role,
        *,
        body: dict[str, Any] | None = None,
        photo: bytes | None = None,
    ) -> tuple[int | None, Any]:
        """The answer's status and JSON body; status None when no answer came."""
        headers = {"Authorization": f"Bearer {self._tokens.get(sub, role)}"}
        if method == "POST":
            headers["Idempotency-Key"] = str(uuid.uuid4())
        status: int | None = None
        for attempt in range(self._config.attempts):
            data: Any = None
            if photo is not None:
                data = aiohttp.FormData()
                data.add_field("photo", photo, filename="proof.jpg", content_type="image/jpeg")
            elif body is not None:
                data = orjson.dumps(body)
                headers["Content-Type"] = "application/json"
            url = self._rng.choice(self._config.api_urls) + path
            try:
                async with self._session.request(method, url, data=data, headers=headers) as r:
                    status, raw = r.status, await r.read()
            except (aiohttp.ClientError, TimeoutError):
                status, raw = None, b""
            if status is not None and status < 500 and status != 429:
                try:
                    return status, orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    return status, None
            await asyncio.sleep(self._rng.uniform(0.0, min(8.0, 0.5 * 2**attempt)))
        return status, None


class JobsFlow:
    """One fleet process's customers and dispatcher, and its drivers' job steps."""

    def __init__(
        self,
        config: JobsConfig,
        couriers: list[Courier],
        api: Api,
        stats: FleetStats,
        rng: random.Random,
        city: City,
        prefix: str,
    ) -> None:
        self._config = config
        self._couriers = {c.app.driver_id: c for c in couriers}
        self._api = api
        self._stats = stats
        self._rng = rng
        self._city = city
        self._customers = [f"{prefix}-cust-{i:04d}" for i in range(config.customers)]
        self._photo = proof_photo(rng)
        self._watchers: set[asyncio.Task[None]] = set()

    async def run(self, end: float) -> None:
        """Customers order and the dispatcher assigns, until `end`."""
        try:
            while (now := time.time()) < end:
                pause = self._rng.expovariate(1.0 / self._config.every_s)
                await asyncio.sleep(min(pause, end - now))
                idle = [c for c in self._couriers.values() if c.idle]
                if idle and time.time() < end:
                    await self._order_and_assign(idle)
        finally:
            for watcher in self._watchers:
                watcher.cancel()

    def _near(self, origin: LatLon, low_m: float, high_m: float) -> LatLon:
        while True:
            distance = self._rng.uniform(low_m, high_m)
            point = destination(*origin, self._rng.uniform(0.0, 360.0), distance)
            if self._city.contains(point):
                return point

    async def _order_and_assign(self, idle: list[Courier]) -> None:
        customer = self._rng.choice(self._customers)
        near = self._config.pickup_near_m
        if near is None:
            pickup = self._city.random_point(self._rng)
        else:
            pickup = self._near(self._rng.choice(idle).app.vehicle.position(), 0.0, near)
        dropoff = self._near(pickup, *self._config.dropoff_m)
        body = {
            "pickup": {"lat": round(pickup[0], 6), "lon": round(pickup[1], 6)},
            "dropoff": {"lat": round(dropoff[0], 6), "lon": round(dropoff[1], 6)},
            "reference": f"sim order {self._stats.jobs_created + 1}",
        }
        status, job = await self._api.call("POST", "/v1/jobs", customer, Role.CUSTOMER, body=body)
        if status != 201:
            self._stats.job_failures += 1
            return
        self._stats.jobs_created += 1
        order = Order(job["job_id"], customer, pickup, dropoff)

        # The dispatcher's rule: the free driver nearest to the pickup.
        def distance(c: Courier) -> float:
            lat, lon = c.app.vehicle.position()
            return haversine_m(lat, lon, pickup[0], pickup[1])

        courier = min(idle, key=distance)
        status, _ = await self._api.call(
            "POST",
            f"/v1/jobs/{order.job_id}/assign",
            self._config.dispatcher_id,
            Role.DISPATCHER,
            body={"driver_id": courier.app.driver_id},
        )
        if status != 200:
            self._stats.job_failures += 1
            return
        self._stats.jobs_assigned += 1
        courier.take(order)
        watcher = asyncio.create_task(self._watch(order))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, order: Order) -> None:
        """The customer's tracking screen: reads the job until the driver is there."""
        while True:
            await asyncio.sleep(self._config.poll_s * self._rng.uniform(0.8, 1.2))
            if order.arrived_at is not None:
                return
            status, job = await self._api.call(
                "GET", f"/v1/jobs/{order.job_id}", order.customer_id, Role.CUSTOMER
            )
            if status == 200 and job.get("eta_seconds") is not None:
                order.etas.append(
                    (time.time(), job["eta_seconds"], job["eta_basis"], job["status"])
                )

    def observe(self, driver_id: str, fix_time: float) -> None:
        self._couriers[driver_id].observe(fix_time)

    async def act(self, driver_id: str) -> None:
        """The driver's taps, when the driver is due one."""
        courier = self._couriers[driver_id]
        action = courier.due(time.time())
        if action is None or courier.order is None:
            return
        path = f"/v1/jobs/{courier.order.job_id}/{action.value}"
        driver = courier.app.driver_id
        if action is Action.PICKUP:
            status, _ = await self._api.call("POST", path, driver, Role.DRIVER)
            if status == 200:
                self._stats.jobs_picked_up += 1
                courier.picked_up()
                return
        else:
            self._stats.eta_samples.extend(courier.order.scored())
            status, _ = await self._api.call("POST", path, driver, Role.DRIVER, photo=self._photo)
            if status == 202:
                self._stats.jobs_completed += 1
                courier.release()
                return
        # Refused (say, cancelled meanwhile) or never answered: the driver moves on.
        self._stats.job_failures += 1
        courier.release()
