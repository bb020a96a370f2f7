"""ingest: how many pings/s one ingest process accepts, and at what latency, beside the
ceilings (a bare aiokafka producer sending the same records; a bare HTTP handler that only
reads and parses the body) and the floor (the naive design: one INSERT per ping inside the
request), all measured in the same run on the same stack.

Throughput phases load with wrk (C) as fast as it goes. The seed's fleet (15,000
drivers, one ping each every 4 s) and the rate steps load with bench/loadgen (Go, open
loop, latency from each request's due time); the seed's fleet twice more through the edge,
each driver on a connection of its own to nginx as a phone is, with the CPU of every tier.
A profile phase samples ingest with py-spy under a fixed load.

Options (--set KEY=VALUE): duration_s (per wrk phase, default 20), connections (default
64), drivers (distinct tokens, default 20000), fleet_drivers (default 15000), fleet_s
(default 60), warmup_s (unmeasured seconds before each open-loop phase, default 8), steps
(request rates, default 250,500,750,1000,1250,1500), step_s (default 20), profile_rate
(requests/s while profiling, default 500), profile_s (default 15), edge_ingest (the ingest
processes behind the edge in its seed phases, default 1,2), edge_fleets (the fleets sent
through the edge, default fleet_drivers; empty: none), only (seed: the seed phases alone,
straight and through the edge; profile: the profile phase alone), via (where the open-loop
phases post: ingest-1, the default, or haproxy, the balancer in front of every ingest
process)."""

import asyncio
import concurrent.futures
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import profile
from bench.baselines import naive_endpoint
from bench.baselines.bare_producer import produce
from bench.harness import drain_stream, driver_tokens_file
from bench.harness import paused as frozen
from bench.loadgen_runner import LoadResult, ensure_built, run_loadgen
from bench.sampler import Sampler
from bench.wrk_runner import run_wrk
from infra import haproxy, install
from infra.procs import ProcessRef, StackError
from infra.stack import Stack
from schemas import topics
from schemas.pings import Ping, PingBatchRecord

DEFAULT_STEPS = "250,500,750,1000,1250,1500"


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


