"""Runs a simulated fleet against ingest: one coroutine per driver, spread over processes
so that the load generator is not the bottleneck."""

import asyncio
import contextlib
import multiprocessing
import queue
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.driver_app import DriverApp, PingDict
from bench.jobs_flow import Api, Courier, JobsConfig, JobsFlow
from bench.retry import RetryPolicy
from bench.routes import CITIES, Vehicle
from bench.stats import FleetStats
from bench.tokens import Tokens


@dataclass(frozen=True)
class FleetConfig:
    """A simulated fleet: its size, pace, duration, city, where it posts and whether it does
    deliveries."""

    drivers: int
    interval_s: float
    duration_s: float
    ingest_urls: list[str]
    private_key_path: Path
    city: str = "bengaluru"
    seed: int = 1
    processes: int = 1
    max_requests_per_s: float | None = None
    dead_zone_rate_per_s: float = 1 / 900
    dead_zone_s: tuple[float, float] = (20.0, 180.0)
    teleport_probability: float = 0.0
    driver_prefix: str = "sim"
    request_timeout_s: float = 10.0
    connections_per_process: int = 200
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    jobs: JobsConfig | None = None  # customers, a dispatcher and deliveries, through the api

    def driver_id(self, index: int) -> str:
        return f"{self.driver_prefix}-{index:06d}"


class RateLimiter:
    """A token bucket shared by one process's drivers (the fleet's --rate-limit)."""

    def __init__(self, per_s: float) -> None:
        self._per_s = per_s
        self._tokens = per_s
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self._per_s, self._tokens + (now - self._last) * self._per_s)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._per_s)


