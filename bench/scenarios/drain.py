"""drain: the stream's own capacity, without a load generator in the way. A backlog of
pings is preloaded into `pings.v1` while the stream workers are frozen, then they are
let go and timed until their committed offsets reach the end; with 1 worker, then with 2,
each on a fresh backlog. Beside them, in the same run, the ceiling: a bare aiokafka
consumer decoding the same backlog and storing it by COPY, with no cleaning, aggregates or
positions.

The backlog is a fleet's: `drivers` drivers, each record one request of `batch` pings
along the driver's road, a second apart, dated in the last hour. Options (--set
KEY=VALUE): pings (per backlog, default 2000000), batch (pings per record, default 10),
drivers (default 15000), late_pct and dup_pct (records delayed past their driver's next
ones, and produced twice; default 0), timeout_s (per drain, default 1800), profile_s
(py-spy on a worker for that many seconds from the start of each drain; default 0)."""

import asyncio
import concurrent.futures
import contextlib
import os
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench import profile, sql_split
from bench.baselines.bare_consumer import drain_copy
from bench.baselines.bare_producer import produce_each
from bench.harness import STREAMS_GROUP, drain_stream, paused
from bench.sampler import Sampler
from infra import pgbouncer
from infra.procs import ProcessRef, wait_until
from infra.stack import Stack
from runtime.kafka_lag import PartitionLag, consumer_group_lag
from schemas import topics