class _IngestRun:
    """One run's phases, appended in order; each measured with the CPU of every process."""

    def __init__(self, stack: Stack, options: dict[str, Any]) -> None:
        self.stack = stack
        self.options = options
        self.duration = int(options.get("duration_s", 20))
        self.connections = int(options.get("connections", 64))
        self.workdir = stack.config.state_dir / "bench"
        self.workdir.mkdir(parents=True, exist_ok=True)
        drivers = int(options.get("drivers", 20000))
        self.tokens = driver_tokens_file(stack, drivers, self.workdir / "tokens.txt")
        self.ingest_url = stack.records["ingest-1"].endpoint["url"] + "/v1/pings"
        self.phases: list[dict[str, Any]] = []
        self.loadgen = ensure_built(stack.config.state_dir / "bin")
        # `via=haproxy`: the open-loop phases go through the balancer, to every ingest process.
        self.via = str(options.get("via", "ingest-1"))
        self.fleet_url = (
            haproxy.url(stack.config) + "/v1/pings" if self.via == "haproxy" else self.ingest_url
        )
        self.warmup = float(options.get("warmup_s", 8))

    def wrk_phase(
        self,
        name: str,
        url: str,
        batch: int,
        extra: dict[str, ProcessRef] | None = None,
        drain: bool = True,
    ) -> None:
        # Start from a caught-up stream, so that its catching up does not take CPU from
        # this phase (not possible while the stream is paused on purpose).
        drain_s = drain_stream(self.stack) if drain else None

        def body() -> dict[str, Any]:
            result = run_wrk(
                url, self.tokens, batch=batch, duration_s=self.duration,
                connections=self.connections,
            )  # fmt: skip
            return {"batch": batch, "offered_requests_per_s": None, **result.summary(batch)}

        phase = _measured(self.stack, name, extra or {}, body)
        self.phases.append(phase | {"drain_before_s": drain_s})

    def bare_producer(self) -> None:
        """The ceiling: the same kind of records, straight into the broker."""
        records = _records(2000, 100)
        kafka = self.stack.config.kafka_bootstrap

        def bare() -> dict[str, Any]:
            result = asyncio.run(produce(kafka, topics.PINGS, records, self.duration))
            return {
                "batch": 100,
                "seconds": round(result.seconds, 2),
                "records_per_s": round(result.records_per_s, 1),
                "accepted_pings_per_s": round(result.records_per_s * 100, 1),
            }

        drain_s = drain_stream(self.stack)
        phase = _measured(self.stack, "bare producer (ceiling), 100/record", {}, bare)
        self.phases.append(phase | {"drain_before_s": drain_s})

    def open_loop(self, drivers: int, seconds: float) -> LoadResult:
        return run_loadgen(
            self.loadgen, self.fleet_url, self.tokens, drivers=drivers, interval_s=4.0,
            duration_s=seconds, warmup_s=self.warmup,
        )  # fmt: skip

    def fleet_phase(self, name: str, drivers: int, seconds: float) -> None:
        drain_s = drain_stream(self.stack)
        phase = _measured(self.stack, name, {}, lambda: self.open_loop(drivers, seconds).summary())
        self.phases.append(phase | {"drain_before_s": drain_s, "open_loop": True})

    def edge_fleet_phase(self, drivers: int, seconds: float, ingest_processes: int) -> None:
        """The seed's fleet as phones reach it: each driver on a kept-alive connection of its
        own to the edge (nginx), which passes the requests to HAProxy and the ingest
        processes over a few kept-alive connections of its own."""
        public = self.stack.public_url()
        if public is None:
            raise StackError("the edge is not running: start the stack with 'telemetry up'")
        # Every driver's first ping dials its connection, and each ingest process verifies
        # each driver's token once: all of it inside the unmeasured warm-up.
        warmup = max(self.warmup, 12.0)

        def body() -> dict[str, Any]:
            result = run_loadgen(
                self.loadgen, public + "/v1/pings", self.tokens, drivers=drivers,
                interval_s=4.0, duration_s=seconds, warmup_s=warmup, conn_per_driver=True,
            )  # fmt: skip
            return result.summary()

        drain_s = drain_stream(self.stack)
        name = (
            f"seed fleet through the edge: {drivers} drivers on their own connections, "
            f"{ingest_processes} ingest process(es)"
        )
        phase = _measured(self.stack, name, {}, body)
        self.phases.append(phase | {"drain_before_s": drain_s, "open_loop": True, "edge": True})

    def profile(self, rate: int, seconds: int) -> dict[str, Any]:
        """Where ingest's time goes, under a load it keeps up with."""
        raw = self.workdir / "ingest-profile.txt"
        with contextlib.ExitStack() as running:
            pool = running.enter_context(concurrent.futures.ThreadPoolExecutor(1))
            load = pool.submit(self.open_loop, rate * 4, seconds + 4)
            time.sleep(self.warmup + 2)  # the warm-up, then into the measured part
            profile.record(self.stack.records["ingest-1"].ref.pid, seconds, raw)
            profiled_load = load.result().summary()
        hotspots = profile.summarise(raw).as_dict()
        return hotspots | {"requests_per_s": rate, "seconds": seconds, "load": profiled_load}


def _closed_loop(stack: Stack, bench: _IngestRun) -> None:
    """The throughput phases (wrk) beside their ceilings."""
    streams = [r.ref for n, r in stack.records.items() if n.startswith("streams-")]
    bench.bare_producer()
    bench.wrk_phase("ingest, 100/request, whole stack", bench.ingest_url, 100)
    with naive_endpoint(stack, "bare_handler") as (bare_base, bare_handler):
        bench.wrk_phase(
            "bare handler (HTTP ceiling), 1/request",
            f"{bare_base}/v1/pings",
            1,
            extra={"bare-handler": bare_handler},
        )
    drain_stream(stack)
    with contextlib.ExitStack() as paused:
        for ref in streams:
            paused.enter_context(frozen(ref))
        bench.wrk_phase("ingest, 100/request, streams paused", bench.ingest_url, 100, drain=False)
        bench.wrk_phase("ingest, 1/request, streams paused", bench.ingest_url, 1, drain=False)
    bench.wrk_phase("ingest, 1/request, whole stack", bench.ingest_url, 1)


