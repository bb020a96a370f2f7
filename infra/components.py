"""The component registry: every process of the local stack, declared once with how it
starts, when it is ready, its ports, its endpoint, its dependencies and how it stops.
Adding a component (the notifier, HAProxy, Prometheus) is one entry here."""

import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from infra import (
    alertmanager,
    edge,
    etcd,
    exporters,
    haproxy,
    haproxy_db,
    kafka,
    migrate,
    node_exporter,
    ops_exporter,
    patroni,
    pgbouncer,
    postgres,
    prometheus,
    redis,
    services,
    storage,
    supervisor,
)
from infra.config import StackConfig
from infra.containers import engine
from infra.launch import Command
from infra.procs import StackError, wait_until


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Component:
    """One component of the stack as the registry describes it: what it runs, how to prepare it,
    when it is ready and alive, its ports, what it needs first, and whether the supervisor
    restarts it."""

    name: str
    # What runs (infra/launch.py), after `prepare`.
    command: Callable[[], Command]
    # Healthy now (status, and the wait after start unless `startup_ready` is given).
    ready: Callable[[], bool]
    # (port, the env var that moves it): checked free before starting.
    ports: tuple[tuple[int, str], ...]
    endpoint: dict[str, str]
    # Started only once these are ready (and their `on_ready` has run).
    after: tuple[str, ...] = ()
    stop_signal: int = signal.SIGTERM
    # Runs before each start: configuration files, initdb, a replica's clone; idempotent.
    prepare: Callable[[], object] = _nothing
    # What "up far enough for on_ready" means, when not `ready` itself.
    startup_ready: Callable[[], bool] | None = None
    # Runs once it is ready, on every `up` (migrations, topics); idempotent.
    on_ready: Callable[[], object] = _nothing
    logs: tuple[str, ...] = field(default=())
    # What a healthy component says about itself in `status` (PostgreSQL: its storage).
    describe: Callable[[], dict[str, str]] = dict
    # Starts tried before giving up on a process that exits during start-up.
    start_attempts: int = 1
    # Restarted by the supervisor when it dies: stateless processes (our services, the
    # edge tiers). The data stores are not: a crashed database wants an operator.
    supervised: bool = False
    # Its liveness probe (our services' /healthz), for a supervised component: a process
    # that fails it several looks in a row is stuck, and the supervisor restarts it.
    live: Callable[[], bool] | None = None

    @property
    def log_name(self) -> str:
        return self.logs[0] if self.logs else self.name


def _bootstrap_primary(config: StackConfig, report: Callable[[str], None]) -> None:
    postgres.bootstrap_roles(config)
    if not wait_until(lambda: postgres.ready(config, "primary"), config.startup_timeout_s, 0.2):
        raise StackError("postgres-primary accepts no application login after bootstrap")
    report("applying migrations")
    try:
        applied = migrate.apply_all(
            postgres.dsn(config, "primary"), timescale=storage.recorded(config) == "timescaledb"
        )
    except migrate.MigrationError as exc:
        raise StackError(str(exc)) from exc
    if applied:
        report(f"applied migrations {', '.join(applied)}")


def components(config: StackConfig, report: Callable[[str], None]) -> list[Component]:
    """The stack's components in a valid start order (each after its dependencies)."""
    result = [*_servers(config, report), *_services(config), *_front(config)]
    result = _after_every_broker(config, result)
    if config.runtime == "containers":
        result = _in_containers(config, result)
    return result


