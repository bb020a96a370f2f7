"""smoke: a few seconds of a small fleet, end to end, then checks that what ingest accepted
is what the database stored. Small enough for CI; proves the harness works."""

import time
import uuid
from typing import Any

import psycopg

from bench.fleet import FleetConfig
from bench.harness import drive_fleet
from infra import postgres
from infra.stack import Stack


def stored_pings(stack: Stack, prefix: str) -> int:
    with psycopg.connect(postgres.dsn(stack.config, "primary")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pings WHERE driver_id LIKE %s", [f"{prefix}-%"]
        ).fetchone()
    return int(row[0]) if row else 0


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    prefix = f"smoke{uuid.uuid4().hex[:8]}"
    urls = stack.urls("ingest")
    fleet = FleetConfig(
        drivers=int(options.get("drivers", 20)),
        interval_s=float(options.get("interval_s", 0.5)),
        duration_s=float(options.get("duration_s", 5.0)),
        ingest_urls=urls,
        private_key_path=stack.config.jwt_private_key,
        driver_prefix=prefix,
        # Frequent dead zones so that the offline buffer and its flush are exercised.
        dead_zone_rate_per_s=0.05,
        dead_zone_s=(1.0, 3.0),
    )
    outcome = drive_fleet(stack, fleet)
    accepted = outcome.stats.accepted
    # The stream writes asynchronously: wait (bounded) until it has caught up.
    deadline = time.monotonic() + 60
    stored = stored_pings(stack, prefix)
    while stored < accepted and time.monotonic() < deadline:
        time.sleep(0.2)
        stored = stored_pings(stack, prefix)
    report = outcome.as_report()
    report.update(
        driver_prefix=prefix,
        stored_pings=stored,
        consistent=stored == accepted,
        config={
            "drivers": fleet.drivers,
            "interval_s": fleet.interval_s,
            "duration_s": fleet.duration_s,
        },
    )
    return report


def summary(report: dict[str, Any]) -> list[str]:
    fleet = report["fleet"]
    latency = fleet["latency_ms"]
    return [
        f"{report['config']['drivers']} drivers, a fix every {report['config']['interval_s']} s, "
        f"for {report['config']['duration_s']} s",
        f"accepted {fleet['accepted']} pings in {fleet['requests']} requests; "
        f"stored {report['stored_pings']} (consistent: {report['consistent']})",
        f"request latency p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms",
        f"load generator CPU: {report['generator_cpu_cores']} cores",
    ]
