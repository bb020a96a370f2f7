"""etcd (Debian's etcd-server 3.4): the store Patroni keeps its leader lock and the
cluster's configuration in. One member here; docs/ha.md shows three on three machines."""

from pathlib import Path

import httpx

from infra.config import StackConfig
from infra.launch import Command, Mount
from infra.procs import DATABASE_USER, chown_for

NAME = "etcd"
BINARY = "/usr/bin/etcd"
CLUSTER_TOKEN = "telemetry"


def data_dir(config: StackConfig) -> Path:
    return config.state_dir / "etcd"


def url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.etcd_port}"


def peer_url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.etcd_peer_port}"


def prepare(config: StackConfig) -> None:
    # Patroni's user runs it: the lock it keeps is PostgreSQL's, no one else's.
    data_dir(config).mkdir(parents=True, exist_ok=True)
    data_dir(config).chmod(0o700)
    chown_for(data_dir(config), DATABASE_USER)


def command(config: StackConfig) -> Command:
    argv = [
        BINARY,
        "--name", NAME,
        "--data-dir", str(data_dir(config) / "member"),
        "--listen-client-urls", url(config),
        "--advertise-client-urls", url(config),
        "--listen-peer-urls", peer_url(config),
        "--initial-advertise-peer-urls", peer_url(config),
        "--initial-cluster", f"{NAME}={peer_url(config)}",
        "--initial-cluster-token", CLUSTER_TOKEN,
        "--initial-cluster-state", "new",
        "--logger", "zap",  # 3.4's default logger is deprecated
    ]  # fmt: skip
    return Command(NAME, "etcd", argv, user=DATABASE_USER, mounts=(Mount(data_dir(config), True),))


def ready(config: StackConfig) -> bool:
    """A leader elected and a quorum (of one here) answering: its /health says so."""
    try:
        answer = httpx.get(url(config) + "/health", timeout=2)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and answer.json().get("health") == "true"