def _servers(config: StackConfig, report: Callable[[str], None]) -> list[Component]:
    """Kafka, Redis, PostgreSQL, PgBouncer."""
    return [
        # Kafka's JVM takes longest to come up: first in the list, waited for only when a
        # component that needs it is about to start.
        *_kafka(config, report),
        Component(
            "redis",
            command=lambda: redis.command(config),
            prepare=lambda: redis.prepare(config),
            ready=lambda: redis.ready(config),
            ports=((config.redis_port, "TELEMETRY_REDIS_PORT"),),
            endpoint={"url": redis.url(config)},
        ),
        *_postgres(config, report),
        Component(
            "pgbouncer",
            command=lambda: pgbouncer.command(config),
            prepare=lambda: pgbouncer.write_config(config),
            ready=lambda: pgbouncer.ready(config),
            ports=((config.pgbouncer_port, "TELEMETRY_PGBOUNCER_PORT"),),
            endpoint={
                "dsn": pgbouncer.dsn(config, read_only=False),
                "dsn_read_write": pgbouncer.dsn(config, read_only=False),
                "dsn_read_only": pgbouncer.dsn(config, read_only=True),
            },
            after=(haproxy_db.NAME,)
            if config.postgres_ha
            else ("postgres-primary", "postgres-replica"),
        ),
    ]


def _postgres(config: StackConfig, report: Callable[[str], None]) -> list[Component]:
    """A primary and a replica, or etcd, Patroni's nodes and HAProxy's frontends on the
    primary's and the replica's ports."""
    if config.postgres_ha:
        return _patroni(config, report)

    def init_primary() -> None:
        if postgres.init_primary(config):
            report("initialised the PostgreSQL primary")

    def init_replica() -> None:
        if postgres.init_replica(config):
            report("cloned the replica (pg_basebackup)")

    return [
        Component(
            "postgres-primary",
            command=lambda: postgres.command(
                config, "primary", timescaledb=storage.recorded(config) == "timescaledb"
            ),
            ready=lambda: postgres.ready(config, "primary"),
            ports=((config.postgres_primary_port, "TELEMETRY_POSTGRES_PRIMARY_PORT"),),
            endpoint={"dsn": postgres.dsn(config, "primary")},
            describe=lambda: postgres.describe(config, "primary"),
            stop_signal=signal.SIGINT,  # PostgreSQL's fast shutdown
            prepare=init_primary,
            startup_ready=lambda: postgres.ensure_superuser_ready(config),
            on_ready=lambda: _bootstrap_primary(config, report),
        ),
        Component(
            "postgres-replica",
            command=lambda: postgres.command(
                config, "replica", timescaledb=storage.recorded(config) == "timescaledb"
            ),
            ready=lambda: postgres.ready(config, "replica"),
            ports=((config.postgres_replica_port, "TELEMETRY_POSTGRES_REPLICA_PORT"),),
            endpoint={"dsn": postgres.dsn(config, "replica")},
            describe=lambda: postgres.describe(config, "replica"),
            after=("postgres-primary",),
            stop_signal=signal.SIGINT,
            prepare=init_replica,
        ),
    ]


def _patroni(config: StackConfig, report: Callable[[str], None]) -> list[Component]:
    """Every one supervised: a node killed comes back and rejoins (as a replica, rewound,
    when the other was promoted meanwhile); etcd keeps its data on disk."""
    nodes = [
        Component(
            patroni.name(node),
            command=lambda node=node: patroni.command(config, node),  # type: ignore[misc]
            prepare=lambda node=node: patroni.prepare(  # type: ignore[misc]
                config, node, timescaledb=storage.on_timescaledb(config)
            ),
            ready=lambda node=node: patroni.ready(config, node),  # type: ignore[misc]
            # Not its PostgreSQL's port: a Patroni killed alone leaves its server running
            # (Patroni starts it in a session of its own), and the one started again
            # adopts it rather than finding the port taken.
            ports=((patroni.rest_port(config, node), "TELEMETRY_PATRONI_PORT"),),
            endpoint={"api": patroni.rest_url(config, node)},
            describe=lambda node=node: patroni.describe(config, node),  # type: ignore[misc]
            after=(etcd.NAME,),
            supervised=True,
        )
        for node in postgres.ha_nodes()
    ]

    return [
        Component(
            etcd.NAME,
            command=lambda: etcd.command(config),
            prepare=lambda: etcd.prepare(config),
            ready=lambda: etcd.ready(config),
            ports=(
                (config.etcd_port, "TELEMETRY_ETCD_PORT"),
                (config.etcd_peer_port, "TELEMETRY_ETCD_PEER_PORT"),
            ),
            endpoint={"url": etcd.url(config)},
            supervised=True,
        ),
        *nodes,
        Component(
            haproxy_db.NAME,
            command=lambda: haproxy_db.command(config),
            prepare=lambda: haproxy_db.prepare(config),
            ready=lambda: haproxy_db.ready(config),
            ports=(
                (config.postgres_primary_port, "TELEMETRY_POSTGRES_PRIMARY_PORT"),
                (config.postgres_replica_port, "TELEMETRY_POSTGRES_REPLICA_PORT"),
            ),
            endpoint={
                "dsn": postgres.dsn(config, "primary"),
                "dsn_replica": postgres.dsn(config, "replica"),
            },
            after=tuple(c.name for c in nodes),
            # Roles and migrations need only the leader behind the primary's port.
            startup_ready=lambda: haproxy_db.settled(config),
            on_ready=lambda: _bootstrap_primary(config, report),
            supervised=True,
        ),
    ]


