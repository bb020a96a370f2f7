"""Runs a scenario against a stack and records what it saw: fleet progress, CPU, lag."""

import asyncio
import contextlib
import importlib
import os
import resource
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bench.fleet import FleetConfig, run_fleet
from bench.report import plot, write_json, write_summary
from bench.sampler import Sampler
from bench.scenarios import SCENARIOS
from bench.stats import FleetStats
from infra.config import REPO_ROOT
from infra.procs import ProcessRef, wait_until
from infra.stack import Stack
from runtime.auth import issue_token
from runtime.kafka_lag import consumer_group_lag
from schemas import topics
from schemas.auth import Role

PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0)
STREAMS_GROUP = topics.STREAMS_GROUP


class Scenario(Protocol):
    """A benchmark scenario module: `run` measures on a stack and returns its report; `summary`
    gives its lines."""

    def run(self, stack: Stack, options: dict[str, Any]) -> dict[str, Any]: ...

    def summary(self, report: dict[str, Any]) -> list[str]: ...


def load(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    module: Any = importlib.import_module(f"bench.scenarios.{name}")
    return module  # type: ignore[no-any-return]


@dataclass
class FleetRun:
    """The outcome of one fleet run, with what was sampled during it."""

    stats: FleetStats
    progress: list[dict[str, float]]
    samples: list[dict[str, Any]]
    wall_s: float
    generator_cpu_s: float

    def as_report(self) -> dict[str, Any]:
        hist = self.stats
        return {
            "fleet": hist.summary(),
            "progress": self.progress,
            "samples": self.samples,
            "wall_s": round(self.wall_s, 2),
            "generator_cpu_cores": round(self.generator_cpu_s / self.wall_s, 2)
            if self.wall_s
            else 0,
            "latency_percentiles_ms": {str(p): hist.percentile_ms(p) for p in PERCENTILES},
        }


def driver_tokens_file(stack: Stack, drivers: int, path: Path) -> Path:
    """A file of `drivers` driver tokens, one per line, for load generators."""
    key = stack.config.jwt_private_key
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    path.write_text(
        "\n".join(
            issue_token(key, sub=f"{prefix}-{i}", role=Role.DRIVER, ttl_s=7200)
            for i in range(drivers)
        )
    )
    return path


@contextlib.contextmanager
def paused(ref: ProcessRef) -> Iterator[None]:
    """Freezes a process (SIGSTOP) for the block: isolates a phase from its CPU, or holds a
    consumer back while a backlog builds."""
    os.kill(ref.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(ref.pid, signal.SIGCONT)


def drain_stream(stack: Stack, timeout_s: float = 300.0) -> float:
    """Waits until the stream has caught up (no lag), so that its catching up after a
    phase does not take CPU from the next one. Returns the seconds it took."""
    started = time.monotonic()

    def caught_up() -> bool:
        lags = asyncio.run(
            consumer_group_lag(stack.config.kafka_bootstrap, STREAMS_GROUP, [topics.PINGS])
        )
        return sum(p.lag_messages for p in lags) == 0

    wait_until(caught_up, timeout_s, interval_s=1.0)
    return round(time.monotonic() - started, 1)


def drive_fleet(stack: Stack, fleet: FleetConfig) -> FleetRun:
    """Runs the fleet while sampling CPU of every stack process and the streams' lag."""
    processes = {name: record.ref for name, record in stack.records.items() if record.ref.alive()}
    sampler = Sampler(
        processes, stack.config.kafka_bootstrap, STREAMS_GROUP, [topics.PINGS]
    ).start()
    progress: list[dict[str, float]] = []
    last = {"t": 0.0, "accepted": 0}

    def on_progress(stats: FleetStats, elapsed: float) -> None:
        if elapsed - last["t"] >= 1.0:
            rate = (stats.accepted - last["accepted"]) / (elapsed - last["t"])
            progress.append({"t_s": round(elapsed, 2), "accepted_per_s": round(rate, 1)})
            last.update(t=elapsed, accepted=stats.accepted)

    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        stats = run_fleet(fleet, on_progress)
    finally:
        samples = sampler.stop()
    wall = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    return FleetRun(stats, progress, samples, wall, cpu)


def run(
    name: str,
    stack: Stack,
    *,
    options: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    command: str | None = None,
    report_step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    scenario = load(name)
    started_at = datetime.now(UTC)
    report_step(f"running scenario {name}")
    report = scenario.run(stack, options or {})
    report["scenario"] = name
    report["started_at"] = started_at.isoformat(timespec="seconds")
    directory = out_dir or REPO_ROOT / "bench" / "reports" / f"{name}-{started_at:%Y%m%dT%H%M%S}"
    report["files"] = {
        "json": str(directory / "report.json"),
        "png": str(directory / "report.png"),
        "summary": str(directory / "summary.md"),
    }
    getattr(scenario, "plot", plot)(report, directory / "report.png")
    write_json(report, directory / "report.json")
    write_summary(
        directory / "summary.md", command or f"telemetry bench {name}", scenario.summary(report)
    )
    return report
