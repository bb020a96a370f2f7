"""Samples component CPU and consumer lag once a second while a benchmark runs."""

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError

from infra.procs import ProcessRef
from runtime.kafka_lag import consumer_group_lag

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots: set[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each root process and all its descendants.
    (By process tree, not session: PostgreSQL's backends start sessions of their own.)"""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        pid = int(entry)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    totals = dict.fromkeys(roots, 0.0)
    for pid, seconds in cpu.items():
        node, hops = pid, 0
        while node not in roots and node > 1 and hops < 64:
            node, hops = parent.get(node, 0), hops + 1
        if node in roots:
            totals[node] += seconds
    return totals


@dataclass
class Sampler:
    """A thread that samples every process's CPU and the stream's lag once a second while a phase
    runs."""

    processes: dict[str, ProcessRef]
    bootstrap: str
    group: str
    topics: list[str]
    interval_s: float = 1.0
    # Lag needs Kafka clients every sample: off where only CPU matters (it costs CPU too).
    sample_lag: bool = True
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Sampler":
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.samples

    def mean_cpu_pct(self) -> dict[str, float]:
        names = {name for s in self.samples for name in s["cpu_pct"]}
        return {
            name: round(
                sum(s["cpu_pct"].get(name, 0.0) for s in self.samples) / len(self.samples), 1
            )
            for name in sorted(names)
        }

    def _lag(self) -> tuple[int, float] | None:
        try:
            lags = asyncio.run(
                consumer_group_lag(self.bootstrap, self.group, self.topics, timeout_s=3)
            )
        except (KafkaError, TimeoutError, OSError):
            return None
        return sum(p.lag_messages for p in lags), max((p.lag_seconds for p in lags), default=0.0)

    def _run(self) -> None:
        started = time.monotonic()
        roots = {ref.pid for ref in self.processes.values()}
        last_cpu = tree_cpu_seconds(roots)
        last_t = started
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            current = tree_cpu_seconds(roots)
            cpu: dict[str, float] = {}
            for name, ref in self.processes.items():
                if ref.pid in current and ref.pid in last_cpu:
                    cpu[name] = 100.0 * (current[ref.pid] - last_cpu[ref.pid]) / (now - last_t)
            last_cpu, last_t = current, now
            lag = self._lag() if self.sample_lag else None
            self.samples.append(
                {
                    "t_s": round(now - started, 2),
                    "cpu_pct": {k: round(v, 1) for k, v in cpu.items()},
                    "lag_messages": lag[0] if lag else None,
                    "lag_seconds": round(lag[1], 3) if lag else None,
                }
            )
