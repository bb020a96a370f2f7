"""ingest_front: the alternatives for ingest's hot path side by side, in one run, each an
extra ingest process beside the stack's with one setting changed (issue 27): the limit
decided in the process or in Redis per request, the producer (aiokafka or confluent-kafka),
the body read by msgspec or by the pydantic models, the server (uvicorn or granian); the
bare parse-and-202 handler on each server as the ceiling; one ingest process or two
behind HAProxy; and the chosen variant open loop, step by step.

Closed-loop phases: wrk, one ping a request, `connections` connections (64), `duration_s`
(15) each, every variant `rounds` times (2) in turn, so that a drift of the machine shows
as a spread rather than as a difference. Open-loop phases: bench/loadgen, latency from
each request's due time. Options (--set KEY=VALUE): duration_s, connections, rounds,
steps (requests/s of the open-loop phases, default 1000,2000,3000,3750), step_s (15),
warmup_s (6)."""

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.baselines import naive_endpoint
from bench.harness import drain_stream, driver_tokens_file
from bench.loadgen_runner import ensure_built, run_loadgen
from bench.sampler import Sampler
from bench.wrk_runner import run_wrk
from infra import haproxy, install, services
from infra.config import REPO_ROOT
from infra.procs import ProcessRef, free_port, port_open, spawn, stop, wait_until
from infra.stack import Stack

# What each variant changes over the stack's ingest settings (the chosen ones).
VARIANTS: dict[str, dict[str, str]] = {
    "chosen: uvicorn, aiokafka, msgspec body, local limit": {},
    "limit in Redis per request": {"INGEST_RATE_LIMIT_MODE": "redis"},
    "pydantic body": {"INGEST_BODY_DECODER": "pydantic"},
    "confluent-kafka producer": {"INGEST_PRODUCER": "confluent"},
    "as before: pydantic body, limit in Redis": {
        "INGEST_RATE_LIMIT_MODE": "redis",
        "INGEST_BODY_DECODER": "pydantic",
    },
}
CHOSEN = next(iter(VARIANTS))
GRANIAN = [
    "--interface", "asgi", "--loop", "uvloop", "--http", "1", "--runtime-mode", "st",
    "--log-level", "warning", "--host", "127.0.0.1",
]  # fmt: skip


