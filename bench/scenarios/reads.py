"""reads: the read path at herd scale (docs/services.md, "Api: reads"), in one run on the
running stack, beside its baselines from the same run.

Two api processes of our read path are started beside the stack's (infra.services.
api_variants), and measured against: the same processes with the cache off, the naive
design (bench/baselines/naive_read.py: token, then the primary, every request) and a bare
handler returning a constant body (bench/baselines/bare_get.py). Throughput phases drive
one process with wrk (C, from Debian) as fast as it answers, and at a fixed 2,000 req/s.

1. Hits: one job's view, hot, read by a dispatcher; a share link's view (public).
2. Revalidation: the same reads with If-None-Match: database reads counted.
3. Hot-key herd: `herd` clients at once on one job right after its entry expired, over
   both processes: database reads for the key counted (the goal is one refresh).
4. Post-push herd: `push_jobs` jobs nobody has read (cold: the worst case), each read once
   within about a second over both processes: the database concurrency's peak against the
   cap, the answers (200, or 503 with Retry-After), p99.
5. Read-your-writes: `cycles` create-then-read cycles by one customer, written through one
   process and read through the other, with the replica's replay paused (stale reads
   counted), then running (where the reads went).

Options (--set KEY=VALUE): duration_s (each wrk phase, default 10), connections (default
64), herd (default 2000), push_jobs (default 10000), cycles (default 1000)."""

import asyncio
import contextlib
import dataclasses
import resource
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import matplotlib.pyplot as plt
import numpy as np
import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families

from api.config import ApiSettings
from api.reads.cache import Envelope
from bench.baselines import naive_endpoint
from bench.report import latency_bars, save_figure
from bench.tokens import Tokens
from bench.wrk_runner import WrkResult, run_wrk_gets
from infra import postgres
from infra.redis import url as redis_url
from infra.services import api_variants
from infra.stack import Stack
from schemas.auth import Role

PICKUP = {"lat": 12.9716, "lon": 77.5946}
DROPOFF = {"lat": 12.9352, "lon": 77.6245}


def metric(urls: list[str], name: str, **labels: str) -> float:
    """The sum over processes of `name`'s samples whose labels include `labels`."""
    found = 0.0
    for url in urls:
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    found += sample.value
    return found


def wrk_summary(result: WrkResult) -> dict[str, Any]:
    return {
        "requests_per_s": round(result.requests_per_s, 1),
        "requests": result.raw["requests"],
        "statuses": result.raw["statuses"],
        "errors": {k: result.raw[f"errors_{k}"] for k in ("connect", "read", "timeout")},
        "latency_ms": {k: result.latency_ms(k) for k in ("p50", "p90", "p99", "max")},
        "generator_cpu_cores": round(result.cpu_s / result.seconds, 2),
    }