def _seed(stack: Stack, bench: _IngestRun, options: dict[str, Any], drivers: int) -> None:
    """The seed's load: every driver with its own token, a ping every 4 s at its own phase,
    open loop; straight to ingest, then through the edge as phones reach it. The unmeasured
    warm-up lets each ingest process verify each driver's token once (a driver app reuses
    its token; the check is then a cache hit)."""
    seconds = float(options.get("fleet_s", 60))
    bench.fleet_phase(
        f"seed fleet: {drivers} drivers, 1 ping / 4 s each, whole stack", drivers, seconds
    )
    fleets = [int(n) for n in str(options.get("edge_fleets", drivers)).split(",") if n]
    counts = [int(n) for n in str(options.get("edge_ingest", "1,2")).split(",")]
    for count in counts if fleets else []:
        stack.scale("ingest", count)
        try:
            for fleet in fleets:
                bench.edge_fleet_phase(fleet, seconds, count)
        finally:
            stack.scale("ingest", 1)


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    install.ensure_debian_packages({"wrk": Path("/usr/bin/wrk")})
    bench = _IngestRun(stack, options)
    only = options.get("only")
    fleet_drivers = int(options.get("fleet_drivers", 15000))
    if only is None:
        _closed_loop(stack, bench)
    if only in (None, "seed"):
        _seed(stack, bench, options, fleet_drivers)
    hotspots = None
    if only == "profile":
        hotspots = bench.profile(
            int(options.get("profile_rate", 500)), int(options.get("profile_s", 15))
        )
    if only is None:
        # The highest rate that meets the latency goal on this machine, step by step.
        for rate in [int(r) for r in str(options.get("steps", DEFAULT_STEPS)).split(",")]:
            bench.fleet_phase(
                f"open-loop step: {rate} req/s ({rate * 4} drivers), whole stack",
                rate * 4,
                float(options.get("step_s", 20)),
            )
        hotspots = bench.profile(
            int(options.get("profile_rate", 500)), int(options.get("profile_s", 15))
        )
        with naive_endpoint(stack, "naive_ingest") as (naive_base, naive):
            url, extra = f"{naive_base}/v1/pings", {"naive": naive}
            bench.wrk_phase("naive insert-per-ping (floor), 100/request", url, 100, extra=extra)
            bench.wrk_phase("naive insert-per-ping (floor), 1/request", url, 1, extra=extra)
    return {
        "profile": hotspots,
        "config": {
            "duration_s": bench.duration,
            "connections": bench.connections,
            "fleet_drivers": fleet_drivers,
            "warmup_s": bench.warmup,
            "open_loop_via": bench.via,
            "ingest_processes": sum(1 for n in stack.records if n.startswith("ingest-")),
            "cpus": os.cpu_count(),
        },
        "phases": bench.phases,
    }


def _ingest_ms_per_request(phase: dict[str, Any]) -> float | None:
    """Ingest's CPU per answered request: its processes' mean CPU over the request rate."""
    if not phase["name"].startswith(("ingest", "seed", "open-loop")):
        return None  # a baseline's phase: ingest idles
    cpu = sum(v for k, v in phase["cpu_pct"].items() if k.startswith("ingest-"))
    rate = phase.get("requests_per_s") or 0.0
    return 10 * cpu / rate if cpu and rate else None


def _phase_line(p: dict[str, Any]) -> str:
    line = f"{p['name']}: {p['accepted_pings_per_s']:,.0f} pings/s"
    if p.get("open_loop"):
        lat = p["latency_ms"]
        line += (
            f" of {p['offered_requests_per_s']:,.0f} offered, "
            f"{p['accepted_first_try_pct']:.2f} % accepted on the first try, latency from the "
            f"due time p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, p99.9 "
            f"{lat['p99.9']:.1f} ms, statuses {p['statuses']}, errors {p['errors'] or 'none'}, "
            f"loadgen CPU {p['generator_cpu_cores']} cores"
        )
    elif "requests_per_s" in p:
        lat = p["latency_ms"]
        line += (
            f", {p['requests_per_s']:,.0f} req/s, p50 {lat['p50']:.1f} ms, "
            f"p99 {lat['p99']:.1f} ms, statuses {p['statuses']}, "
            f"wrk CPU {p['generator_cpu_cores']} cores"
        )
    per_request = _ingest_ms_per_request(p)
    if per_request is not None:
        line += f"; ingest CPU {per_request:.2f} ms/request"
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in p["cpu_pct"].items() if v >= 5)
    return f"{line}; CPU: {cpu}"


# The tiers of the capacity table, by component name (a prefix takes every process of it;
# PostgreSQL's is every node's, the standby's replay included, in either layout).
TIERS = (
    ("nginx (edge)", "edge"), ("HAProxy", "haproxy"), ("ingest", "ingest-"), ("Kafka", "kafka"),
    ("Redis", "redis"), ("stream workers", "streams-"), ("PostgreSQL", "postgres-"),
    ("PgBouncer", "pgbouncer"),
)  # fmt: skip


def capacity(phase: dict[str, Any]) -> dict[str, float]:
    """Each tier's cores per 1,000 accepted pings/s in an open-loop phase, the generator's
    included (its own measure of its CPU)."""
    per_k = phase["accepted_pings_per_s"] / 1000
    if not per_k:
        return {}
    cpu = phase["cpu_pct"]
    out = {
        tier: sum(v for k, v in cpu.items() if k == prefix or k.startswith(prefix)) / 100 / per_k
        for tier, prefix in TIERS
    }
    out["load generator"] = phase["generator_cpu_cores"] / per_k
    return {k: round(v, 3) for k, v in out.items()}


