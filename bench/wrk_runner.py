"""Drives an HTTP endpoint with wrk (C, from Debian) where Python could not keep up."""

import json
import os
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.procs import StackError

SCRIPT = Path(__file__).resolve().parent / "wrk" / "pings.lua"


@dataclass(frozen=True)
class WrkResult:
    """What wrk measured: requests, statuses and latency percentiles."""

    raw: dict[str, Any]
    cpu_s: float  # wrk's own CPU time: the load generator's cost

    @property
    def seconds(self) -> float:
        return float(self.raw["duration_us"]) / 1e6

    @property
    def accepted_requests(self) -> int:
        return int(self.raw["statuses"].get("202", 0))

    @property
    def requests_per_s(self) -> float:
        return int(self.raw["requests"]) / self.seconds

    def latency_ms(self, key: str) -> float:
        return float(self.raw["latency_us"][key]) / 1000.0

    def summary(self, batch: int) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "requests": self.raw["requests"],
            "requests_per_s": round(self.requests_per_s, 1),
            "accepted_pings_per_s": round(self.accepted_requests * batch / self.seconds, 1),
            "statuses": self.raw["statuses"],
            "errors": {k: self.raw[f"errors_{k}"] for k in ("connect", "read", "timeout")},
            "latency_ms": {k: self.latency_ms(k) for k in ("p50", "p90", "p99", "p999", "max")},
            "generator_cpu_cores": round(self.cpu_s / self.seconds, 2),
        }


def run_wrk(
    url: str,
    tokens_file: Path,
    *,
    batch: int,
    duration_s: int,
    connections: int,
    threads: int = 2,
    rate_per_s: float = 0.0,
    shape: str = "trace",
) -> WrkResult:
    """POSTs of pings (bench/wrk/pings.lua)."""
    env = {
        "WRK_SHAPE": shape,
        "WRK_TOKENS": str(tokens_file),
        "WRK_BATCH": str(batch),
        "WRK_RATE": str(rate_per_s),
        "WRK_CONNECTIONS": str(connections),
    }
    return _wrk(SCRIPT, url, env, duration_s=duration_s, connections=connections, threads=threads)


def run_wrk_gets(
    url: str,
    requests_file: Path,
    *,
    duration_s: int,
    connections: int,
    threads: int = 2,
    rate_per_s: float = 0.0,
) -> WrkResult:
    """GETs from a list (bench/wrk/gets.lua: one "path<TAB>token<TAB>etag" a line)."""
    env = {
        "WRK_REQUESTS": str(requests_file),
        "WRK_RATE": str(rate_per_s),
        "WRK_CONNECTIONS": str(connections),
        "WRK_THREADS": str(threads),
    }
    script = SCRIPT.parent / "gets.lua"
    return _wrk(script, url, env, duration_s=duration_s, connections=connections, threads=threads)


def _wrk(
    script: Path,
    url: str,
    env: dict[str, str],
    *,
    duration_s: int,
    connections: int,
    threads: int,
) -> WrkResult:
    argv = [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration_s}s",
        "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        argv,
        env=os.environ | env | {"WRK_COMMON": str(script.parent / "common.lua")},
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise StackError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_RESULT ")]
    if not lines:
        raise StackError(f"wrk printed no result:\n{done.stdout[-1000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(json.loads(lines[-1].removeprefix("WRK_RESULT ")), cpu)