@contextlib.contextmanager
def _granian(stack: Stack, target: str, env: dict[str, str]) -> Iterator[tuple[str, ProcessRef]]:
    """`target` (an ASGI factory) under granian on a free port; its base URL and process."""
    port = free_port()
    ref = spawn(
        [sys.executable, "-m", "granian", *GRANIAN, "--port", str(port), "--factory", target],
        log_path=stack.config.logs_dir / f"bench-granian-{target.split(':')[0]}.log",
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        if not wait_until(lambda: port_open(port), 30):
            raise RuntimeError(f"granian did not start {target}")
        yield f"http://127.0.0.1:{port}", ref
    finally:
        stop(ref)


class _FrontRun:
    def __init__(self, stack: Stack, options: dict[str, Any]) -> None:
        self.stack = stack
        self.duration = int(options.get("duration_s", 15))
        self.connections = int(options.get("connections", 64))
        self.warmup = float(options.get("warmup_s", 6))
        workdir = stack.config.state_dir / "bench"
        workdir.mkdir(parents=True, exist_ok=True)
        # Closed loop: 2,000 drivers; open loop: one token per driver of the fleet.
        self.tokens = driver_tokens_file(stack, 2000, workdir / "front-tokens.txt")
        self.fleet_tokens = driver_tokens_file(stack, 16000, workdir / "front-fleet-tokens.txt")
        self.loadgen = ensure_built(stack.config.state_dir / "bin")
        self.phases: list[dict[str, Any]] = []

    def _shared(self) -> dict[str, ProcessRef]:
        """The tiers every variant leans on: Kafka, Redis, the stream (it consumes)."""
        keep = ("kafka", "redis", "streams-")
        return {n: r.ref for n, r in self.stack.records.items() if n.startswith(keep)}

    def measure(
        self, name: str, tiers: dict[str, ProcessRef], body: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        drain_s = drain_stream(self.stack)
        # The sampler counts each process with its descendants (granian's worker, say).
        processes = self._shared() | tiers
        sampler = Sampler(processes, self.stack.config.kafka_bootstrap, "", [], sample_lag=False)
        sampler.start()
        try:
            result = body()
        finally:
            sampler.stop()
        cpu = sampler.mean_cpu_pct()
        front = sum(cpu.get(name, 0.0) for name in tiers)
        rate = result.get("requests_per_s") or result.get("offered_requests_per_s") or 0.0
        phase = {
            "name": name, **result, "cpu_pct": cpu, "drain_before_s": drain_s,
            "front_ms_per_request": round(10 * front / rate, 3) if rate else None,
        }  # fmt: skip
        self.phases.append(phase)
        return phase

    def closed(self, name: str, url: str, tiers: dict[str, ProcessRef]) -> None:
        # Unmeasured first: a fresh process verifies each driver's token once, then
        # remembers it (as it would for a fleet that keeps posting).
        run_wrk(
            url + "/v1/pings", self.tokens, batch=1, duration_s=max(2, int(self.warmup)),
            connections=self.connections,
        )  # fmt: skip

        def body() -> dict[str, Any]:
            result = run_wrk(
                url + "/v1/pings", self.tokens, batch=1, duration_s=self.duration,
                connections=self.connections,
            )  # fmt: skip
            return result.summary(1)

        self.measure(name, tiers, body)

    def open(self, name: str, url: str, tiers: dict[str, ProcessRef], rate: int, s: float) -> None:
        def body() -> dict[str, Any]:
            return run_loadgen(
                self.loadgen, url + "/v1/pings", self.fleet_tokens, drivers=rate * 4,
                interval_s=4.0,
                duration_s=s, warmup_s=self.warmup,
            ).summary() | {"open_loop": True}  # fmt: skip

        self.measure(name, tiers, body)


def _ingest_tiers(stack: Stack) -> dict[str, ProcessRef]:
    return {n: r.ref for n, r in stack.records.items() if n.startswith("ingest-")}


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    install.ensure_debian_packages({"wrk": Path("/usr/bin/wrk")})
    bench = _FrontRun(stack, options)
    config = stack.config
    rounds = int(options.get("rounds", 2))
    for round_ in range(1, rounds + 1):
        for name, env in VARIANTS.items():
            with services.variants(config, "ingest", 1, env, "ingest-variant") as [(spec, ref)]:
                bench.closed(f"{name} (round {round_})", spec.url, {"ingest": ref})
    [base] = [s for s in services.specs(config) if s.module == "ingest"][:1]
    with _granian(stack, "bench.baselines.ingest_asgi:app", base.env) as (url, ref):
        bench.closed("granian: the chosen ingest", url, {"ingest": ref})
    with naive_endpoint(stack, "bare_handler") as (url, ref):
        bench.closed("bare handler on uvicorn (ceiling)", url, {"bare": ref})
    with _granian(stack, "bench.baselines.bare_handler:factory", {}) as (url, ref):
        bench.closed("bare handler on granian (ceiling)", url, {"bare": ref})
    # One ingest process or two, behind the stack's HAProxy.
    front = haproxy.url(config)
    tiers = _ingest_tiers(stack) | bench_haproxy(stack)
    bench.closed("HAProxy, 1 ingest process", front, tiers)
    bench.open("HAProxy, 1 ingest process, open loop 3750 req/s", front, tiers, 3750, 15)
    stack.scale("ingest", 2)
    try:
        tiers = _ingest_tiers(stack) | bench_haproxy(stack)
        bench.closed("HAProxy, 2 ingest processes", front, tiers)
        bench.open("HAProxy, 2 ingest processes, open loop 3750 req/s", front, tiers, 3750, 15)
    finally:
        stack.scale("ingest", 1)
    steps = [int(r) for r in str(options.get("steps", "1000,2000,3000,3750")).split(",")]
    ingest_1 = stack.records["ingest-1"]
    for rate in steps:
        bench.open(
            f"ingest-1 open loop {rate} req/s", ingest_1.endpoint["url"],
            {"ingest": ingest_1.ref}, rate, float(options.get("step_s", 15)),
        )  # fmt: skip
    return {
        "config": {
            "duration_s": bench.duration, "connections": bench.connections, "rounds": rounds,
            "warmup_s": bench.warmup, "cpus": os.cpu_count(),
        },
        "phases": bench.phases,
    }  # fmt: skip


def bench_haproxy(stack: Stack) -> dict[str, ProcessRef]:
    return {"haproxy": stack.records["haproxy"].ref}


def _line(p: dict[str, Any]) -> str:
    lat = p["latency_ms"]
    if p.get("open_loop"):
        head = (
            f"{p['name']}: {p['accepted_first_try_pct']:.2f} % accepted on the first try, "
            f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms from the due time"
        )
    else:
        head = (
            f"{p['name']}: {p['requests_per_s']:,.0f} req/s, p50 {lat['p50']:.1f} ms, "
            f"p99 {lat['p99']:.1f} ms, statuses {p['statuses']}"
        )
    per = p["front_ms_per_request"]
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in p["cpu_pct"].items() if v >= 3)
    return f"{head}; front CPU {per} ms/request; CPU: {cpu}"


def summary(report: dict[str, Any]) -> list[str]:
    config = report["config"]
    phases = report["phases"]
    lines = [
        f"{config['cpus']} cores, the whole stack on the machine; closed loop: wrk, "
        f"{config['connections']} connections, one ping a request, {config['duration_s']} s "
        f"a phase, {config['rounds']} rounds; open loop: bench/loadgen after "
        f"{config['warmup_s']:g} s of warm-up"
    ]
    lines += [_line(p) for p in phases]
    by_variant: dict[str, list[float]] = {}
    for p in phases:
        if " (round " in p["name"]:
            by_variant.setdefault(p["name"].split(" (round ")[0], []).append(p["requests_per_s"])
    bare = next(p for p in phases if p["name"].startswith("bare handler on uvicorn"))
    chosen = sum(by_variant[CHOSEN]) / len(by_variant[CHOSEN])
    for name, rates in by_variant.items():
        mean = sum(rates) / len(rates)
        lines.append(
            f"VARIANT {name}: mean {mean:,.0f} req/s ({', '.join(f'{r:,.0f}' for r in rates)}), "
            f"{mean / chosen:.2f}x the chosen, {mean / bare['requests_per_s']:.2f}x the bare "
            f"handler on uvicorn ({bare['requests_per_s']:,.0f})"
        )
    return lines
