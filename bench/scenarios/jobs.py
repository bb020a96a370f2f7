"""jobs: the customer half's two measurable promises, in one run on the running stack.

1. `complete` with a 5 MiB proof photo answers 202 fast while the photo worker processes
   the photos, beside the naive design (bench/baselines/naive_complete.py: the photo
   decoded, cleaned and thumbnailed inside the request): the same uploads at the same
   rates, on the same stack, one after the other.
2. The ETA's error: a simulated fleet does deliveries (bench/jobs_flow.py); every ETA a
   customer read is scored against the moment its driver truly reached the dropoff.

Uploads start at a fixed rate whatever the answers (open loop: latency counts from each
upload's planned start, so a slow server cannot hide its queue).

Options (--set KEY=VALUE): uploads (per design and rate, default 120), rates (uploads/s,
default 2,4), photo_mib (default 5), drivers (default 40), duration_s (the ETA phase, default 900),
interval_s (seconds between fixes, default 2)."""

import asyncio
import io
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import matplotlib.pyplot as plt
import numpy as np
import psycopg
from PIL import Image

from bench.baselines import naive_endpoint
from bench.fleet import FleetConfig
from bench.harness import drive_fleet
from bench.jobs_flow import JobsConfig
from bench.report import save_figure
from bench.tokens import Tokens
from infra import postgres
from infra.procs import wait_until
from infra.stack import Stack
from schemas.auth import Role

PICKUP = {"lat": 12.9716, "lon": 77.5946}
DROPOFF = {"lat": 12.9352, "lon": 77.6245}
OURS = "api: stored, task, 202 (the worker processes)"
NAIVE = "naive: processed inside the request"


def sized_photo(target_bytes: int) -> bytes:
    """A JPEG of noise close to `target_bytes` (a phone's photo compresses about as badly)."""
    rng = np.random.default_rng(7)
    side = 1024
    data = b""
    for _ in range(4):  # the size grows with the area: a few resizes get within a few %
        pixels = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=90)
        data = out.getvalue()
        side = int(side * (target_bytes / len(data)) ** 0.5)
    return data


class Users:
    """The tokens of the users a jobs run acts as."""

    def __init__(self, stack: Stack, prefix: str) -> None:
        self.tokens = Tokens(stack.config.jwt_private_key)
        self.prefix = prefix

    def headers(self, sub: str, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.get(sub, role)}"}


def picked_up_jobs(api_url: str, users: Users, count: int) -> list[tuple[str, str]]:
    """`count` jobs, each picked up by its own driver: (job_id, driver_id)."""
    jobs = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for i in range(count):
            customer, driver = f"{users.prefix}-cust-{i}", f"{users.prefix}-drv-{i}"
            r = client.post(
                "/v1/jobs",
                json={"pickup": PICKUP, "dropoff": DROPOFF},
                headers=users.headers(customer, Role.CUSTOMER),
            )
            r.raise_for_status()
            job_id = r.json()["job_id"]
            client.post(
                f"/v1/jobs/{job_id}/assign",
                json={"driver_id": driver},
                headers=users.headers(f"{users.prefix}-dispatch", Role.DISPATCHER),
            ).raise_for_status()
            client.post(
                f"/v1/jobs/{job_id}/pickup", headers=users.headers(driver, Role.DRIVER)
            ).raise_for_status()
            jobs.append((job_id, driver))
    return jobs


