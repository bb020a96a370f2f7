"""The open-loop load generator (bench/loadgen, Go): built on first use, run, its JSON read.

Open loop: every driver posts at its own times whatever the answers do, and latency counts
from the time a request was due, so a slow server shows as latency, not as a lower offered
rate. Its own CPU is in the result (it must stay small beside the stack it loads)."""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra import install
from infra.procs import StackError

SOURCE = Path(__file__).resolve().parent / "loadgen"


def go_binary() -> str:
    """`go`, installed from Debian's golang-go when missing (the source needs Go 1.19)."""
    found = shutil.which("go")
    if found is None:
        install.ensure_debian_packages({"golang-go": Path("/usr/bin/go")})
        found = "/usr/bin/go"
    return found


def ensure_built(directory: Path) -> Path:
    """The binary in `directory`, built again when a source file is newer than it."""
    binary = directory / "loadgen"
    sources = [p for p in SOURCE.iterdir() if p.suffix in (".go", ".mod")]
    if binary.exists() and binary.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return binary
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [go_binary(), "build", "-o", str(binary), "."],
        cwd=SOURCE,
        # Standard library only: nothing to fetch, and no newer toolchain either.
        env=os.environ | {"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "GOPROXY": "off"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise StackError(f"building the load generator failed:\n{done.stderr[-2000:]}")
    return binary


@dataclass(frozen=True)
class LoadResult:
    """What the open-loop generator measured: requests by outcome, and latency from each request's
    due time."""

    raw: dict[str, Any]

    @property
    def accepted_first_try(self) -> float:
        return float(self.raw["accepted_first_try"])

    @property
    def p99_ms(self) -> float:
        return float(self.raw["latency_ms"]["p99"])

    def summary(self) -> dict[str, Any]:
        raw = self.raw
        seconds = raw["duration_s"]
        accepted = raw["statuses"].get("202", 0)
        return {
            "drivers": raw["drivers"],
            "offered_requests_per_s": round(raw["offered_requests_per_s"], 1),
            "seconds": seconds,
            "warmup_s": raw["warmup_s"],
            "requests": raw["due"],
            "requests_per_s": round(raw["completed"] / seconds, 1),
            "accepted_pings_per_s": round(accepted / seconds, 1),
            "accepted_first_try_pct": round(100 * self.accepted_first_try, 3),
            "statuses": raw["statuses"],
            "errors": raw["errors"] | ({"dropped": raw["dropped"]} if raw["dropped"] else {}),
            "latency_ms": {k: round(v, 1) for k, v in raw["latency_ms"].items()},
            "service_ms": {k: round(v, 1) for k, v in raw["service_ms"].items()},
            "late_leaving_max_ms": round(raw["late_leaving_max_ms"], 1),
            "connections": raw["connections"],
            "queued_max": raw["queued_max"],
            "generator_cpu_cores": round(raw["cpu_cores"], 3),
            "timeline": raw["timeline"],
        }


def run_loadgen(
    binary: Path,
    url: str,
    tokens_file: Path,
    *,
    drivers: int,
    interval_s: float,
    duration_s: float,
    warmup_s: float = 0.0,
    timeout_s: float = 10.0,
    max_conns: int = 4000,
    conn_per_driver: bool = False,
) -> LoadResult:
    """`drivers` drivers, each posting one ping every `interval_s`, for `duration_s` measured
    seconds after `warmup_s` unmeasured ones, on at most `max_conns` connections; or, with
    `conn_per_driver`, each driver on a kept-alive connection of its own, as phones are."""
    argv = [
        str(binary),
        f"-url={url}",
        f"-tokens={tokens_file}",
        f"-drivers={drivers}",
        f"-interval={interval_s}s",
        f"-duration={duration_s}s",
        f"-warmup={warmup_s}s",
        f"-timeout={timeout_s}s",
        f"-max-conns={max_conns}",
        *(["-conn-per-driver"] if conn_per_driver else []),
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=warmup_s + duration_s + timeout_s + 60,
        check=False,
    )
    if done.returncode != 0:
        raise StackError(f"the load generator failed ({done.returncode}): {done.stderr[-500:]}")
    return LoadResult(json.loads(done.stdout))
