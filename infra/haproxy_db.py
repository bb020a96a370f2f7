"""HAProxy in TCP mode in front of Patroni's nodes (`postgres_ha`): the primary's port
leads to the node whose Patroni answers 200 on /primary, the replica's port to a node
answering 200 on /replica, or to the primary while no replica runs (just after a failover,
before the old leader is back, or while the standby is away); the leader's read sessions
end when a replica is back, so reads move to it. PgBouncer, the migrations and the ops
exporter connect to these two ports, never to a node, so a failover needs no client to be
told of it."""

from pathlib import Path

import psycopg

from infra import haproxy, patroni, postgres
from infra.config import StackConfig
from infra.launch import Command, Mount
from infra.procs import HAPROXY_USER, StackError, own_tree, run

NAME = "haproxy-db"


def conf_dir(config: StackConfig) -> Path:
    return config.run_dir / "haproxy-db.d"


def config_path(config: StackConfig) -> Path:
    return conf_dir(config) / "haproxy.cfg"


def sockets_dir(config: StackConfig) -> Path:
    """Where HAProxy makes its runtime API's socket: its user's own dir."""
    return config.run_dir / "haproxy-db"


def socket_path(config: StackConfig) -> Path:
    return sockets_dir(config) / "haproxy.sock"


def _backend(config: StackConfig, backend: str, check: str, extra: str = "") -> str:
    servers = "".join(
        f"    server {patroni.name(node)} 127.0.0.1:{postgres.node_port(config, node)}"
        f" check port {patroni.rest_port(config, node)}{extra}\n"
        for node in postgres.ha_nodes()
    )
    return f"""\
backend {backend}
    option httpchk
    http-check send meth GET uri {check}
    http-check expect status 200
{servers}"""


def _leader_as_backup(config: StackConfig) -> str:
    """The replica backend's backup servers: each node as the primary backend sees it
    (`track`), so reads reach the leader while no replica is up."""
    return "".join(
        f"    server {patroni.name(node)}-leading 127.0.0.1:{postgres.node_port(config, node)}"
        f" backup track primary/{patroni.name(node)}\n"
        for node in postgres.ha_nodes()
    )


def render(config: StackConfig) -> str:
    """The whole configuration; a pure function of the ports."""
    return f"""\
# Written by the stack (infra/haproxy_db.py): edits are overwritten.
global
    maxconn 4000
    log stdout format raw local0 info
    # Read-only: the stack reads the servers' check states from it (`ready`).
    stats socket {socket_path(config)} mode 600 level user

defaults
    mode tcp
    log global
    option tcplog
    option dontlognull
    timeout connect 2s
    # PgBouncer's server connections idle for minutes; keepalives find a dead peer.
    timeout client 30m
    timeout server 30m
    option clitcpka
    option srvtcpka
    timeout check 2s
    # A node is checked every second: a new leader is in rotation within about a second
    # of Patroni promoting it, and a demoted one leaves it as fast. Leaving it ends the
    # connections it held, so PgBouncer and the pools reconnect to the new leader at once
    # instead of waiting on a server that no longer leads.
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions

frontend primary
    bind 127.0.0.1:{config.postgres_primary_port}
    default_backend primary

frontend replica
    bind 127.0.0.1:{config.postgres_replica_port}
    default_backend replica

{_backend(config, "primary", "/primary")}
# A replica back in rotation ends the sessions its backups (the leader) held meanwhile:
# PgBouncer's read connections would otherwise stay on the leader for their lifetime.
{_backend(config, "replica", "/replica", " on-marked-up shutdown-backup-sessions")}\
{_leader_as_backup(config)}"""


def prepare(config: StackConfig) -> None:
    conf_dir(config).mkdir(parents=True, exist_ok=True)
    path = config_path(config)
    candidate = path.with_suffix(".new")
    candidate.write_text(render(config))
    run(haproxy.check_command(candidate, haproxy.binary()))
    candidate.replace(path)
    own_tree(sockets_dir(config), HAPROXY_USER)


def command(config: StackConfig) -> Command:
    argv = [haproxy.BINARY, "-W", "-db", "-f", str(config_path(config))]
    mounts = (Mount(conf_dir(config)), Mount(sockets_dir(config), writable=True))
    return Command(NAME, "haproxy", argv, user=HAPROXY_USER, mounts=mounts)


def checked(rows: list[dict[str, str]]) -> bool:
    """Every node has had its first check and both ports lead somewhere. A freshly
    started HAProxy counts each server up until its first check (`INI`), so until then the
    primary's port may send a connection to a standby: a write there fails read-only."""
    ours = [row for row in rows if row.get("pxname") in ("primary", "replica")]
    backends = {row["pxname"]: row.get("status") for row in ours if row.get("svname") == "BACKEND"}
    return backends == {"primary": "UP", "replica": "UP"} and all(
        row.get("check_status") != "INI" for row in ours
    )


def settled(config: StackConfig) -> bool:
    """HAProxy's checks have settled: the primary's port leads to the leader alone."""
    try:
        return checked(haproxy.stat_rows(haproxy.ask(socket_path(config), "show stat")))
    except StackError:
        return False


def _logs_in(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def ready(config: StackConfig) -> bool:
    """Its checks have settled and the application logs in through both ports."""
    return (
        settled(config)
        and _logs_in(postgres.dsn(config, "primary"))
        and _logs_in(postgres.dsn(config, "replica"))
    )
