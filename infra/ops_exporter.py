"""The ops exporter: a process of the stack that Prometheus scrapes for what no service
process can say about itself (docs/ops.md): every consumer group's lag per partition,
in messages and seconds, with its status over the last looks (the rules of `telemetry lag`),
how many records the dead-letter topics hold, the replica's replay lag, the age of the
outbox's oldest unpublished event, and PgBouncer's pools (its `SHOW POOLS`).

It looks every `ops_exporter_interval_s` whatever the scrapes, so a partition's status is
judged over evenly spaced looks; a look that fails is counted, and its gauges keep their
last values with `telemetry_ops_look_success` at 0 (an alert waits for a fresh look)."""

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import httpx
import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from psycopg import ClientCursor

from infra import pgbouncer, postgres, supervisor
from infra.config import REPO_ROOT, StackConfig
from infra.launch import Command, Mount
from infra.procs import APP_USER
from runtime.kafka_lag import topic_end_offsets
from runtime.lag_status import LagWindow, Status
from runtime.lag_view import judge, look
from runtime.logging import configure_logging
from runtime.postgres import REPLICA_LAG
from schemas import topics

NAME = "ops-exporter"
REPLICA_DSN_ENV = "TELEMETRY_OPS_REPLICA_DSN"
PRIMARY_DSN_ENV = "TELEMETRY_OPS_PRIMARY_DSN"
PGBOUNCER_DSN_ENV = "TELEMETRY_OPS_PGBOUNCER_DSN"
DSN_ENVS = (REPLICA_DSN_ENV, PRIMARY_DSN_ENV, PGBOUNCER_DSN_ENV)
# How long the oldest event the outbox has not published yet has waited (0 when none).
OUTBOX_AGE = (
    "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox"
    " WHERE sent_at IS NULL"
)
DEAD_LETTER_TOPICS = (topics.dlq(topics.PINGS), topics.dlq(topics.TASKS))
log = logging.getLogger(NAME)


class OpsMetrics:
    """What the ops exporter publishes: consumer lag, dead letters and the replica's lag."""

    def __init__(self, registry: CollectorRegistry) -> None:
        partition = ["group", "topic", "partition"]
        self.lag_messages = Gauge(
            "telemetry_consumer_lag_messages",
            "Records not yet committed by the group",
            partition,
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "telemetry_consumer_lag_seconds",
            "Age of the oldest record not yet committed by the group (0 when none)",
            partition,
            registry=registry,
        )
        self.status = Gauge(
            "telemetry_consumer_partition_status",
            "1 for the partition's status over the last looks (OK, WARN, STALL, STOP, REWIND)",
            [*partition, "status"],
            registry=registry,
        )
        self.members = Gauge(
            "telemetry_consumer_group_members",
            "Consumers in the group now",
            ["group"],
            registry=registry,
        )
        self.topic_records = Gauge(
            "telemetry_topic_end_offset",
            "Records the topic has ever had (its partitions' end offsets summed)",
            ["topic"],
            registry=registry,
        )
        self.replica_lag = Gauge(
            "telemetry_replica_replay_lag_seconds",
            "How far the replica's replay is behind the primary's commits",
            registry=registry,
        )
        self.pgbouncer_clients = Gauge(
            "telemetry_pgbouncer_clients",
            "PgBouncer's client connections per database entry, active or waiting for a server",
            ["database", "state"],
            registry=registry,
        )
        self.pgbouncer_max_wait = Gauge(
            "telemetry_pgbouncer_max_wait_seconds",
            "How long the longest-waiting client of the entry has waited for a server",
            ["database"],
            registry=registry,
        )
        self.pgbouncer_client_limit = Gauge(
            "telemetry_pgbouncer_max_client_connections",
            "PgBouncer's max_client_conn",
            registry=registry,
        )
        self.outbox_age = Gauge(
            "telemetry_outbox_oldest_unsent_seconds",
            "How long the oldest job event the relay has not published yet has waited",
            registry=registry,
        )
        self.success = Gauge(
            "telemetry_ops_look_success",
            "1 when the last look at the source succeeded",
            ["source"],
            registry=registry,
        )
        self.failures = Counter(
            "telemetry_ops_look_failures",
            "Looks at a source that failed",
            ["source"],
            registry=registry,
        )
        for source in ("kafka", "replica", "outbox", "pgbouncer"):
            self.failures.labels(source)


