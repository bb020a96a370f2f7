"""notifier: WebSocket push under load, on a notifier process of its own beside the running
stack (infra.services.variants), with the client load in separate processes
(bench/ws_load.py), beside the ceiling from the same run: a bare websockets server on the
same library and settings (bench/baselines/bare_ws.py).

1. Connections: `connections` (10,000) clients, `hot_jobs` (10) jobs with
   connections / hot_jobs subscribers each; the notifier's resident memory idle and with
   all of them subscribed (bytes per connection), the same for the bare server.
2. Fan-out: each hot job is completed through the real flow (the photo, the worker) in
   turn: `job.completed` latency from its commit to each subscriber; for the bare server,
   a broadcast from the moment it is asked for.
3. Positions: `pings_per_s` (3,750: 15,000 drivers every 4 s) produced to `pings.v1` as
   ingest writes them (ingest's own capacity is another issue's subject), `watched` of the
   drivers with a job and a subscriber each: fix time to position message.
4. Resume: a job with 300 more events than the client has; `resumes` reconnects with that
   `last_seq`, one after another: subscribe to the 300th event, from the Redis log, then
   with the log deleted (PostgreSQL, the floor).

Options (--set KEY=VALUE): connections, hot_jobs, load_processes (4), pings_per_s,
drivers (15000), watched (500), duration_s (60), resumes (200)."""

import asyncio
import contextlib
import random
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import matplotlib.pyplot as plt
import numpy as np
import orjson
import redis
from websockets.asyncio.client import connect

from bench.baselines import naive_endpoint
from bench.jobs_flow import proof_photo
from bench.report import latency_bars, save_figure
from bench.tokens import Tokens
from infra.config import REPO_ROOT
from infra.procs import ProcessRef, spawn, stop, wait_until
from infra.redis import url as redis_url
from infra.services import variants
from infra.stack import Stack
from runtime.kafka import durable_producer
from schemas import topics
from schemas.auth import Role
from schemas.pings import Ping, PingBatchRecord
from schemas.positions import PositionUpdate

PICKUP = {"lat": 12.9716, "lon": 77.5946}
DROPOFF = {"lat": 12.9352, "lon": 77.6245}


def rss_bytes(ref: ProcessRef) -> int:
    for line in Path(f"/proc/{ref.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {ref.pid}")


def cpu_seconds(ref: ProcessRef) -> float:
    fields = Path(f"/proc/{ref.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def percentiles(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"count": 0}
    a = np.array(samples)
    return {
        "count": len(samples),
        **{f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 90, 99)},
        "max": round(float(a.max()), 1),
    }


