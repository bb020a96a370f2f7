"""Debian's Prometheus exporters for the servers that are not ours: Redis, nginx (its
stub_status), and each PostgreSQL server (the primary and the replica, or every Patroni
node). Each is a component of the stack, supervised and scraped (infra/prometheus.py), and
the alert rules read them: connections near their limit, Redis's memory and evictions.
PgBouncer's pools come from the ops exporter (its SHOW POOLS)."""

from dataclasses import dataclass
from pathlib import Path

import httpx

from infra import postgres, redis
from infra.config import StackConfig
from infra.launch import Command, Mount
from infra.procs import APP_USER, DATABASE_USER, REDIS_USER

IMAGE = "exporters"
REDIS_BINARY = "/usr/bin/prometheus-redis-exporter"
NGINX_BINARY = "/usr/bin/prometheus-nginx-exporter"
POSTGRES_BINARY = "/usr/bin/prometheus-postgres-exporter"


@dataclass(frozen=True)
class Exporter:
    """One exporter process: its component name, Prometheus job, port and command."""

    name: str
    job: str
    port: int
    command: Command
    # What it exports: ready only once that answers it.
    after: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _redis(config: StackConfig) -> Exporter:
    name = "redis-exporter"
    argv = [
        REDIS_BINARY,
        f"-redis.addr=redis://127.0.0.1:{config.redis_port}",
        f"-web.listen-address=127.0.0.1:{config.redis_exporter_port}",
    ]
    # The password in its environment (its user's and root's to read), not on its command
    # line, which any local user can list.
    env = {"REDIS_PASSWORD": redis.password(config)}
    command = Command(name, IMAGE, argv, env, user=REDIS_USER)
    return Exporter(name, "redis", config.redis_exporter_port, command, "redis")


def _nginx(config: StackConfig) -> Exporter:
    name = "nginx-exporter"
    argv = [
        NGINX_BINARY,
        f"-nginx.scrape-uri=http://127.0.0.1:{config.edge_status_port}/stub_status",
        f"-web.listen-address=127.0.0.1:{config.nginx_exporter_port}",
    ]
    command = Command(name, IMAGE, argv, user=APP_USER)
    return Exporter(name, "nginx", config.nginx_exporter_port, command, "edge")


def postgres_servers(config: StackConfig) -> list[tuple[str, Path, int]]:
    """(the server's component, its private socket dir, its port) for every PostgreSQL
    server: the socket's name carries the port."""
    if config.postgres_ha:
        return [
            (f"postgres-{n}", postgres.node_socket_dir(config, n), postgres.node_port(config, n))
            for n in postgres.ha_nodes()
        ]
    return [
        (f"postgres-{r}", postgres.socket_dir(config, r), postgres.port(config, r))
        for r in ("primary", "replica")
    ]


def _postgres(config: StackConfig) -> list[Exporter]:
    exporters = []
    for index, (server, sockets, server_port) in enumerate(postgres_servers(config)):
        name = f"{server}-exporter"
        port = config.postgres_exporter_port + index
        argv = [POSTGRES_BINARY, f"--web.listen-address=127.0.0.1:{port}"]
        # As the postgres user on the server's own socket (local trust): no password, and
        # what it reads (pg_stat_*) needs the superuser's view.
        dsn = (
            f"host={sockets} port={server_port} user={postgres.SUPERUSER} dbname=postgres"
            " sslmode=disable"
        )
        command = Command(
            name, IMAGE, argv, {"DATA_SOURCE_NAME": dsn}, user=DATABASE_USER,
            mounts=(Mount(sockets, writable=True),),
        )  # fmt: skip
        exporters.append(Exporter(name, "postgres", port, command, server))
    return exporters


def exporters(config: StackConfig) -> list[Exporter]:
    return [_redis(config), _nginx(config), *_postgres(config)]


def ready(exporter: Exporter) -> bool:
    try:
        return httpx.get(exporter.url + "/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