class Exporter:
    """Samples Kafka and the replica every interval into OpsMetrics; runs in the ops exporter's
    process, one sampling at a time."""

    def __init__(self, config: StackConfig, metrics: OpsMetrics, dsns: dict[str, str]) -> None:
        self._config = config
        self._replica_dsn = dsns[REPLICA_DSN_ENV]
        self._primary_dsn = dsns[PRIMARY_DSN_ENV]
        self._pgbouncer_dsn = dsns[PGBOUNCER_DSN_ENV]
        self._metrics = metrics
        self._window = LagWindow(config.ops_exporter_window)

    async def look_at_kafka(self) -> None:
        seen = await look(self._config.kafka_bootstrap)
        rows = judge(self._window, seen)
        ends = await topic_end_offsets(self._config.kafka_bootstrap, list(DEAD_LETTER_TOPICS))
        m = self._metrics
        for row in rows:
            labels = (row.group, row.topic, str(row.partition))
            m.lag_messages.labels(*labels).set(row.lag_messages)
            m.lag_seconds.labels(*labels).set(row.lag_seconds)
            for status in Status:
                m.status.labels(*labels, status.value).set(1 if row.status == status else 0)
        for group, count in seen.members.items():
            m.members.labels(group).set(count)
        for topic, end in ends.items():
            m.topic_records.labels(topic).set(end)

    def look_at_replica(self) -> None:
        with psycopg.connect(self._replica_dsn, connect_timeout=3, autocommit=True) as conn:
            row = conn.execute(REPLICA_LAG).fetchone()
        self._metrics.replica_lag.set(float(row[0]) if row is not None else 0.0)

    def look_at_pgbouncer(self) -> None:
        # Its admin console speaks the simple query protocol only: client-side binding.
        with psycopg.connect(
            self._pgbouncer_dsn, connect_timeout=3, autocommit=True, cursor_factory=ClientCursor
        ) as conn:
            pools = conn.execute("SHOW POOLS")
            names = [column.name for column in pools.description or ()]
            rows = [dict(zip(names, row, strict=True)) for row in pools.fetchall()]
            settings = {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}
        m = self._metrics
        for row in rows:
            database = str(row["database"])
            m.pgbouncer_clients.labels(database, "active").set(float(row["cl_active"]))
            m.pgbouncer_clients.labels(database, "waiting").set(float(row["cl_waiting"]))
            waited = float(row["maxwait"]) + float(row.get("maxwait_us", 0)) / 1e6
            m.pgbouncer_max_wait.labels(database).set(waited)
        m.pgbouncer_client_limit.set(float(settings["max_client_conn"]))

    def look_at_outbox(self) -> None:
        with psycopg.connect(self._primary_dsn, connect_timeout=3, autocommit=True) as conn:
            row = conn.execute(OUTBOX_AGE).fetchone()
        self._metrics.outbox_age.set(float(row[0]) if row is not None else 0.0)

    async def look_once(self) -> None:
        """One look at each source; a failure is counted and logged, never raised."""
        sources = {
            "kafka": self.look_at_kafka(),
            "replica": asyncio.to_thread(self.look_at_replica),
            "outbox": asyncio.to_thread(self.look_at_outbox),
            "pgbouncer": asyncio.to_thread(self.look_at_pgbouncer),
        }
        results = await asyncio.gather(*sources.values(), return_exceptions=True)
        for source, result in zip(sources, results, strict=True):
            failed = isinstance(result, BaseException)
            self._metrics.success.labels(source).set(0 if failed else 1)
            if failed:
                self._metrics.failures.labels(source).inc()
                log.warning("look at %s failed: %r", source, result)


async def run(config: StackConfig, dsns: dict[str, str], stopping: asyncio.Event) -> None:
    registry = CollectorRegistry()
    exporter = Exporter(config, OpsMetrics(registry), dsns)
    start_http_server(config.ops_exporter_port, addr="127.0.0.1", registry=registry)
    log.info(
        "serving metrics on 127.0.0.1:%d; looking at Kafka and the replica every %g s",
        config.ops_exporter_port,
        config.ops_exporter_interval_s,
    )
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        started = loop.time()
        await exporter.look_once()
        wait_s = max(0.0, config.ops_exporter_interval_s - (loop.time() - started))
        try:
            await asyncio.wait_for(stopping.wait(), wait_s)
        except TimeoutError:
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.ops_exporter")
    parser.add_argument("config", type=Path, help="the stack's configuration (JSON)")
    args = parser.parse_args(argv)
    configure_logging("INFO", NAME)
    config = StackConfig.model_validate_json(args.config.read_text())
    # From the stack, by env: this process's user cannot read the password files.
    dsns = {
        name: os.environ[name] for name in (REPLICA_DSN_ENV, PRIMARY_DSN_ENV, PGBOUNCER_DSN_ENV)
    }

    async def until_signalled() -> None:
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
        await run(config, dsns, stopping)

    asyncio.run(until_signalled())
    return 0


def url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.ops_exporter_port}"


def command(config: StackConfig) -> Command:
    argv = [sys.executable, "-m", "infra.ops_exporter", str(supervisor.config_path(config))]
    env = {
        REPLICA_DSN_ENV: postgres.dsn(config, "replica"),
        PRIMARY_DSN_ENV: postgres.dsn(config, "primary"),
        # Its admin console, as the app's user (PgBouncer's `stats_users`).
        PGBOUNCER_DSN_ENV: pgbouncer.dsn(config, read_only=False).replace(
            f"dbname={pgbouncer.READ_WRITE_DB} ", "dbname=pgbouncer "
        ),
    }
    mounts = (Mount(supervisor.config_path(config)),)
    return Command(NAME, "app", argv, env, REPO_ROOT, APP_USER, mounts)


def ready(config: StackConfig) -> bool:
    try:
        return httpx.get(url(config) + "/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
