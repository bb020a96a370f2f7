"""pipeline: offered load (pings posted through ingest) stepped up until the stream's lag
stops being bounded. Per step: achieved rate, consumer lag, ping-to-queryable latency (posted
until it is the driver's position), CPU per component. Beside it, in the same run, the
ceiling: a bare aiokafka consumer doing COPY into a copy of the same table.

Options (--set KEY=VALUE): steps (pings/s, comma-separated, default
1000,2000,4000,8000,12000,16000), step_s (default 30), batch (pings per request, default
10), ceiling_s (default 30)."""

import asyncio
import os
from pathlib import Path
from typing import Any

from bench.baselines.bare_consumer import consume_copy
from bench.harness import STREAMS_GROUP, drain_stream, driver_tokens_file
from bench.probe import LatencyProbe
from bench.sampler import Sampler
from bench.wrk_runner import run_wrk
from infra import install, postgres
from infra.procs import ProcessRef
from infra.stack import Stack
from schemas import topics

MAX_LAG_S = 2.0


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    install.ensure_debian_packages({"wrk": Path("/usr/bin/wrk")})
    steps = [
        int(x) for x in str(options.get("steps", "1000,2000,4000,8000,12000,16000")).split(",")
    ]
    step_s = int(options.get("step_s", 30))
    batch = int(options.get("batch", 10))
    # "trace" (realistic: a flush along a road) or "burst" (same second, random places).
    shape = str(options.get("shape", "trace"))
    config = stack.config
    workdir = config.state_dir / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = driver_tokens_file(stack, 20000, workdir / "tokens.txt")
    ingest = stack.records["ingest-1"].endpoint["url"] + "/v1/pings"
    primary = postgres.dsn(config, "primary")
    processes = {n: r.ref for n, r in stack.records.items() if r.ref.alive()}
    results: list[dict[str, Any]] = []
    for rate in steps:
        step = _step(stack, processes, tokens, ingest, primary, rate, batch, step_s, shape)
        results.append(step)
        if not step["sustained"]:
            break
    drain_stream(stack, timeout_s=600)
    ceiling = asyncio.run(
        consume_copy(
            config.kafka_bootstrap, topics.PINGS, primary, float(options.get("ceiling_s", 30))
        )
    )
    sustained = [s["accepted_pings_per_s"] for s in results if s["sustained"]]
    workers = sum(1 for n in stack.records if n.startswith("streams-"))
    phases = [
        {
            "name": f"{s['offered_pings_per_s']} pings/s offered",
            "accepted_pings_per_s": s["accepted_pings_per_s"],
            "latency_ms": s["ping_to_queryable_ms"],
            "cpu_pct": s["cpu_pct"],
        }
        for s in results
    ]
    phases.append(
        {"name": "bare consumer + COPY (ceiling)", "accepted_pings_per_s": ceiling.pings_per_s}
    )
    return {
        "config": {
            "step_s": step_s,
            "batch": batch,
            "shape": shape,
            "cpus": os.cpu_count(),
            "workers": workers,
        },
        "steps": results,
        "highest_sustained_pings_per_s": max(sustained) if sustained else 0.0,
        "ceiling": {
            "records": ceiling.records,
            "pings": ceiling.pings,
            "seconds": round(ceiling.seconds, 1),
            "pings_per_s": round(ceiling.pings_per_s, 1),
        },
        "phases": phases,  # for the plot
    }


def summary(report: dict[str, Any]) -> list[str]:
    config = report["config"]
    lines = [
        f"{config['cpus']} cores, whole stack on the machine, {config['workers']} stream "
        f"worker(s); {config['step_s']} s per step, {config['batch']} pings per request (wrk, "
        f"{config.get('shape', 'burst')} shape)",
        f"highest sustained rate (lag < {MAX_LAG_S:.0f} s): "
        f"{report['highest_sustained_pings_per_s']:,.0f} pings/s",
        "ceiling, bare consumer + COPY into a copy of pings: "
        f"{report['ceiling']['pings_per_s']:,.0f} pings/s",
    ]
    for s in report["steps"]:
        q = s["ping_to_queryable_ms"]
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in s["cpu_pct"].items() if v >= 5)
        lines.append(
            f"offered {s['offered_pings_per_s']:,} pings/s: accepted "
            f"{s['accepted_pings_per_s']:,.0f}/s, lag max {s['lag_seconds_max_second_half']} s, "
            f"ping-to-queryable p50 {q['p50']:.0f} ms p99 {q['p99']:.0f} ms "
            f"({q['count']} probes, {q['lost']} lost), sustained: {s['sustained']}; CPU: {cpu}"
        )
    return lines


def _step(
    stack: Stack,
    processes: dict[str, ProcessRef],
    tokens: Path,
    ingest: str,
    primary: str,
    rate: int,
    batch: int,
    step_s: int,
    shape: str,
) -> dict[str, Any]:
    """One offered rate: wrk at that rate, the stream's lag, ping-to-queryable latency."""
    config = stack.config
    drain_stream(stack)
    sampler = Sampler(processes, config.kafka_bootstrap, STREAMS_GROUP, [topics.PINGS]).start()
    probe = LatencyProbe(ingest, primary, config.jwt_private_key)
    probe.start()
    try:
        requests_per_s = rate / batch
        # Few connections: wrk waits its pacing delay after each answer, and the delay
        # must dwarf the latency for the offered rate to be near the asked one.
        connections = max(4, min(256, int(requests_per_s / 10)))
        result = run_wrk(
            ingest,
            tokens,
            batch=batch,
            duration_s=step_s,
            connections=connections,
            rate_per_s=requests_per_s,
            shape=shape,
        )
    finally:
        probe.stop()
        samples = sampler.stop()
    tail = [s["lag_seconds"] for s in samples[len(samples) // 2 :] if s["lag_seconds"] is not None]
    summary = result.summary(batch)
    step = {
        "offered_pings_per_s": rate,
        "accepted_pings_per_s": summary["accepted_pings_per_s"],
        "request_latency_ms": summary["latency_ms"],
        "statuses": summary["statuses"],
        "lag_seconds_max_second_half": max(tail) if tail else None,
        "ping_to_queryable_ms": {
            "p50": probe.percentile_ms(50),
            "p99": probe.percentile_ms(99),
            "count": probe.histogram.get_total_count(),
            "lost": probe.lost,
        },
        "cpu_pct": sampler.mean_cpu_pct(),
        "samples": samples,
    }
    # Sustained: the stream kept up (lag bounded under MAX_LAG_S) with what ingest
    # accepted; wrk's pacing offers somewhat less than asked, so the accepted rate counts.
    step["sustained"] = bool(tail) and max(tail) < MAX_LAG_S
    return step
