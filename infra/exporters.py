"""Debian's Prometheus exporters for the servers that are not ours: Redis, nginx (its
stub_status), and each PostgreSQL server (the primary and the replica, or every Patroni
node). Each is a component of the stack, supervised and scraped (infra/prometheus.py), and
the alert rules read them: connections near their limit, Redis's memory and evictions.
PgBouncer's pools come from the ops exporter (its SHOW POOLS).

The PostgreSQL exporter also runs queries of ours (QUERIES): the server's role and the
standbys streaming from it, the backends waiting for a lock, and the server's own CPU time,
which `telemetry doctor` gives as evidence when the database bounds the stream's writes."""

import json
from collections.abc import Callable
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

# The server's CPU seconds: its live processes' (every one in pg_stat_activity, background
# workers included) plus the postmaster's own and its reaped children's, read from /proc by
# the server itself (so it is the server's /proc under either runtime). A backend ending
# moves its time from one sum to the other: a counter. /proc counts in USER_HZ, which Linux
# fixes at 100 for user space.
SERVER_CPU = """
WITH postmaster AS (
  SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1)::int AS pid
), stat AS (
  SELECT string_to_array(
      split_part(pg_read_file('/proc/' || pid || '/stat', 0, 4096, true), ') ', 2), ' '
    ) AS f, pid = (SELECT pid FROM postmaster) AS main
  FROM (SELECT pid FROM pg_stat_activity UNION SELECT pid FROM postmaster) AS processes
)
SELECT coalesce(sum(
    f[12]::bigint + f[13]::bigint + CASE WHEN main THEN f[14]::bigint + f[15]::bigint ELSE 0 END
  ), 0) / 100.0 AS seconds_total
FROM stat WHERE f IS NOT NULL
"""

# Backends waiting for a lock now, and the longest such wait (its statement's age, which
# bounds it from above: the wait began after the statement did).
LOCK_WAITS = """
SELECT count(*) AS waiting,
  coalesce(extract(epoch FROM max(now() - query_start)), 0) AS longest_seconds
FROM pg_stat_activity WHERE wait_event_type = 'Lock'
"""

# Whether this server is the primary, and the standbys streaming from it: a primary with
# none has nowhere to fail over to (under Patroni HAProxy then sends reads to the leader,
# so no read fails to show it).
ROLE = "SELECT (NOT pg_is_in_recovery())::int AS is_primary"
STANDBYS = "SELECT count(*) AS streaming FROM pg_stat_replication WHERE state = 'streaming'"

# postgres_exporter's --extend.query-path format: the metric is <name>_<column>.
QUERIES = {
    "pg_server": {
        "query": ROLE,
        "metrics": [{"is_primary": {"usage": "GAUGE", "description": "1 on the primary"}}],
    },
    "pg_standbys": {
        "query": STANDBYS,
        "metrics": [{"streaming": {"usage": "GAUGE", "description": "Standbys streaming from it"}}],
    },
    "pg_server_cpu": {
        "query": SERVER_CPU,
        "metrics": [
            {
                "seconds_total": {
                    "usage": "COUNTER",
                    "description": "CPU seconds used by the server's processes",
                }
            }
        ],
    },
    "pg_lock_waits": {
        "query": LOCK_WAITS,
        "metrics": [
            {"waiting": {"usage": "GAUGE", "description": "Backends waiting for a lock"}},
            {
                "longest_seconds": {
                    "usage": "GAUGE",
                    "description": "Age of the oldest statement waiting for a lock",
                }
            },
        ],
    },
}


@dataclass(frozen=True)
class Exporter:
    """One exporter process: its component name, Prometheus job, port and command."""

    name: str
    job: str
    port: int
    command: Command
    # What it exports: ready only once that answers it.
    after: str
    # What it reads, written before it starts.
    prepare: Callable[[], None] = lambda: None

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


def queries_dir(config: StackConfig) -> Path:
    return config.run_dir / "postgres-exporter.d"


def queries_path(config: StackConfig) -> Path:
    return queries_dir(config) / "queries.yml"


def write_queries(config: StackConfig) -> None:
    queries_dir(config).mkdir(parents=True, exist_ok=True)
    # JSON is YAML.
    queries_path(config).write_text(json.dumps(QUERIES, indent=2) + "\n")


def _postgres(config: StackConfig) -> list[Exporter]:
    exporters = []
    for index, (server, sockets, server_port) in enumerate(postgres_servers(config)):
        name = f"{server}-exporter"
        port = config.postgres_exporter_port + index
        argv = [
            POSTGRES_BINARY,
            f"--web.listen-address=127.0.0.1:{port}",
            f"--extend.query-path={queries_path(config)}",
        ]
        # As the postgres user on the server's own socket (local trust): no password, and
        # what it reads (pg_stat_*) needs the superuser's view.
        dsn = (
            f"host={sockets} port={server_port} user={postgres.SUPERUSER} dbname=postgres"
            " sslmode=disable"
        )
        command = Command(
            name, IMAGE, argv, {"DATA_SOURCE_NAME": dsn}, user=DATABASE_USER,
            mounts=(Mount(sockets, writable=True), Mount(queries_dir(config))),
        )  # fmt: skip
        exporters.append(
            Exporter(name, "postgres", port, command, server, lambda: write_queries(config))
        )
    return exporters


def exporters(config: StackConfig) -> list[Exporter]:
    return [_redis(config), _nginx(config), *_postgres(config)]


def ready(exporter: Exporter) -> bool:
    try:
        return httpx.get(exporter.url + "/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