def _goals(phases: dict[str, dict[str, Any]]) -> list[str]:
    def find(prefix: str) -> dict[str, Any] | None:
        return next((p for name, p in phases.items() if name.startswith(prefix)), None)

    def meets(p: dict[str, Any], first_try: float = 99.9, p99_ms: float = 50.0) -> bool:
        return bool(p["accepted_first_try_pct"] >= first_try and p["latency_ms"]["p99"] < p99_ms)

    lines = []
    seed = find("seed fleet: ")
    if seed:
        lines.append(
            f"GOAL seed fleet direct (>= 99.9 % first try, p99 < 50 ms): "
            f"{seed['accepted_first_try_pct']:.2f} %, p99 {seed['latency_ms']['p99']:.1f} ms: "
            f"{'met' if meets(seed) else 'not met'}"
        )
    for name, p in phases.items():
        if p.get("edge"):
            per_request = _ingest_ms_per_request(p)
            lines.append(
                f"GOAL {name} (>= 99 % first try, p99 < 1 s): "
                f"{p['accepted_first_try_pct']:.2f} %, p99 {p['latency_ms']['p99']:.1f} ms: "
                f"{'met' if meets(p, 99.0, 1000.0) else 'not met'}; ingest CPU "
                + (f"{per_request:.3f} ms/ping" if per_request else "unmeasured")
            )
            lines.append(
                f"CAPACITY {name}, cores per 1,000 pings/s: "
                + ", ".join(f"{tier} {cores}" for tier, cores in capacity(p).items())
            )
    steps = [p for name, p in phases.items() if name.startswith("open-loop step")]
    if steps:
        held = [p["offered_requests_per_s"] for p in steps if meets(p)]
        lines.append(
            "GOAL highest open-loop step that holds both: "
            + (f"{max(held):,.0f} req/s" if held else "none of the steps")
        )
    bare, single_paused = find("bare handler"), find("ingest, 1/request, streams paused")
    single_whole = find("ingest, 1/request, whole stack")
    if bare and single_paused and single_whole:
        bare_http = bare["requests_per_s"]
        lines.append(
            f"GOAL single-ping ingest >= 0.5 x bare handler: "
            f"{single_paused['requests_per_s']:,.0f} req/s streams paused "
            f"({single_paused['requests_per_s'] / bare_http:.2f} x), "
            f"{single_whole['requests_per_s']:,.0f} whole stack "
            f"({single_whole['requests_per_s'] / bare_http:.2f} x) vs {bare_http:,.0f}"
        )
    bare_kafka, batched = find("bare producer"), find("ingest, 100/request, whole stack")
    if bare_kafka and batched:
        ours, ceiling = batched["accepted_pings_per_s"], bare_kafka["accepted_pings_per_s"]
        lines.append(
            f"GOAL batched ingest, whole stack >= 0.5 x bare producer: {ours:,.0f} vs "
            f"{ceiling:,.0f} pings/s ({ours / ceiling:.2f} x)"
        )
    return lines


def summary(report: dict[str, Any]) -> list[str]:
    config = report["config"]
    lines = [
        f"{config['cpus']} cores, whole stack on the same machine; {config['duration_s']} s "
        f"per wrk phase with {config['connections']} connections; open-loop phases "
        f"(bench/loadgen) after {config['warmup_s']:g} unmeasured seconds, to "
        f"{config['open_loop_via']} ({config['ingest_processes']} ingest process(es) running)"
    ]
    lines += [_phase_line(p) for p in report["phases"]]
    lines += _goals({p["name"]: p for p in report["phases"]})
    prof = report["profile"]
    if prof is None:
        return lines
    load = prof["load"]
    lines.append(
        f"PROFILE of ingest-1 (py-spy, {prof['samples']} samples over {prof['seconds']} s at "
        f"{prof['requests_per_s']} req/s; {load['accepted_first_try_pct']:.2f} % accepted, "
        f"p99 {load['latency_ms']['p99']:.1f} ms), by area of the leaf frame: "
        + ", ".join(f"{area} {pct} %" for area, pct in prof["area_pct"])
    )
    lines.append(
        "PROFILE top functions by own samples: "
        + "; ".join(f"{name} {pct} %" for name, pct in prof["self_pct"][:12])
    )
    return lines
