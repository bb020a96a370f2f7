"""The machine's own metrics (Debian's prometheus-node-exporter): the disks' free space,
memory and CPU, scraped by Prometheus for the rules that see a disk filling up or memory
running out before a service fails (infra/alerts/rules.yml)."""

from pathlib import Path

import httpx

from infra.config import StackConfig
from infra.launch import Command, Mount
from infra.procs import PROMETHEUS_USER

NAME = "node-exporter"
BINARY = "/usr/bin/prometheus-node-exporter"
# What the rules read, nothing more: each collector costs a scrape's CPU.
COLLECTORS = ("filesystem", "meminfo", "cpu", "loadavg", "diskstats")
# Kernel and runtime mounts are not disks that fill up.
IGNORED_MOUNTS = "^/(dev|proc|run|sys|var/lib/containers)($|/)"


def url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.node_exporter_port}"


def disk_probe_dir(config: StackConfig) -> Path:
    """A dir on the state dir's disk: in a container, mounted where it is on the host, so
    that the exporter sees the disk the stack writes to as one of its filesystems."""
    return config.state_dir / "node-exporter"


def prepare(config: StackConfig) -> None:
    disk_probe_dir(config).mkdir(parents=True, exist_ok=True)


def command(config: StackConfig) -> Command:
    argv = [
        BINARY,
        f"--web.listen-address=127.0.0.1:{config.node_exporter_port}",
        "--collector.disable-defaults",
        *(f"--collector.{name}" for name in COLLECTORS),
        f"--collector.filesystem.mount-points-exclude={IGNORED_MOUNTS}",
    ]
    return Command(
        NAME, "node-exporter", argv, user=PROMETHEUS_USER, mounts=(Mount(disk_probe_dir(config)),)
    )


def ready(config: StackConfig) -> bool:
    try:
        return httpx.get(url(config) + "/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
