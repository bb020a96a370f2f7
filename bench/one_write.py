"""What writing each answer whole costs (runtime/one_write.py): the bare GET handler
(bench/baselines/bare_get.py) served by uvicorn's own httptools protocol and by ours, in
turns, each driven by wrk as fast as it answers.

    python -m bench.one_write [rounds] [duration_s]"""

import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.wrk_runner import WrkResult, run_wrk_gets
from infra.config import REPO_ROOT
from infra.procs import free_port, port_open, spawn, stop, wait_until

PROTOCOLS = ("httptools", "one-write")

SERVER = """
import os, sys, uvicorn
from bench.baselines.bare_get import create_app
from runtime.one_write import OneWriteHttpToolsProtocol
http = OneWriteHttpToolsProtocol if sys.argv[1] == "one-write" else "httptools"
uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ["NAIVE_PORT"]),
            loop="uvloop", http=http, log_level="warning", access_log=False)
"""


def measure(protocol: str, requests_file: Path, duration_s: int, logs: Path) -> WrkResult:
    port = free_port()
    ref = spawn(
        [sys.executable, "-c", SERVER, protocol],
        log_path=logs / f"{protocol}.log",
        env={"NAIVE_PORT": str(port)},
        cwd=REPO_ROOT,
    )
    try:
        if not wait_until(lambda: port_open(port), 30):
            raise SystemExit(f"the {protocol} server did not listen: see {logs}")
        url = f"http://127.0.0.1:{port}"
        return run_wrk_gets(url, requests_file, duration_s=duration_s, connections=64)
    finally:
        stop(ref)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    duration_s = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    results: dict[str, list[WrkResult]] = {protocol: [] for protocol in PROTOCOLS}
    with tempfile.TemporaryDirectory(prefix="one-write-") as scratch:
        requests_file = Path(scratch) / "requests.tsv"
        requests_file.write_text("/v1/jobs/01900000-0000-7000-8000-000000000000\t-\t-\n")
        for _ in range(rounds):
            for protocol in PROTOCOLS:
                results[protocol].append(
                    measure(protocol, requests_file, duration_s, Path(scratch))
                )
    title = f"bare GET, one uvicorn process, wrk 64 connections, {rounds} x {duration_s} s"
    table = Table(title=f"{title}, {os.cpu_count()} cores")
    table.add_column("protocol")
    table.add_column("req/s, each round")
    table.add_column("mean req/s")
    table.add_column("p50 / p99 ms (mean)")
    for protocol, runs in results.items():
        rates = [run.requests_per_s for run in runs]
        p50 = sum(run.latency_ms("p50") for run in runs) / len(runs)
        p99 = sum(run.latency_ms("p99") for run in runs) / len(runs)
        table.add_row(
            protocol,
            ", ".join(f"{rate:,.0f}" for rate in rates),
            f"{sum(rates) / len(rates):,.0f}",
            f"{p50:.1f} / {p99:.1f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