class Poster:
    """Posts one batch, retrying with the same ping_ids as a real app must."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: FleetConfig,
        stats: FleetStats,
        limiter: RateLimiter | None,
        rng: random.Random,
    ) -> None:
        self._session = session
        self._config = config
        self._stats = stats
        self._limiter = limiter
        self._rng = rng

    async def post(self, url: str, token: str, batch: list[PingDict]) -> None:
        stats = self._stats
        body = orjson.dumps({"pings": batch})
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        stats.pings_sent += len(batch)
        attempt = 0
        while True:
            if self._limiter is not None:
                await self._limiter.acquire()
            started = time.perf_counter()
            status: int | None = None
            retry_after: str | None = None
            answer: Any = None
            try:
                async with self._session.post(url, data=body, headers=headers) as response:
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    answer = orjson.loads(await response.read())
                stats.record_latency(time.perf_counter() - started)
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                pass
            stats.requests += 1
            stats.count_status(status if status is not None else "error")
            if status == 202:
                stats.accepted += int(answer["accepted"])
                stats.rejected += len(answer["rejected"])
                return
            if status == 422:
                stats.rejected += len(batch)
                return
            delay = self._config.retry.delay_s(
                attempt, status, retry_after, self._rng, datetime.now(UTC)
            )
            if delay is None:
                stats.failed_batches += 1
                stats.failed_pings += len(batch)
                return
            stats.retried += 1
            attempt += 1
            await asyncio.sleep(delay)


async def _drive(
    app: DriverApp,
    url: str,
    tokens: Tokens,
    poster: Poster,
    first_fix: float,
    end: float,
    flow: JobsFlow | None = None,
) -> None:
    """One driver: a fix every interval (caught up after long retries, with the right
    timestamps), posted whenever the app is online; with a jobs flow, its taps too."""
    interval = app.interval_s
    next_fix = first_fix
    while next_fix < end:
        await asyncio.sleep(max(0.0, next_fix - time.time()))
        while next_fix <= time.time() and next_fix < end:
            app.record_fix(datetime.fromtimestamp(next_fix, UTC))
            if flow is not None:
                flow.observe(app.driver_id, next_fix)
            next_fix += interval
        now = datetime.now(UTC)
        while batch := app.take_batch(now):
            await poster.post(url, tokens.get(app.driver_id), batch)
        if flow is not None:
            await flow.act(app.driver_id)
    # Coming back online at the end of the run: flush what the phone still holds.
    final = datetime.now(UTC) + timedelta(days=1)
    while batch := app.take_batch(final):
        await poster.post(url, tokens.get(app.driver_id), batch)


def build_driver(config: FleetConfig, index: int) -> DriverApp:
    rng = random.Random(config.seed * 1_000_003 + index)
    return DriverApp(
        driver_id=config.driver_id(index),
        vehicle=Vehicle(rng, CITIES[config.city]),
        rng=rng,
        interval_s=config.interval_s,
        dead_zone_rate_per_s=config.dead_zone_rate_per_s,
        dead_zone_s=config.dead_zone_s,
        teleport_probability=config.teleport_probability,
    )


async def run_slice_async(
    config: FleetConfig, slice_index: int, report: Callable[[FleetStats, bool], None]
) -> FleetStats:
    stats = FleetStats()
    indices = range(slice_index, config.drivers, config.processes)
    apps = [build_driver(config, i) for i in indices]
    tokens = Tokens(config.private_key_path)
    for app in apps:
        tokens.get(app.driver_id)  # signed up front: signing is not part of the load
    per_process = (
        config.max_requests_per_s / config.processes if config.max_requests_per_s else None
    )
    limiter = RateLimiter(per_process) if per_process else None
    start = time.time()
    end = start + config.duration_s
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=config.connections_per_process)
    rng = random.Random(config.seed + slice_index)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        poster = Poster(session, config, stats, limiter, rng)
        flow: JobsFlow | None = None
        if config.jobs is not None:
            flow = JobsFlow(
                config.jobs,
                [Courier(app, config.jobs.dwell_s) for app in apps],
                Api(session, config.jobs, tokens, rng),
                stats,
                rng,
                CITIES[config.city],
                f"{config.driver_prefix}-{slice_index}",
            )
        drivers = [
            _drive(
                app,
                config.ingest_urls[i % len(config.ingest_urls)] + "/v1/pings",
                tokens,
                poster,
                start + rng.uniform(0, config.interval_s),
                end,
                flow,
            )
            for i, app in zip(indices, apps, strict=True)
        ]
        if flow is not None:
            drivers.append(flow.run(end))

        async def progress() -> None:
            while True:
                await asyncio.sleep(1.0)
                stats.dropped_offline = sum(a.dropped for a in apps)
                report(stats, False)

        reporter = asyncio.create_task(progress())
        try:
            await asyncio.gather(*drivers)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    stats.dropped_offline = sum(a.dropped for a in apps)
    report(stats, True)
    return stats


def _slice_process(
    config: FleetConfig, slice_index: int, out: "multiprocessing.Queue[Any]"
) -> None:
    def report(stats: FleetStats, done: bool) -> None:
        out.put((slice_index, stats.snapshot(), done))

    asyncio.run(run_slice_async(config, slice_index, report))


def run_fleet(
    config: FleetConfig, on_progress: Callable[[FleetStats, float], None] | None = None
) -> FleetStats:
    """Runs the fleet in `config.processes` processes; returns the merged stats."""
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[Any] = ctx.Queue()
    workers = [
        ctx.Process(target=_slice_process, args=(config, i, out), daemon=True)
        for i in range(config.processes)
    ]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    latest: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    # Retries may outlast the run itself; beyond this the slices are stopped.
    deadline = started + config.duration_s + config.retry.cap_s * 2 + 60
    try:
        while len(done) < config.processes and time.monotonic() < deadline:
            try:
                index, snapshot, finished = out.get(timeout=0.5)
            except queue.Empty:
                if all(not w.is_alive() for w in workers) and out.empty():
                    break
                continue
            latest[index] = snapshot
            if finished:
                done.add(index)
            if on_progress is not None:
                on_progress(FleetStats.merged(list(latest.values())), time.monotonic() - started)
    finally:
        # Normal end: every slice reported done and exits. Otherwise (deadline, SIGTERM,
        # Ctrl-C) the slices are stopped rather than left to run on.
        for worker in workers:
            if len(done) < config.processes:
                worker.terminate()
            worker.join(timeout=5)
    stats = FleetStats.merged(list(latest.values()))
    # Reported, not raised: an overloaded ingest is a result to show, not a crash.
    stats.unfinished_slices = config.processes - len(done)
    return stats