def _kafka(config: StackConfig, report: Callable[[str], None]) -> list[Component]:
    """Kafka's nodes, all started at once: a cluster's brokers answer once a majority of
    its controllers has elected a leader. The last one makes the topics, once every
    broker is registered (a topic's three copies need three brokers)."""

    def create_topics() -> None:
        if not wait_until(lambda: kafka.all_registered(config), config.startup_timeout_s, 0.5):
            raise StackError(f"not every one of {config.kafka_brokers} Kafka brokers registered")
        report("creating Kafka topics")
        kafka.create_topics(config)

    last = config.kafka_brokers
    return [
        Component(
            kafka.name(config, node),
            command=lambda node=node: kafka.command(config, node),  # type: ignore[misc]
            prepare=lambda node=node: kafka.prepare(config, node),  # type: ignore[misc]
            ready=lambda node=node: kafka.ready(config, node),  # type: ignore[misc]
            ports=(
                (kafka.broker_port(config, node), "TELEMETRY_KAFKA_PORT"),
                (kafka.controller_port(config, node), "TELEMETRY_KAFKA_CONTROLLER_PORT"),
            ),
            endpoint={"bootstrap": config.kafka_bootstrap},
            on_ready=create_topics if node == last else _nothing,
            # A cluster's broker killed or crashed rejoins and catches up from the others;
            # a lone broker is a data store, left to an operator like PostgreSQL.
            supervised=config.kafka_brokers > 1,
        )
        for node in kafka.nodes(config)
    ]


def _after_every_broker(config: StackConfig, result: list[Component]) -> list[Component]:
    """`after=("kafka",)` means every broker of a cluster."""
    brokers = tuple(kafka.names(config))
    if brokers == ("kafka",):
        return result
    return [
        replace(c, after=tuple(n for a in c.after for n in (brokers if a == "kafka" else (a,))))
        for c in result
    ]


def _services(config: StackConfig) -> list[Component]:
    """Our service processes, each supervised."""
    result = []
    for spec in services.specs(config):
        result.append(
            Component(
                spec.name,
                command=lambda spec=spec: services.command(spec),  # type: ignore[misc]
                ready=lambda spec=spec: services.ready(spec),  # type: ignore[misc]
                live=lambda spec=spec: services.live(spec),  # type: ignore[misc]
                ports=((spec.port, spec.port_env),),
                endpoint=spec.endpoint,
                after=spec.after,
                # Our services are stateless, so starting one again is safe; a Faust
                # worker joining while its group rebalances has been seen to stop during
                # start-up (in CI, once; the log had no error to say why).
                start_attempts=3,
                supervised=True,
            )
        )
    return result


