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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Sampler:
    processes: dict[str, ProcessRef]
    bootstrap: str
    group: str
    topics: list[str]
    interval_s: float = 1.0
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
        last_cpu = {name: cpu_seconds(ref.pid) for name, ref in self.processes.items()}
        last_t = started
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            cpu: dict[str, float] = {}
            for name, ref in self.processes.items():
                current = cpu_seconds(ref.pid)
                before = last_cpu.get(name)
                if current is not None and before is not None:
                    cpu[name] = 100.0 * (current - before) / (now - last_t)
                last_cpu[name] = current
            last_t = now
            lag = self._lag()
            self.samples.append(
                {
                    "t_s": round(now - started, 2),
                    "cpu_pct": {k: round(v, 1) for k, v in cpu.items()},
                    "lag_messages": lag[0] if lag else None,
                    "lag_seconds": round(lag[1], 3) if lag else None,
                }
            )