def backlog(pings: int, batch: int, drivers: int) -> list[tuple[bytes, bytes]]:
    """`pings` pings as records of `batch`, in the JSON ingest writes (built without pydantic:
    two million model instances would take longer than the drain)."""
    now = datetime.now(UTC)
    received_at = now.isoformat()
    prefix = f"drain{uuid.uuid4().hex[:6]}"
    rng = random.Random()
    start = {d: (12.9 + rng.random() * 0.15, 77.5 + rng.random() * 0.2) for d in range(drivers)}
    steps = [0] * drivers
    records = []
    for i in range(pings // batch):
        d = i % drivers
        lat, lon = start[d]
        base = steps[d]
        steps[d] += batch
        first = now - timedelta(hours=1) + timedelta(seconds=base)
        driver = f"{prefix}-{d}"
        record = {
            "v": 1,
            "driver_id": driver,
            "received_at": received_at,
            "pings": [
                {
                    "ping_id": str(uuid.uuid4()),
                    "ts": (first + timedelta(seconds=j)).isoformat(),
                    "lat": lat,
                    "lon": lon + (base + j) * 0.0001,  # about 10 m a second, east
                    "accuracy_m": 5.0,
                    "speed_mps": 10.0,
                    "heading_deg": 90.0,
                    "battery_pct": None,
                    "job_id": None,
                }
                for j in range(batch)
            ],
        }
        records.append((driver.encode(), orjson.dumps(record)))
    return records


def disorder(
    records: list[tuple[bytes, bytes]], late_pct: float, dup_pct: float, drivers: int
) -> list[tuple[bytes, bytes]]:
    """The backlog with `late_pct` % of its records delayed and `dup_pct` % produced twice,
    each by up to three rounds of the fleet: a delayed record lands after its driver's next
    ones, so its pings are late (a retry after a 503, a phone's offline flush)."""
    rng = random.Random(7)
    keyed = []
    for i, record in enumerate(records):
        delayed = rng.random() * 100 < late_pct
        keyed.append((i + rng.randint(1, 3 * drivers) if delayed else i, record))
        if rng.random() * 100 < dup_pct:
            keyed.append((i + rng.randint(1, 3 * drivers), record))
    keyed.sort(key=lambda pair: pair[0])
    return [record for _, record in keyed]


def _lags(stack: Stack) -> list[PartitionLag]:
    return asyncio.run(
        consumer_group_lag(stack.config.kafka_bootstrap, STREAMS_GROUP, [topics.PINGS])
    )


def _streams(stack: Stack) -> list[ProcessRef]:
    return [r.ref for n, r in stack.records.items() if n.startswith("streams-") and r.ref.alive()]


def _drain(stack: Stack, workers: int, records: list[tuple[bytes, bytes]], pings: int,
           timeout_s: float, profile_s: int) -> dict[str, Any]:  # fmt: skip
    stack.scale("streams", workers)
    drain_stream(stack)  # from a caught-up stream
    with contextlib.ExitStack() as frozen:
        for ref in _streams(stack):
            frozen.enter_context(paused(ref))
        before = {p.partition: p.end_offset for p in _lags(stack)}
        produced = asyncio.run(produce_each(stack.config.kafka_bootstrap, topics.PINGS, records))
        after = {p.partition: p.end_offset for p in _lags(stack)}
        # The workers go on here; their session (10 s) outlives the preload when it is quick.
    processes = {n: r.ref for n, r in stack.records.items() if r.ref.alive()}
    sql_split.reset(stack.config)
    sampler = Sampler(
        processes, stack.config.kafka_bootstrap, STREAMS_GROUP, [topics.PINGS], sample_lag=False
    ).start()
    started = time.monotonic()
    profiling = concurrent.futures.ThreadPoolExecutor(1)
    profiled = None
    if profile_s:
        # Where a worker's own CPU goes while it drains (py-spy, from the start).
        raw = Path(tempfile.mkdtemp(prefix="drain-profile-")) / f"streams-{workers}.txt"
        worker = _streams(stack)[0].pid
        profiled = profiling.submit(profile.record, worker, profile_s, raw)
    try:
        drained = wait_until(
            lambda: sum(p.lag_messages for p in _lags(stack)) == 0, timeout_s, interval_s=0.5
        )
        if not drained:
            raise TimeoutError(f"{workers} worker(s) did not drain within {timeout_s:g} s")
    finally:
        sampler.stop()
        profiling.shutdown()
    seconds = time.monotonic() - started
    statements = sql_split.top(stack.config)
    # Each flush copies its batch into the staging table once.
    flushes = max((s.calls for s in statements if s.query.startswith("COPY pings_in")), default=0)
    cpu_pct = sampler.mean_cpu_pct()
    return {
        "name": f"stream, {workers} worker(s)",
        "workers": workers,
        "records": len(records),
        "pings": pings,
        "preload_s": round(produced.seconds, 1),
        "seconds": round(seconds, 1),
        "pings_per_s": round(pings / seconds, 1),
        "records_per_s": round(len(records) / seconds, 1),
        "cpu_pct": cpu_pct,
        "cpu_us_per_ping": _cpu_us_per_ping(cpu_pct, seconds, pings),
        "flushes": flushes,
        "statements": [s.as_report(flushes) for s in statements],
        "profile": profile.summarise(profiled.result()).as_dict() if profiled else None,
        "offsets": {"start": before, "end": after},  # by partition
    }


def _cpu_us_per_ping(cpu_pct: dict[str, float], seconds: float, pings: int) -> dict[str, float]:
    """CPU microseconds per ping stored, of PostgreSQL (every node: under Patroni the
    leader is whichever was elected, and the standby's replay is a cost of each write too)
    and of the workers."""
    workers = sum(v for k, v in cpu_pct.items() if k.startswith("streams-"))
    database = sum(v for k, v in cpu_pct.items() if k.startswith("postgres-"))
    return {
        name: round(pct / 100 * seconds * 1e6 / pings, 1)
        for name, pct in (("postgres", database), ("workers", workers))
    }


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    pings = int(options.get("pings", 2_000_000))
    batch = int(options.get("batch", 10))
    drivers = int(options.get("drivers", 15000))
    timeout_s = float(options.get("timeout_s", 1800))
    late_pct = float(options.get("late_pct", 0))
    dup_pct = float(options.get("dup_pct", 0))
    profile_s = int(options.get("profile_s", 0))
    workers_before = len(_streams(stack))
    phases = []
    try:
        for workers in (1, 2):
            records = disorder(backlog(pings, batch, drivers), late_pct, dup_pct, drivers)
            phases.append(_drain(stack, workers, records, pings, timeout_s, profile_s))
        phases[0].pop("offsets")
    finally:
        stack.scale("streams", max(workers_before, 1))
    # The ceiling over the last backlog, the same records.
    last = phases[-1].pop("offsets")
    dsn = pgbouncer.dsn(stack.config, read_only=False)
    started_cpu = Sampler(
        {n: r.ref for n, r in stack.records.items() if r.ref.alive()},
        stack.config.kafka_bootstrap, "", [], sample_lag=False,
    ).start()  # fmt: skip
    try:
        bare = asyncio.run(
            drain_copy(stack.config.kafka_bootstrap, topics.PINGS, dsn, last["start"], last["end"])
        )
    finally:
        started_cpu.stop()
    phases.append(
        {
            "name": "bare consumer + COPY (ceiling)",
            "records": bare.records,
            "pings": bare.pings,
            "seconds": round(bare.seconds, 1),
            "pings_per_s": round(bare.pings_per_s, 1),
            "records_per_s": round(bare.records / bare.seconds, 1) if bare.seconds else 0.0,
            "cpu_pct": started_cpu.mean_cpu_pct(),
        }
    )
    for phase in phases:
        phase["accepted_pings_per_s"] = phase["pings_per_s"]  # what plot_phases draws
    return {
        "config": {
            "pings": pings,
            "batch": batch,
            "drivers": drivers,
            "late_pct": late_pct,
            "dup_pct": dup_pct,
            "cpus": os.cpu_count(),
        },
        "phases": phases,
    }


def summary(report: dict[str, Any]) -> list[str]:
    config = report["config"]
    lines = [
        f"{config['cpus']} cores, whole stack on the same machine; a backlog of "
        f"{config['pings']:,} pings in records of {config['batch']} from {config['drivers']:,} "
        "drivers, preloaded while the workers were frozen, per phase"
        + (
            f"; {config['late_pct']:g} % of the records late, {config['dup_pct']:g} % twice"
            " (pings/s counts each ping once)"
            if config.get("late_pct") or config.get("dup_pct")
            else ""
        )
    ]
    for p in report["phases"]:
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in p["cpu_pct"].items() if v >= 5)
        lines.append(
            f"{p['name']}: {p['pings_per_s']:,.0f} pings/s ({p['records_per_s']:,.0f} "
            f"records/s), {p['pings']:,} pings in {p['seconds']} s; CPU: {cpu}"
        )
        if "cpu_us_per_ping" in p:
            per_ping = p["cpu_us_per_ping"]
            lines.append(
                f"  CPU per ping: PostgreSQL {per_ping['postgres']} us, workers "
                f"{per_ping['workers']} us; {p['flushes']:,} flushes; time by statement:"
            )
            if p.get("profile"):
                areas = ", ".join(f"{a} {v} %" for a, v in p["profile"]["area_pct"])
                top = "; ".join(f"{f} {v} %" for f, v in p["profile"]["self_pct"][:8])
                lines.append(f"  worker profile by area: {areas}")
                lines.append(f"  worker profile, top functions (self): {top}")
            lines += sql_split.lines(
                [sql_split.Statement(s["query"], s["calls"], s["total_ms"], s["rows"],
                                     s["top_level"]) for s in p["statements"]],
                p["flushes"],
            )  # fmt: skip
    by_name = {p["name"]: p for p in report["phases"]}
    one = by_name["stream, 1 worker(s)"]["records_per_s"]
    two = by_name["stream, 2 worker(s)"]["records_per_s"]
    bare = by_name["bare consumer + COPY (ceiling)"]["records_per_s"]
    # Over the same records (duplicates included, which the stream stores once).
    lines.append(
        f"GOAL stream drain with 2 workers >= 0.5 x bare consumer + COPY: {two:,.0f} vs "
        f"{bare:,.0f} records/s ({two / bare:.2f} x): {'met' if two >= 0.5 * bare else 'not met'}"
    )
    lines.append(
        f"GOAL 2 workers >= 1.6 x 1 worker: {two:,.0f} vs {one:,.0f} records/s "
        f"({two / one:.2f} x): {'met' if two >= 1.6 * one else 'not met'}"
    )
    return lines
