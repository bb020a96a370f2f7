"""ingest: how many pings/s one ingest process accepts, and at what latency, beside the
ceiling (a bare aiokafka producer sending the same records) and the floor (the naive design:
one INSERT per ping inside the request), all measured in the same run on the same stack.

Load comes from wrk (C) with a Lua script, so the generator is not the bottleneck; its CPU
is reported. Options (--set KEY=VALUE): duration_s (per phase, default 20), connections
(default 64), drivers (distinct tokens, default 20000), fleet_drivers (the latency phase's
fleet, default 15000: 3,750 pings/s)."""

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.baselines import naive_endpoint
from bench.baselines.bare_producer import produce
from bench.fleet import FleetConfig
from bench.harness import drain_stream, drive_fleet, driver_tokens_file
from bench.sampler import Sampler
from bench.wrk_runner import run_wrk
from infra import install
from infra.procs import ProcessRef
from infra.stack import Stack
from schemas import topics
from schemas.pings import Ping, PingBatchRecord


def _records(count: int, batch: int) -> list[tuple[bytes, bytes]]:
    """The records ingest would produce for `count` requests of `batch` pings."""
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        driver = f"bare-{i % 5000}"
        pings = [
            Ping(ping_id=uuid.uuid4(), ts=now, lat=12.9 + j * 1e-5, lon=77.6, speed_mps=5.0)
            for j in range(batch)
        ]
        record = PingBatchRecord(driver_id=driver, received_at=now, pings=pings)
        out.append((driver.encode(), record.model_dump_json().encode()))
    return out