class Phases:
    """The reads scenario's phases, appended as they are measured."""

    def __init__(self, stack: Stack, options: dict[str, Any]) -> None:
        self.stack = stack
        self.config = stack.config
        self.duration_s = int(options.get("duration_s", 10))
        self.connections = int(options.get("connections", 64))
        self.dir = self.config.state_dir / "bench" / "reads"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tokens = Tokens(self.config.jwt_private_key)
        self.prefix = f"rd{uuid.uuid4().hex[:6]}"
        self.api = f"http://127.0.0.1:{self.config.api_port}"

    def auth(self, role: Role, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.get(f'{self.prefix}-{sub}', role)}"}

    def token(self, role: Role, sub: str) -> str:
        return self.tokens.get(f"{self.prefix}-{sub}", role)

    def requests_file(self, name: str, lines: list[tuple[str, str, str]]) -> Path:
        path = self.dir / f"{name}.tsv"
        path.write_text("\n".join("\t".join(line) for line in lines) + "\n")
        return path

    def wrk(
        self, url: str, lines: list[tuple[str, str, str]], name: str, rate: float = 0.0
    ) -> dict[str, Any]:
        # Paced, each connection waits its turn after its answer (wrk is not open loop):
        # enough connections that the answers' time barely slows the offered rate.
        result = run_wrk_gets(
            url,
            self.requests_file(name, lines),
            duration_s=self.duration_s,
            connections=256 if rate else self.connections,
            rate_per_s=rate,
        )
        return wrk_summary(result)

    def new_job(self, base: str | None = None, headers: dict[str, str] | None = None) -> str:
        r = httpx.post(
            f"{base or self.api}/v1/jobs",
            json={"pickup": PICKUP, "dropoff": DROPOFF},
            headers=headers or self.auth(Role.DISPATCHER, "dispatch"),
            timeout=30,
        )
        r.raise_for_status()
        return str(r.json()["job_id"])


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    p = Phases(stack, options)
    job_id = p.new_job()
    path = f"/v1/jobs/{job_id}"
    reader = p.token(Role.DISPATCHER, "reader")  # reads only: no write of theirs to wait for
    share = httpx.post(
        f"{p.api}{path}/share", headers=p.auth(Role.DISPATCHER, "dispatch"), timeout=30
    ).json()
    report: dict[str, Any] = {"config": {}, "throughput": {}}
    throughput = report["throughput"]
    with naive_endpoint(stack, "bare_get") as (bare_url, _):
        throughput["bare handler"] = p.wrk(bare_url, [(path, "-", "-")], "bare")
    with naive_endpoint(stack, "naive_read") as (naive_url, _):
        throughput["naive (primary per request)"] = p.wrk(naive_url, [(path, reader, "-")], "naive")
    with api_variants(p.config, 2, {"API_CACHE_ENABLED": "false"}, "api-nocache") as urls:
        throughput["api, cache off"] = p.wrk(urls[0], [(path, reader, "-")], "off")
    with api_variants(p.config, 2, {}, "api-reads") as urls:
        httpx.get(urls[0] + path, headers={"Authorization": f"Bearer {reader}"}).raise_for_status()
        throughput["api, cache hits (job view)"] = p.wrk(urls[0], [(path, reader, "-")], "hit")
        throughput["api, cache hits (share view)"] = p.wrk(
            urls[0], [(share["url"], "-", "-")], "share"
        )
        throughput["api, cache hits at 2,000 req/s"] = p.wrk(
            urls[0], [(path, reader, "-")], "hit2000", rate=2000.0
        )
        report["herd"] = herd_phase(p, urls, job_id, reader, int(options.get("herd", 2000)))
        report["push"] = push_phase(p, urls, reader, int(options.get("push_jobs", 10_000)))
        report["config"]["db_max_concurrency"] = ApiSettings.model_fields[
            "db_max_concurrency"
        ].default
    # Entries fresh for a minute: any database read would be the revalidations' own.
    with api_variants(p.config, 1, {"API_JOB_VIEW_FRESH_S": "60"}, "api-revalidate") as urls:
        report["revalidation"] = revalidation(p, urls, path, reader)
    cycles = int(options.get("cycles", 1000))
    # One customer writing and reading as fast as the api answers: past a customer's rate
    # (api/principal_limit.py), which is not what this phase measures.
    ryw = {"API_REPLICA_MAX_LAG_S": "3600", "API_PRINCIPAL_RATE_PER_S": "1e6"}
    with api_variants(p.config, 2, ryw, "api-ryw") as urls:
        with postgres.replay_paused(p.config):
            report["ryw_paused"] = ryw_phase(p, urls, cycles)
        report["ryw_running"] = ryw_phase(p, urls, cycles)
    report["config"] |= {
        "api_processes": 2,
        "wrk_duration_s": p.duration_s,
        "wrk_connections": p.connections,
    }
    return report


def revalidation(p: Phases, urls: list[str], path: str, reader: str) -> dict[str, Any]:
    first = httpx.get(urls[0] + path, headers={"Authorization": f"Bearer {reader}"})
    etag = first.headers["ETag"]
    reads = metric(urls, "api_db_reads_total", view="job")
    result = p.wrk(urls[0], [(path, reader, etag)], "revalidate")
    return result | {"db_reads": metric(urls, "api_db_reads_total", view="job") - reads}


def cached(p: Phases, key: str) -> Envelope | None:
    with redis.Redis.from_url(redis_url(p.config)) as client:
        raw = client.hget(f"api:view:job:{key}", "env")
    return None if raw is None else Envelope.decode(raw)