def _front(config: StackConfig) -> list[Component]:
    """HAProxy and the edge, the ops exporter and Prometheus, and last the supervisor."""
    service_names = tuple(s.name for s in services.specs(config))
    return [
        # Health checks bring each process into HAProxy's rotation as it becomes ready.
        Component(
            haproxy.NAME,
            command=lambda: haproxy.command(config),
            prepare=lambda: haproxy.prepare(config),
            ready=lambda: haproxy.ready(config),
            ports=(
                (config.haproxy_port, "TELEMETRY_HAPROXY_PORT"),
                (config.haproxy_stats_port, "TELEMETRY_HAPROXY_STATS_PORT"),
            ),
            endpoint={
                "url": haproxy.url(config),
                "metrics": haproxy.stats_url(config) + "/metrics",
            },
            # `up --api 3` on a running stack: the configuration follows the topology.
            on_ready=lambda: haproxy.follow(config),
            supervised=True,
        ),
        Component(
            edge.NAME,
            command=lambda: edge.command(config),
            ready=lambda: edge.ready(config),
            ports=((config.edge_port, "TELEMETRY_EDGE_PORT"),),
            endpoint={"url": edge.url(config), "ws": edge.ws_url(config)},
            after=(haproxy.NAME,),
            prepare=lambda: edge.prepare(config),
            supervised=True,
        ),
        Component(
            ops_exporter.NAME,
            command=lambda: ops_exporter.command(config),
            ready=lambda: ops_exporter.ready(config),
            ports=((config.ops_exporter_port, "TELEMETRY_OPS_EXPORTER_PORT"),),
            endpoint={"metrics": ops_exporter.url(config) + "/metrics"},
            after=("kafka", "pgbouncer"),
            supervised=True,
        ),
        *(
            Component(
                exporter.name,
                command=lambda exporter=exporter: exporter.command,  # type: ignore[misc]
                ready=lambda exporter=exporter: exporters.ready(exporter),  # type: ignore[misc]
                prepare=exporter.prepare,
                ports=((exporter.port, f"TELEMETRY_{exporter.job.upper()}_EXPORTER_PORT"),),
                endpoint={"metrics": exporter.url + "/metrics"},
                after=(exporter.after,),
                supervised=True,
            )
            for exporter in exporters.exporters(config)
        ),
        Component(
            node_exporter.NAME,
            command=lambda: node_exporter.command(config),
            prepare=lambda: node_exporter.prepare(config),
            ready=lambda: node_exporter.ready(config),
            ports=((config.node_exporter_port, "TELEMETRY_NODE_EXPORTER_PORT"),),
            endpoint={"metrics": node_exporter.url(config) + "/metrics"},
            supervised=True,
        ),
        Component(
            alertmanager.NAME,
            command=lambda: alertmanager.command(config),
            prepare=lambda: alertmanager.prepare(config),
            ready=lambda: alertmanager.ready(config),
            ports=((config.alertmanager_port, "TELEMETRY_ALERTMANAGER_PORT"),),
            endpoint={"url": alertmanager.url(config)},
            supervised=True,
        ),
        Component(
            prometheus.NAME,
            command=lambda: prometheus.command(config),
            prepare=lambda: prometheus.prepare(config),
            ready=lambda: prometheus.ready(config),
            ports=((config.prometheus_port, "TELEMETRY_PROMETHEUS_PORT"),),
            endpoint={"url": prometheus.url(config)},
            after=(ops_exporter.NAME, alertmanager.NAME, node_exporter.NAME),
            # `up --api 3` on a running stack: the scrape targets follow the topology.
            on_ready=lambda: prometheus.follow(config),
            supervised=True,
        ),
        # Last: it starts once everything it may restart is up.
        Component(
            supervisor.NAME,
            command=lambda: supervisor.command(config),
            ready=lambda: True,
            ports=(),
            endpoint={},
            after=(*service_names, edge.NAME),
            stop_signal=signal.SIGTERM,
        ),
    ]


def _in_containers(config: StackConfig, result: list[Component]) -> list[Component]:
    """The container runtime: the engine's API first, and every component but the
    supervisor in a container, started once the API answers. The supervisor stays a local
    process, as an engine's restart policy would be."""
    api = Component(
        engine.NAME,
        command=lambda: engine.command(config),
        prepare=lambda: engine.prepare(config),
        ready=lambda: engine.ready(config),
        ports=(),
        endpoint={"docker_host": engine.docker_host(config)},
    )
    return [api] + [
        c if c.name == supervisor.NAME else replace(c, after=(engine.NAME, *c.after))
        for c in result
    ]
