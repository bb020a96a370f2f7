"""Where the local stack lives and which ports it uses (env prefix TELEMETRY_)."""

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.config import ApiSettings
from ingest.config import IngestSettings
from notifier.config import NotifierSettings
from photo_worker.config import PhotoWorkerSettings
from runtime.settings import (
    LOCAL_ALERTMANAGER_PORT,
    LOCAL_KAFKA_PORT,
    LOCAL_PGBOUNCER_PORT,
    LOCAL_PROMETHEUS_PORT,
    LOCAL_REDIS_PORT,
    default_of,
)
from streams.config import StreamsSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


class StackConfig(BaseSettings):
    """Defaults avoid the standard ports so the stack can run beside a system PostgreSQL,
    Redis or Kafka; every one can be overridden (TELEMETRY_KAFKA_PORT=...)."""

    model_config = SettingsConfigDict(env_prefix="TELEMETRY_", extra="ignore")

    state_dir: Path = REPO_ROOT / ".telemetry"
    # Downloads (Kafka's jars) outlive any one state dir: tests and `up` share them.
    cache_dir: Path = Path.home() / ".cache" / "telemetry"
    kafka_version: str = "4.4.0"

    # Where pings and aggregates live. `auto`: TimescaleDB when it is installed or can be
    # built here (`telemetry install`), else native PostgreSQL with a warning. A database
    # keeps the storage it was created with.
    storage: Literal["auto", "timescaledb", "native"] = "auto"
    # TimescaleDB's source tarball, a path or an URL; empty: a vendored copy when the
    # machine has one (infra/install.py), else the release tag's tarball on GitHub.
    timescaledb_source: str = ""
    # The tarball's expected sha256; empty: the digest of the release we build.
    timescaledb_sha256: str = ""

    # Where the components run: local processes, or containers of the images in
    # infra/containers/ (built by `telemetry images`) on Podman, through testcontainers.
    runtime: Literal["processes", "containers"] = "processes"

    # Broker N of a cluster listens on kafka_port + N - 1, its controller on
    # kafka_controller_port + N - 1.
    kafka_port: int = LOCAL_KAFKA_PORT
    kafka_controller_port: int = 19192
    # The primary's and the replica's ports: the servers themselves, or with
    # `postgres_ha` HAProxy's frontends that follow Patroni's leader and replica.
    postgres_primary_port: int = 15432
    postgres_replica_port: int = 15433
    # With `postgres_ha`: node N's PostgreSQL on postgres_node_port + N - 1, its Patroni
    # REST API on patroni_port + N - 1; etcd's client and peer ports.
    postgres_node_port: int = 15441
    patroni_port: int = 18008
    etcd_port: int = 12379
    etcd_peer_port: int = 12380
    pgbouncer_port: int = LOCAL_PGBOUNCER_PORT
    redis_port: int = LOCAL_REDIS_PORT
    # The services' first ports are their own settings' defaults: ingest-N listens on
    # ingest_port + N - 1, api-N, streams-N (its Faust web server), photo-worker-N (its
    # probes) and notifier-N (its WebSocket and probes) likewise.
    ingest_port: int = default_of(IngestSettings, "port")
    api_port: int = default_of(ApiSettings, "port")
    streams_web_port: int = default_of(StreamsSettings, "web_port")
    photo_worker_port: int = default_of(PhotoWorkerSettings, "port")
    notifier_port: int = default_of(NotifierSettings, "port")
    # The public port: nginx, the edge cache, in front of HAProxy (docs/edge.md).
    edge_port: int = 18080
    # nginx's stub_status, for its exporter (loopback).
    edge_status_port: int = 18083
    haproxy_port: int = 18081
    haproxy_stats_port: int = 18082  # its stats page (/) and Prometheus exporter (/metrics)
    # Ops (docs/ops.md): Prometheus, and the exporter of consumer lag, dead letters and
    # the replica's replay lag it scrapes.
    prometheus_port: int = LOCAL_PROMETHEUS_PORT
    ops_exporter_port: int = 18091
    alertmanager_port: int = LOCAL_ALERTMANAGER_PORT
    node_exporter_port: int = 18094
    # Debian's exporters of Redis, nginx and PostgreSQL (server N on postgres_exporter_port
    # + N - 1: the primary and the replica, or Patroni's nodes).
    redis_exporter_port: int = 18095
    nginx_exporter_port: int = 18096
    postgres_exporter_port: int = 18097
    # Where Alertmanager sends the alerts (docs/ops.md): warnings, and critical alerts too
    # unless the second is set (a pager's webhook). Unset: the alerts are kept in
    # Alertmanager (the ops page shows them) and sent nowhere.
    alert_webhook_url: str | None = None
    alert_page_webhook_url: str | None = None

    # The browser pages the api, ingest and the notifier let in (CORS, the WebSocket's
    # Origin): a web app's dev server.
    allowed_origins: tuple[str, ...] = ("http://localhost:3000", "http://127.0.0.1:3000")

    # Kafka's brokers: one (light, for a laptop), or a cluster of three or more in KRaft
    # combined mode (every node a broker and a controller), whose topics keep three copies
    # and take a write once two have it (docs/ha.md). Fixed when the stack is made.
    kafka_brokers: int = Field(default=1, ge=1, le=5)
    # PostgreSQL: two nodes under Patroni with etcd, synchronous replication and automatic
    # failover behind HAProxy (docs/ha.md), or (False) the lighter primary and
    # asynchronous replica that nothing promotes. Fixed when the stack is made.
    postgres_ha: bool = True

    ingest_processes: int = 1
    api_processes: int = 1
    stream_workers: int = 1
    photo_workers: int = 1
    notifier_processes: int = 1

    # PostgreSQL and PgBouncer end a transaction left idle this long (a paused client).
    idle_in_transaction_timeout_s: int = 15
    # Every statement of the api and the notifier (PgBouncer's bounded entries) ends by
    # then: a heavy read cannot hold a server for longer.
    client_statement_timeout_s: float = 10.0

    # Connections each tier holds at once (a WebSocket through both is one at each). The
    # machine's open-file limit bounds them. HAProxy gives each service its own budget, so
    # WebSockets held open (a share link's, for days) cannot take the pings' or the api's.
    # Per nginx worker (one per core): each phone's kept-alive connection takes one, and
    # each request in flight to HAProxy another. The seed's fleet is 15,000 phones, and the
    # kernel does not spread them evenly over the workers: one worker may hold them all.
    edge_worker_connections: int = 16384
    haproxy_ingest_maxconn: int = 3000
    haproxy_api_maxconn: int = 2000
    haproxy_notifier_maxconn: int = 3000
    # Per client address at the edge: connections at once, and requests a second with a
    # burst. The local fleet and the benchmarks all come from 127.0.0.1 (the edge bench
    # sent 93,574 a second), hence these local defaults, far past anything one address
    # sends here: set them to what a phone or an office needs in front of real clients.
    edge_connections_per_client: int = 20_000
    edge_requests_per_client_s: int = 1_000_000
    edge_request_burst: int = 2_000_000
    # Share links are looked up unauthenticated: a client may ask this many a second.
    edge_share_requests_per_client_s: int = 1_000_000
    # After a reload, how long an old HAProxy worker may keep established connections.
    haproxy_hard_stop_after_s: int = 1800

    prometheus_scrape_interval_s: int = 5
    prometheus_retention: str = "7d"
    # How often the ops exporter looks at Kafka and the replica, and how many looks a
    # partition's status is judged over (telemetry lag's rules).
    ops_exporter_interval_s: float = 5.0
    ops_exporter_window: int = 6

    # Each process's log is rotated past this size, this many old copies kept (the
    # supervisor does it: infra/logs.py).
    log_max_bytes: int = 50 * 1024 * 1024
    log_keep: int = 3

    kafka_heap_mb: int = 768
    startup_timeout_s: float = 120.0

    # --- derived paths -------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def kafka_lib_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "lib"

    @property
    def jwt_private_key(self) -> Path:
        return self.state_dir / "keys" / "jwt_ed25519.pem"

    @property
    def jwt_public_key(self) -> Path:
        """The JWKS document of every key that verifies (infra/keys.py), in a directory of
        its own: what services are given to read, nothing else of the keys."""
        return self.state_dir / "keys" / "public" / "jwks.json"

    @property
    def public_origins(self) -> tuple[str, ...]:
        """The edge's own origins: pages it serves (the share page) open the notifier's
        WebSocket from there."""
        return (f"http://127.0.0.1:{self.edge_port}", f"http://localhost:{self.edge_port}")

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    @property
    def kafka_bootstrap(self) -> str:
        """Every broker: a client finds the cluster through any that answers."""
        ports = range(self.kafka_port, self.kafka_port + self.kafka_brokers)
        return ",".join(f"127.0.0.1:{port}" for port in ports)

    @model_validator(mode="after")
    def _a_quorum_survives_a_loss(self) -> Self:
        # Two voters cannot lose one (a majority of two is two), and two copies with two
        # in sync stop every write while either broker is down.
        if self.kafka_brokers == 2:
            raise ValueError("kafka_brokers: 1, or 3 to 5 (two brokers survive no loss)")
        return self