@contextlib.contextmanager
def _paused(ref: ProcessRef) -> Iterator[None]:
    """Freezes a process (SIGSTOP) for the block: isolates ingest from the stream's CPU."""
    os.kill(ref.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(ref.pid, signal.SIGCONT)


def _measured(
    stack: Stack, name: str, extra: dict[str, ProcessRef], body: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    processes = {n: r.ref for n, r in stack.records.items() if r.ref.alive()} | extra
    sampler = Sampler(processes, stack.config.kafka_bootstrap, "", [], sample_lag=False).start()
    try:
        result = body()
    finally:
        sampler.stop()
    return {"name": name, **result, "cpu_pct": sampler.mean_cpu_pct()}


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    install.ensure_debian_packages({"wrk": Path("/usr/bin/wrk")})
    duration = int(options.get("duration_s", 20))
    connections = int(options.get("connections", 64))
    workdir = stack.config.state_dir / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = driver_tokens_file(stack, int(options.get("drivers", 20000)), workdir / "tokens.txt")
    ingest_url = stack.records["ingest-1"].endpoint["url"] + "/v1/pings"
    streams = [r.ref for n, r in stack.records.items() if n.startswith("streams-")]
    phases: list[dict[str, Any]] = []

    def wrk_phase(
        name: str,
        url: str,
        batch: int,
        rate: float = 0.0,
        conns: int = connections,
        extra: dict[str, ProcessRef] | None = None,
        drain: bool = True,
    ) -> None:
        # Start from a caught-up stream, so that its catching up does not take CPU from
        # this phase (not possible while the stream is paused on purpose).
        drain_s = drain_stream(stack) if drain else None

        def body() -> dict[str, Any]:
            result = run_wrk(
                url, tokens, batch=batch, duration_s=duration, connections=conns, rate_per_s=rate
            )
            return {"batch": batch, "offered_requests_per_s": rate or None, **result.summary(batch)}

        phases.append(_measured(stack, name, extra or {}, body) | {"drain_before_s": drain_s})

    # The ceiling: the same kind of records, straight into the broker.
    records = _records(2000, 100)

    def bare() -> dict[str, Any]:
        result = asyncio.run(produce(stack.config.kafka_bootstrap, topics.PINGS, records, duration))
        return {
            "batch": 100,
            "seconds": round(result.seconds, 2),
            "records_per_s": round(result.records_per_s, 1),
            "accepted_pings_per_s": round(result.records_per_s * 100, 1),
        }

    drain_s = drain_stream(stack)
    phases.append(_measured(stack, "bare producer (ceiling), 100/record", {}, bare))
    phases[-1]["drain_before_s"] = drain_s
    wrk_phase("ingest, 100/request, whole stack", ingest_url, 100)
    drain_stream(stack)
    with contextlib.ExitStack() as paused:
        for ref in streams:
            paused.enter_context(_paused(ref))
        wrk_phase("ingest, 100/request, streams paused", ingest_url, 100, drain=False)
        wrk_phase("ingest, 1/request, streams paused", ingest_url, 1, drain=False)
    wrk_phase("ingest, 1/request, whole stack", ingest_url, 1)
    # The latency goal's load, 15,000 drivers each posting a ping every 4 s, from the
    # fleet simulator: open loop per driver, so a slow answer does not slow the offered
    # rate (wrk's pacing delay does, and inflates latency with the connection count).
    fleet_drivers = int(options.get("fleet_drivers", 15000))

    def fleet() -> dict[str, Any]:
        config = FleetConfig(
            drivers=fleet_drivers,
            interval_s=4.0,
            duration_s=duration,
            ingest_urls=[stack.records["ingest-1"].endpoint["url"]],
            private_key_path=stack.config.jwt_private_key,
            driver_prefix=f"fleet{uuid.uuid4().hex[:6]}",
            processes=2,
            dead_zone_rate_per_s=0.0,  # steady load: no bursts in this phase
        )
        run = drive_fleet(stack, config)
        stats = run.stats.summary()
        seconds = run.wall_s
        return {
            "batch": 1,
            "offered_requests_per_s": fleet_drivers / 4.0,
            "seconds": round(seconds, 2),
            "requests_per_s": round(stats["requests"] / seconds, 1),
            "accepted_pings_per_s": round(stats["accepted"] / seconds, 1),
            "statuses": stats["status_counts"],
            "latency_ms": stats["latency_ms"],
            "generator_cpu_cores": run.as_report()["generator_cpu_cores"],
            "unfinished_slices": stats["unfinished_slices"],
        }

    drain_stream(stack)
    phases.append(
        _measured(stack, f"ingest, fleet of {fleet_drivers} drivers, 1 ping / 4 s each", {}, fleet)
    )
    with naive_endpoint(stack, "naive_ingest") as (naive_base, naive):
        naive_url = f"{naive_base}/v1/pings"
        extra = {"naive": naive}
        wrk_phase("naive insert-per-ping (floor), 100/request", naive_url, 100, extra=extra)
        wrk_phase("naive insert-per-ping (floor), 1/request", naive_url, 1, extra=extra)
    return {
        "config": {
            "duration_s": duration,
            "connections": connections,
            "fleet_drivers": fleet_drivers,
            "ingest_processes": sum(1 for n in stack.records if n.startswith("ingest-")),
            "cpus": os.cpu_count(),
        },
        "phases": phases,
    }


def summary(report: dict[str, Any]) -> list[str]:
    config = report["config"]
    lines = [
        f"{config['cpus']} cores, whole stack on the same machine; {config['duration_s']} s "
        f"per phase; wrk with {config['connections']} connections"
    ]
    for p in report["phases"]:
        line = f"{p['name']}: {p['accepted_pings_per_s']:,.0f} pings/s"
        if "requests_per_s" in p:
            lat = p["latency_ms"]
            line += (
                f", {p['requests_per_s']:,.0f} req/s, p50 {lat['p50']:.1f} ms, "
                f"p99 {lat['p99']:.1f} ms, statuses {p['statuses']}, "
                f"wrk CPU {p['generator_cpu_cores']} cores"
            )
        if p.get("unfinished_slices"):
            line += (
                f", {p['unfinished_slices']} fleet process(es) still retrying at the deadline"
                " (figures up to their last report)"
            )
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in p["cpu_pct"].items() if v >= 5)
        lines.append(f"{line}; CPU: {cpu}")
    return lines