async def _upload_all(
    base_url: str, users: Users, jobs: list[tuple[str, str]], photo: bytes, rate: float
) -> tuple[list[float], dict[str, int], float]:
    """Each job's complete, started at `rate` per second whatever the answers (drivers do
    not wait for each other): latencies in ms from each upload's planned start, statuses,
    and the wall time."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def upload(session: aiohttp.ClientSession, job_id: str, driver: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        form = aiohttp.FormData()
        form.add_field("photo", photo, filename="proof.jpg", content_type="image/jpeg")
        try:
            async with session.post(
                f"{base_url}/v1/jobs/{job_id}/complete",
                data=form,
                headers=users.headers(driver, Role.DRIVER),
            ) as r:
                await r.read()
                status = str(r.status)
        except (aiohttp.ClientError, TimeoutError):
            status = "error"
        latencies.append((time.perf_counter() - at) * 1000.0)
        statuses[status] = statuses.get(status, 0) + 1

    for _, driver in jobs:
        users.headers(driver, Role.DRIVER)  # signed before the clock starts
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(
            *(
                upload(session, job_id, driver, started + 1.0 + i / rate)
                for i, (job_id, driver) in enumerate(jobs)
            )
        )
    return latencies, statuses, time.perf_counter() - started


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    points = {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    return {k: round(float(np.percentile(values, p)), 1) for k, p in points.items()}


def _finished(stack: Stack, job_ids: list[str]) -> int:
    with psycopg.connect(postgres.dsn(stack.config, "primary")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE job_id = ANY(%s::uuid[]) AND status = 'completed'",
            [job_ids],
        ).fetchone()
    return int(row[0]) if row else 0


def upload_phase(
    stack: Stack,
    name: str,
    url: str,
    users: Users,
    jobs: list[tuple[str, str]],
    photo: bytes,
    rate: float,
) -> dict[str, Any]:
    job_ids = [job for job, _ in jobs]
    started = time.monotonic()
    latencies, statuses, wall = asyncio.run(_upload_all(url, users, jobs, photo, rate))
    # The photos are processed when every job is completed (the worker's, or the request's).
    wait_until(lambda: _finished(stack, job_ids) == len(job_ids), 600, interval_s=0.5)
    processed_s = time.monotonic() - started
    return {
        "name": f"{name}, {rate:g}/s",
        "rate_per_s": rate,
        "uploads": len(jobs),
        "statuses": statuses,
        "latency_ms": percentiles(latencies),
        "uploads_wall_s": round(wall, 2),
        "completed": _finished(stack, job_ids),
        "all_processed_after_s": round(processed_s, 1),
        "completed_per_s": round(len(jobs) / processed_s, 2),
    }


def eta_phase(stack: Stack, options: dict[str, Any], prefix: str) -> dict[str, Any]:
    fleet = FleetConfig(
        drivers=int(options.get("drivers", 40)),
        interval_s=float(options.get("interval_s", 2.0)),
        duration_s=float(options.get("duration_s", 900.0)),
        ingest_urls=stack.urls("ingest"),
        private_key_path=stack.config.jwt_private_key,
        driver_prefix=prefix,
        seed=random.randrange(1 << 30),
        jobs=JobsConfig(
            stack.urls("api"),
            every_s=float(options.get("jobs_every_s", 5.0)),
            pickup_near_m=2500.0,
            dropoff_m=(1000.0, 4000.0),
            poll_s=15.0,
        ),
    )
    outcome = drive_fleet(stack, fleet)
    stats = outcome.stats
    return {
        "drivers": fleet.drivers,
        "duration_s": fleet.duration_s,
        "jobs": stats.summary()["jobs"],
        "eta": eta_errors(stats.eta_samples),
        "samples": stats.eta_samples,
    }


def eta_errors(samples: list[list[Any]]) -> dict[str, Any]:
    """Absolute and signed errors of the live ETAs, overall and by time still to go."""

    def describe(rows: list[list[Any]]) -> dict[str, Any]:
        if not rows:
            return {"n": 0}
        errors = [r[0] for r in rows]
        absolute = [abs(e) for e in errors]
        return {
            "n": len(rows),
            "median_abs_s": round(statistics.median(absolute), 1),
            "p90_abs_s": round(float(np.percentile(absolute, 90)), 1),
            "median_signed_s": round(statistics.median(errors), 1),
            "median_abs_pct": round(
                statistics.median(abs(r[0]) / max(r[1], 1.0) * 100 for r in rows), 1
            ),
        }

    live = [r for r in samples if r[2] == "live"]
    return {
        "all_live": describe(live),
        "stale_reads": len(samples) - len(live),
        "before_pickup": describe([r for r in live if r[3] == "assigned"]),
        "after_pickup": describe([r for r in live if r[3] == "picked_up"]),
        "under_5_min": describe([r for r in live if r[1] < 300]),
        "5_to_15_min": describe([r for r in live if 300 <= r[1] < 900]),
        "over_15_min": describe([r for r in live if r[1] >= 900]),
    }


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    uploads = int(options.get("uploads", 120))
    # `--set rates=` (none): the ETA run alone.
    rates = [float(r) for r in str(options.get("rates", "2,4")).split(",") if r]
    photo = sized_photo(int(float(options.get("photo_mib", 5)) * 1024 * 1024))
    prefix = f"jb{uuid.uuid4().hex[:6]}"
    api_url = stack.urls("api")[0]
    phases = []
    blobs = {"NAIVE_BLOB_DIR": str(stack.config.state_dir / "bench" / "naive-blobs")}
    with naive_endpoint(stack, "naive_complete", blobs) as (naive_url, _):
        for i, rate in enumerate(rates):
            for name, url in ((OURS, api_url), (NAIVE, naive_url)):
                users = Users(stack, f"{prefix}{i}{name[:2]}")
                jobs = picked_up_jobs(api_url, users, uploads)
                phases.append(upload_phase(stack, name, url, users, jobs, photo, rate))
    return {
        "config": {
            "photo_bytes": len(photo),
            "uploads": uploads,
            "rates_per_s": rates,
            "api_processes": len(stack.urls("api")),
            "photo_workers": sum(1 for n in stack.records if n.startswith("photo-worker-")),
        },
        "uploads": phases,
        "eta_run": eta_phase(stack, options, prefix + "e"),
    }


def plot(report: dict[str, Any], path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 6))
    fig.suptitle(f"jobs - {report['started_at']}")
    phases = report["uploads"]
    names = [p["name"] for p in phases]
    for offset, key in ((-0.2, "p50"), (0.2, "p99")):
        left.barh(
            [i + offset for i in range(len(phases))],
            [p["latency_ms"].get(key, 0.0) for p in phases],
            0.4,
            label=key,
        )
    left.set_yticks(range(len(phases)), names)
    left.set_xscale("log")
    left.set_xlabel("complete latency, ms (log scale)")
    left.set_title(f"complete with a {report['config']['photo_bytes'] / 2**20:.1f} MiB photo")
    left.legend()
    live = [r for r in report["eta_run"]["samples"] if r[2] == "live"]
    if live:
        right.scatter([r[1] / 60 for r in live], [r[0] / 60 for r in live], s=6, alpha=0.5)
    right.axhline(0, color="grey", linewidth=0.8)
    right.set_xlabel("true minutes to the dropoff at the read")
    right.set_ylabel("ETA error, minutes (predicted - actual)")
    right.set_title("ETA read by customers vs the route truth")
    return save_figure(fig, path)


def summary(report: dict[str, Any]) -> list[str]:
    config = report["config"]
    lines = []
    if report["uploads"]:
        lines.append(
            f"complete with a {config['photo_bytes'] / 2**20:.2f} MiB JPEG, {config['uploads']}"
            f" uploads per design and rate; {config['api_processes']} api process(es), "
            f"{config['photo_workers']} photo worker(s)"
        )
    for p in report["uploads"]:
        lat = p["latency_ms"]
        lines.append(
            f"{p['name']}: p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, "
            f"max {lat['max']} ms; statuses {p['statuses']}; all {p['completed']} jobs "
            f"completed {p['all_processed_after_s']} s after the first upload "
            f"({p['completed_per_s']} jobs/s)"
        )
    run = report["eta_run"]
    jobs = run["jobs"]
    lines.append(
        f"ETA: {run['drivers']} simulated drivers for {run['duration_s']:.0f} s; jobs created "
        f"{jobs['created']}, picked up {jobs['picked_up']}, completed {jobs['completed']}, "
        f"failed calls {jobs['failures']}"
    )
    for key, value in run["eta"].items():
        if isinstance(value, dict) and value.get("n"):
            lines.append(
                f"ETA {key.replace('_', ' ')}: {value['n']} reads, median absolute error "
                f"{value['median_abs_s']} s ({value['median_abs_pct']} % of the time to go), "
                f"p90 {value['p90_abs_s']} s, median signed {value['median_signed_s']} s"
            )
    lines.append(f"ETA reads on a stale position: {run['eta']['stale_reads']}")
    return lines