def herd_phase(
    p: Phases, urls: list[str], job_id: str, reader: str, clients: int
) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, clients * 2 + 1024)), hard))
    path = f"/v1/jobs/{job_id}"
    headers = {"Authorization": f"Bearer {reader}"}
    env = cached(p, job_id)
    assert env is not None, "the job's view is not cached"
    with redis.Redis.from_url(redis_url(p.config)) as client:  # expired a moment ago
        expired = dataclasses.replace(env, fresh_until=time.time() - 0.1)
        client.hset(f"api:view:job:{job_id}", "env", expired.encode())
    reads = metric(urls, "api_db_reads_total", view="job")
    results = metric(urls, "api_cache_requests_total", view="job", result="stale")

    async def one(session: aiohttp.ClientSession, url: str, start: asyncio.Event) -> Any:
        await start.wait()
        began = time.perf_counter()
        try:
            async with session.get(url + path, headers=headers) as r:
                await r.read()
                return r.status, (time.perf_counter() - began) * 1000
        except (aiohttp.ClientError, TimeoutError):
            return "error", (time.perf_counter() - began) * 1000

    async def herd() -> list[Any]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            start = asyncio.Event()
            tasks = [
                asyncio.create_task(one(session, urls[i % len(urls)], start))
                for i in range(clients)
            ]
            await asyncio.sleep(0.5)  # every client's task is ready before the herd leaves
            start.set()
            return await asyncio.gather(*tasks)

    answers = asyncio.run(herd())
    deadline = time.monotonic() + 30  # the lease's holder refreshes in the background
    while time.monotonic() < deadline and not ((e := cached(p, job_id)) and e.fresh(time.time())):
        time.sleep(0.05)
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "clients": clients,
        "statuses": statuses,
        "latency_ms": percentiles([ms for _, ms in answers]),
        "db_reads": metric(urls, "api_db_reads_total", view="job") - reads,
        "served_stale": metric(urls, "api_cache_requests_total", view="job", result="stale")
        - results,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    points = {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    return {k: round(float(np.percentile(values, q)), 1) for k, q in points.items()}


def push_phase(p: Phases, urls: list[str], reader: str, jobs: int) -> dict[str, Any]:
    with psycopg.connect(postgres.dsn(p.config, "primary"), autocommit=True) as conn:
        rows = conn.execute(
            "INSERT INTO jobs (job_id, customer_id, created_by, status, pickup_lat, pickup_lon,"
            " dropoff_lat, dropoff_lon, seq)"
            " SELECT gen_random_uuid(), %s, %s, 'created', 12.97, 77.59, 12.93, 77.62, 1"
            " FROM generate_series(1, %s) RETURNING job_id",
            [f"{p.prefix}-push", f"{p.prefix}-push", jobs],
        ).fetchall()
    ids = [str(row[0]) for row in rows]
    # The replica has them before the herd leaves (a push follows its commit by far more).
    with psycopg.connect(postgres.dsn(p.config, "replica"), autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM jobs WHERE job_id = %s", [ids[-1]]).fetchone()
            if row == (1,):
                break
            time.sleep(0.05)
    saturated = metric(urls, "api_db_saturated_total")
    answers = asyncio.run(open_loop(urls, ids, {"Authorization": f"Bearer {reader}"}, 1.0))
    statuses: dict[str, int] = {}
    for status, _, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    refused = [a for a in answers if a[0] == 503]
    return {
        "jobs": jobs,
        "statuses": statuses,
        "retry_after_on_every_503": all(a[1] is not None for a in refused),
        "latency_ms": percentiles([ms for _, _, ms in answers]),
        "db_concurrency_peak": [metric([u], "api_db_reads_in_flight_peak") for u in urls],
        "refused_503": metric(urls, "api_db_saturated_total") - saturated,
    }


async def open_loop(
    urls: list[str], ids: list[str], headers: dict[str, str], spread_s: float
) -> list[tuple[Any, str | None, float]]:
    """Each job read once, the reads leaving at evenly spread times over `spread_s` (open
    loop: whatever the answers), over the processes in turn; (status, Retry-After,
    latency in ms from the planned start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, len(ids) * 2 + 1024)), hard))

    async def one(
        session: aiohttp.ClientSession, url: str, at: float
    ) -> tuple[Any, str | None, float]:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        status: Any = "error"
        retry = None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, headers=headers) as r:
                await r.read()
                status, retry = r.status, r.headers.get("Retry-After")
        return status, retry, (time.perf_counter() - at) * 1000

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter() + 0.5
        return await asyncio.gather(
            *(
                one(
                    session,
                    f"{urls[i % len(urls)]}/v1/jobs/{job}",
                    started + spread_s * i / len(ids),
                )
                for i, job in enumerate(ids)
            )
        )


def ryw_phase(p: Phases, urls: list[str], cycles: int) -> dict[str, Any]:
    customer = p.auth(Role.CUSTOMER, f"ryw-{uuid.uuid4().hex[:4]}")
    labels = [
        (target, reason)
        for target in ("replica", "primary")
        for reason in ("miss", "read_your_writes", "replica_lag", "replica_unavailable")
    ]

    def reads() -> dict[str, float]:
        found = {
            f"{t}/{r}": metric(urls, "api_db_reads_total", view="job", target=t, reason=r)
            for t, r in labels
        }
        return found | {
            "cache " + result: metric(urls, "api_cache_requests_total", view="job", result=result)
            for result in ("hit", "stale", "coalesced")
        }

    before = reads()
    stale = 0
    with httpx.Client(headers=customer, timeout=30) as client:
        for i in range(cycles):
            job_id = p.new_job(urls[i % 2], customer)
            r = client.get(f"{urls[(i + 1) % 2]}/v1/jobs/{job_id}")
            if r.status_code != 200 or r.json()["job_id"] != job_id:
                stale += 1
    after = reads()
    where = {k: after[k] - before[k] for k in after if after[k] - before[k]}
    db = sum(v for k, v in where.items() if "/" in k)
    replica = sum(v for k, v in where.items() if k.startswith("replica/"))
    return {
        "cycles": cycles,
        "stale_reads": stale,
        "reads_by": where,
        "replica_share_of_db_reads": round(replica / db, 3) if db else None,
        "replica_lag_s": metric(urls[:1], "api_replica_lag_seconds"),
    }


def plot(report: dict[str, Any], path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 6))
    fig.suptitle(f"reads - {report['started_at']}")
    names = list(report["throughput"])
    rates = [report["throughput"][n]["requests_per_s"] for n in names]
    left.barh(names, rates)
    left.set_xlabel("requests/s, one process")
    left.set_title("GET a job's view")
    latency_bars(right, {n: report["throughput"][n]["latency_ms"] for n in names}, "latency, ms")
    return save_figure(fig, path)


def summary(report: dict[str, Any]) -> list[str]:
    lines = [
        f"{report['config']['api_processes']} api processes beside the stack's; wrk"
        f" {report['config']['wrk_duration_s']} s per phase, {report['config']['wrk_connections']}"
        " connections, on one process"
    ]
    bare = report["throughput"]["bare handler"]["requests_per_s"]
    for name, t in report["throughput"].items():
        lat = t["latency_ms"]
        lines.append(
            f"{name}: {t['requests_per_s']:,.0f} req/s ({t['requests_per_s'] / bare:.2f} x bare),"
            f" p50 {lat['p50']} ms, p99 {lat['p99']} ms; statuses {t['statuses']}"
        )
    r = report["revalidation"]
    lines.append(
        f"revalidation (If-None-Match): {r['requests_per_s']:,.0f} req/s, statuses {r['statuses']},"
        f" database reads {r['db_reads']:.0f}"
    )
    h = report["herd"]
    lat = h["latency_ms"]
    lines.append(
        f"hot-key herd: {h['clients']} clients at once on an expired entry: statuses"
        f" {h['statuses']}, database reads {h['db_reads']:.0f}, served stale"
        f" {h['served_stale']:.0f}, p50 {lat['p50']} ms, p99 {lat['p99']} ms"
    )
    u = report["push"]
    lat = u["latency_ms"]
    lines.append(
        f"post-push herd: {u['jobs']} cold jobs, each read once, spread over one second: statuses"
        f" {u['statuses']} (Retry-After on every 503: {u['retry_after_on_every_503']}),"
        f" database concurrency peak {u['db_concurrency_peak']} (cap"
        f" {report['config']['db_max_concurrency']} per process), p50 {lat['p50']} ms,"
        f" p99 {lat['p99']} ms from the planned start"
    )
    for name in ("ryw_paused", "ryw_running"):
        w = report[name]
        lines.append(
            f"read-your-writes, replay {'paused' if name == 'ryw_paused' else 'running'}:"
            f" {w['cycles']} cycles, stale reads {w['stale_reads']}; reads by {w['reads_by']};"
            f" replica share of database reads {w['replica_share_of_db_reads']}"
        )
    return lines