class Phases:
    """The notifier scenario's phases, appended as they are measured."""

    def __init__(self, stack: Stack, options: dict[str, Any]) -> None:
        self.stack = stack
        self.config = stack.config
        self.options = options
        self.tokens = Tokens(self.config.jwt_private_key)
        self.prefix = f"nt{uuid.uuid4().hex[:6]}"
        self.api = stack.urls("api")[0]
        self.dir = self.config.state_dir / "bench" / "notifier"
        self.dir.mkdir(parents=True, exist_ok=True)

    def opt(self, name: str, default: int) -> int:
        return int(self.options.get(name, default))

    def token(self, role: Role, sub: str) -> str:
        return self.tokens.get(f"{self.prefix}-{sub}", role)

    def headers(self, role: Role, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    def job(self, client: httpx.Client, owner: str, driver: str | None = None) -> str:
        r = client.post(
            f"{self.api}/v1/jobs",
            json={"pickup": PICKUP, "dropoff": DROPOFF},
            headers=self.headers(Role.CUSTOMER, owner),
        )
        r.raise_for_status()
        job_id = str(r.json()["job_id"])
        if driver is not None:
            self.assign(client, job_id, driver)
        return job_id

    def assign(self, client: httpx.Client, job_id: str, driver: str) -> int:
        r = client.post(
            f"{self.api}/v1/jobs/{job_id}/assign",
            json={"driver_id": f"{self.prefix}-{driver}"},
            headers=self.headers(Role.DISPATCHER, "dispatch"),
        )
        r.raise_for_status()
        return int(r.json()["seq"])

    @contextlib.contextmanager
    def load(self, name: str, plans: list[list[dict[str, str]]]) -> Iterator[list[Path]]:
        """Load processes, one per plan, each with its connections subscribed when this
        yields; their results (paths) are complete after the block."""
        outs: list[Path] = []
        refs: list[ProcessRef] = []
        try:
            for i, connections in enumerate(plans):
                plan = self.dir / f"{name}-{i}.plan.json"
                plan.write_bytes(orjson.dumps({"connections": connections}))
                out = self.dir / f"{name}-{i}.json"
                out.unlink(missing_ok=True)
                Path(str(out) + ".ready").unlink(missing_ok=True)
                refs.append(
                    spawn(
                        [sys.executable, "-m", "bench.ws_load", str(plan), str(out)],
                        log_path=self.config.logs_dir / f"bench-ws-load-{name}-{i}.log",
                        cwd=REPO_ROOT,
                    )
                )
                outs.append(out)
            ready = [Path(str(out) + ".ready") for out in outs]
            if not wait_until(lambda: all(r.exists() for r in ready), 600, 0.5):
                raise RuntimeError(f"the {name} clients did not all subscribe (see their logs)")
            yield outs
        finally:
            for ref in refs:
                stop(ref, sig=signal.SIGTERM, timeout_s=60)

    @staticmethod
    def results(outs: list[Path]) -> dict[str, Any]:
        samples: dict[str, list[float]] = {}
        closed: dict[str, int] = {}
        cpu, retries = 0.0, 0
        for out in outs:
            got = orjson.loads(out.read_bytes())
            for kind, values in got["samples_ms"].items():
                samples.setdefault(kind, []).extend(values)
            for code, count in got["closed"].items():
                closed[code] = closed.get(code, 0) + count
            cpu += got["cpu_s"]
            retries += got["retries"]
        return {
            "samples": samples, "closed": closed, "client_cpu_s": round(cpu, 1),
            "handshake_retries": retries,
        }  # fmt: skip

    # --- 1 and 2: connections and fan-out ---------------------------------------------
    def fan_out(self) -> dict[str, Any]:
        connections, hot = self.opt("connections", 10_000), self.opt("hot_jobs", 10)
        processes = self.opt("load_processes", 4)
        rng = random.Random(1)
        owners = [f"owner-{i}" for i in range(hot)]
        drivers = [f"courier-{i}" for i in range(hot)]
        with httpx.Client(timeout=60) as client:
            jobs = [self.job(client, owners[i], drivers[i]) for i in range(hot)]
            for i, job_id in enumerate(jobs):
                driver = self.headers(Role.DRIVER, drivers[i])
                client.post(
                    f"{self.api}/v1/jobs/{job_id}/pickup", headers=driver
                ).raise_for_status()

        def plans(url: str) -> list[list[dict[str, str]]]:
            specs = [
                {
                    "url": url,
                    "token": self.token(Role.CUSTOMER, owners[i % hot]),
                    "job_id": jobs[i % hot],
                }
                for i in range(connections)
            ]
            return [specs[i::processes] for i in range(processes)]

        result: dict[str, Any] = {"connections": connections, "hot_jobs": hot}
        with variants(self.config, "notifier", 1, {}, "notifier-bench") as [(spec, ref)]:
            time.sleep(2)
            idle = rss_bytes(ref)
            with self.load("fanout", plans(spec.endpoint["ws"])) as outs:
                loaded = rss_bytes(ref)
                with httpx.Client(timeout=60) as client:
                    for i, job_id in enumerate(jobs):
                        r = client.post(
                            f"{self.api}/v1/jobs/{job_id}/complete",
                            files={"photo": ("proof.jpg", proof_photo(rng), "image/jpeg")},
                            headers=self.headers(Role.DRIVER, drivers[i]),
                        )
                        r.raise_for_status()
                        time.sleep(3)  # the worker's processing, then the push to 1,000
            got = self.results(outs)
            result["notifier"] = {
                "rss_idle_mib": round(idle / 2**20, 1),
                "rss_loaded_mib": round(loaded / 2**20, 1),
                "bytes_per_connection": round((loaded - idle) / connections),
                "job_completed_ms": percentiles(got["samples"].get("job.completed", [])),
                "closed": got["closed"],
                "handshake_retries": got["handshake_retries"],
                "client_cpu_s": got["client_cpu_s"],
            }
        with naive_endpoint(self.stack, "bare_ws") as (url, ref):
            time.sleep(1)
            idle = rss_bytes(ref)
            ws_url = url.replace("http://", "ws://") + "/ws"
            with self.load("bare", plans(ws_url)) as outs:
                loaded = rss_bytes(ref)

                async def broadcast() -> None:
                    async with connect(ws_url, compression=None) as ws:
                        for job_id in jobs:
                            at = datetime.now(UTC).isoformat()
                            await ws.send(
                                orjson.dumps({"type": "broadcast", "job_id": job_id, "at": at})
                            )
                            await asyncio.sleep(1)

                asyncio.run(broadcast())
                time.sleep(2)
            got = self.results(outs)
            result["bare"] = {
                "rss_idle_mib": round(idle / 2**20, 1),
                "rss_loaded_mib": round(loaded / 2**20, 1),
                "bytes_per_connection": round((loaded - idle) / connections),
                "job_completed_ms": percentiles(got["samples"].get("job.completed", [])),
            }
        return result

    # --- 3: positions --------------------------------------------------------------------
    def positions(self) -> dict[str, Any]:
        rate, drivers = self.opt("pings_per_s", 3750), self.opt("drivers", 15_000)
        watched, duration = self.opt("watched", 500), self.opt("duration_s", 60)
        result: dict[str, Any] = {
            "pings_per_s": rate, "drivers": drivers, "watched": watched, "duration_s": duration
        }  # fmt: skip
        with variants(self.config, "notifier", 1, {}, "notifier-bench") as [(spec, ref)]:
            for name, topic in (
                ("through_stream", topics.PINGS),
                ("notifier_only", topics.POSITIONS),
            ):
                # A fleet of its own per phase: the stream may still be emitting the
                # positions of the first when the second starts.
                with httpx.Client(timeout=60) as client:
                    jobs = [
                        self.job(client, f"{name}-watcher-{i}", f"{name}-{i}")
                        for i in range(watched)
                    ]
                connections = [
                    {
                        "url": spec.endpoint["ws"],
                        "token": self.token(Role.CUSTOMER, f"{name}-watcher-{i}"),
                        "job_id": jobs[i],
                    }
                    for i in range(watched)
                ]
                with self.load(f"positions-{name}", [connections]) as outs:
                    cpu_before = cpu_seconds(ref)
                    produced = asyncio.run(self._produce(topic, name, rate, drivers, duration))
                    time.sleep(5)  # the last records through
                    cpu = cpu_seconds(ref) - cpu_before
                got = self.results(outs)
                samples = got["samples"].get("position", [])
                result[name] = {
                    "records_produced": produced,
                    # Each watched driver's fixes: how many of them reached its subscriber
                    # within 5 s of the end (the rest were still behind a lag).
                    "positions_expected": produced * watched // drivers,
                    "fix_to_position_ms": percentiles(samples),
                    "notifier_cpu_pct": round(100 * cpu / (duration + 5), 1),
                    "closed": got["closed"],
                }
        return result

    async def _produce(
        self, topic: str, fleet: str, rate: int, drivers: int, duration_s: int
    ) -> int:
        """A fix per record, every driver in turn, paced to `rate` per second, fix time =
        now: to `pings.v1` as ingest writes a single-ping request, or to `positions.v1` as
        the stream writes a moved position (the notifier's share alone)."""
        producer = durable_producer(self.config.kafka_bootstrap, client_id="bench-notifier")
        await producer.start()
        sent = 0
        rng = random.Random(2)
        spots = [(12.9 + rng.random() * 0.1, 77.55 + rng.random() * 0.1) for _ in range(drivers)]
        try:
            started = time.perf_counter()
            tick = 0.05
            per_tick = rate * tick
            owed = 0.0
            pending: list[Any] = []
            while time.perf_counter() - started < duration_s:
                owed += per_tick
                now = datetime.now(UTC)
                while owed >= 1:
                    i = sent % drivers
                    lat, lon = spots[i]
                    spots[i] = (lat + 0.0001, lon)  # a step a ping: the position moves
                    driver = f"{self.prefix}-{fleet}-{i}"
                    record: PingBatchRecord | PositionUpdate
                    if topic == topics.PINGS:
                        ping = Ping(ping_id=uuid.uuid4(), ts=now, lat=lat, lon=lon)
                        record = PingBatchRecord(driver_id=driver, received_at=now, pings=[ping])
                    else:
                        record = PositionUpdate(
                            driver_id=driver, ping_id=uuid.uuid4(), ts=now, lat=lat, lon=lon
                        )
                    value = record.model_dump_json().encode()
                    pending.append(await producer.send(topic, value=value, key=driver.encode()))
                    sent += 1
                    owed -= 1
                await asyncio.gather(*pending)
                pending.clear()
                await asyncio.sleep(max(0.0, started + (sent / rate) - time.perf_counter()))
        finally:
            await producer.stop()
        return sent

    # --- 4: resume ------------------------------------------------------------------------
    def resume(self) -> dict[str, Any]:
        resumes = self.opt("resumes", 200)
        with httpx.Client(timeout=60) as client:
            job_id = self.job(client, "resumer")
            newest = 1
            for _ in range(300):
                newest = self.assign(client, job_id, "resume-driver")
        url = self.stack.ws_urls()[0]
        token = self.token(Role.CUSTOMER, "resumer")
        key = f"notifier:log:{job_id}"
        with redis.Redis.from_url(redis_url(self.config)) as r:
            wait_until(lambda: r.xlen(key) >= newest, 60)

            async def timed() -> list[float]:
                times = []
                for _ in range(resumes):
                    async with connect(url, compression=None, max_size=None) as ws:
                        await ws.send(orjson.dumps({"type": "auth", "token": token}))
                        started = time.perf_counter()
                        await ws.send(
                            orjson.dumps(
                                {"type": "subscribe", "job_id": job_id, "last_seq": newest - 300}
                            )
                        )
                        async for raw in ws:
                            m = orjson.loads(raw)
                            if m.get("seq") == newest and m["type"] != "snapshot":
                                break
                        times.append((time.perf_counter() - started) * 1000)
                return times

            from_log = asyncio.run(timed())
            r.delete(key)
            from_postgres = asyncio.run(timed())
        return {
            "missed_events": 300,
            "resumes": resumes,
            "from_redis_ms": percentiles(from_log),
            "from_postgres_ms": percentiles(from_postgres),
        }


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    p = Phases(stack, options)
    return {
        "config": {"options": options},
        "fan_out": p.fan_out(),
        "positions": p.positions(),
        "resume": p.resume(),
    }


def plot(report: dict[str, Any], path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    fig.suptitle(f"notifier - {report['started_at']}")
    f = report["fan_out"]
    names = ["notifier", "bare"]
    left.bar(names, [f[n]["bytes_per_connection"] / 1024 for n in names])
    left.set_ylabel("KiB per subscribed connection")
    left.set_title(f"{f['connections']:,} connections")
    rows = {
        "job.completed (notifier)": f["notifier"]["job_completed_ms"],
        "broadcast (bare)": f["bare"]["job_completed_ms"],
        "fix -> position (stream)": report["positions"]["through_stream"]["fix_to_position_ms"],
        "fix -> position (notifier)": report["positions"]["notifier_only"]["fix_to_position_ms"],
        "resume 300 (Redis)": report["resume"]["from_redis_ms"],
        "resume 300 (PostgreSQL)": report["resume"]["from_postgres_ms"],
    }
    latency_bars(right, rows, "ms")
    return save_figure(fig, path)


def summary(report: dict[str, Any]) -> list[str]:
    f, pos, res = report["fan_out"], report["positions"], report["resume"]
    n, b = f["notifier"], f["bare"]

    def lat(p: dict[str, Any]) -> str:
        if not p.get("count"):
            return "no samples"
        return f"p50 {p['p50']} ms, p99 {p['p99']} ms, max {p['max']} ms ({p['count']:,} samples)"

    per = f["connections"] // f["hot_jobs"]
    return [
        f"{f['connections']:,} subscribed connections on one notifier process (clients in"
        f" separate processes): RSS {n['rss_idle_mib']} MiB idle, {n['rss_loaded_mib']} MiB"
        f" loaded, {n['bytes_per_connection']:,} bytes per connection; the bare websockets"
        f" server: {b['rss_loaded_mib']} MiB, {b['bytes_per_connection']:,} bytes per connection",
        f"job.completed to {per:,} subscribers of one job, {f['hot_jobs']} jobs, from the commit:"
        f" {lat(n['job_completed_ms'])}; closes {n['closed']}, handshakes tried again"
        f" {n['handshake_retries']}. The bare server's broadcast to"
        f" as many, from the request: {lat(b['job_completed_ms'])}",
        *(
            f"positions, {what}: {p['records_produced']:,} fixes at {pos['pings_per_s']:,}/s over"
            f" {pos['drivers']:,} drivers, {pos['watched']} of them followed: fix to position"
            f" message {lat(p['fix_to_position_ms'])}, {p['fix_to_position_ms']['count']:,} of"
            f" {p['positions_expected']:,} fixes of the followed drivers delivered by 5 s after"
            f" the load; notifier CPU {p['notifier_cpu_pct']} % of a core"
            for what, p in (
                ("through the stream (into pings.v1, one fix per record)", pos["through_stream"]),
                ("the notifier alone (into positions.v1)", pos["notifier_only"]),
            )
        ),
        f"resume of {res['missed_events']} missed events, {res['resumes']} times, subscribe to"
        f" the last event: from the Redis log {lat(res['from_redis_ms'])}; from PostgreSQL"
        f" (log deleted) {lat(res['from_postgres_ms'])}",
    ]
