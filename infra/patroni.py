"""PostgreSQL under Patroni (Debian's patroni 3.0.2): two nodes, each a Patroni process
running its own PostgreSQL, with the leader lock in etcd. Patroni makes the first node's
cluster (initdb), clones the other (pg_basebackup), keeps one standby synchronous,
promotes the standby when the leader is lost, and brings an old leader back as a replica
(pg_rewind). HAProxy (infra/haproxy_db.py) sends clients to whichever node leads.

Each node's configuration is JSON, which Patroni's YAML loader reads as it is."""

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from infra import postgres
from infra.config import StackConfig
from infra.install import PG_BIN
from infra.launch import Command, Mount
from infra.procs import DATABASE_USER, StackError, chown_for, wait_until, write_private

BINARY = "/usr/bin/patroni"
SCOPE = "telemetry"
REWIND_USER = "rewinder"
# Who may change the cluster through Patroni's REST API (a switchover, a restart): its
# health and status answer anyone, as HAProxy's checks need.
REST_USER = "patroni"

# How fast a lost leader is replaced: its lock lapses TTL s after its last renewal, which
# it makes every LOOP_WAIT s; a replica then takes the lock on its next loop. Patroni
# wants TTL >= LOOP_WAIT + 2 * RETRY_TIMEOUT (a leader that cannot reach etcd demotes
# itself before its lock can lapse, so two never lead at once).
TTL_S = 15
LOOP_WAIT_S = 3
RETRY_TIMEOUT_S = 6

# Settings PostgreSQL needs equal on every node (Patroni takes them from etcd only, and
# checks a replica against them; TimescaleDB's workers among them); set when the cluster
# is made (`patronictl edit-config` changes them afterwards). The plain layout's values
# (postgres.PRIMARY_CONF).
CLUSTER_SETTINGS = {
    "max_connections": 200,
    "max_worker_processes": postgres.TIMESCALEDB_SETTINGS["max_worker_processes"],
    "max_wal_senders": 5,
    "max_replication_slots": 5,
    "wal_keep_size": "512MB",
    # pg_rewind needs every page's first change after a checkpoint in the WAL.
    "wal_log_hints": "on",
}


def name(node: int) -> str:
    return f"postgres-{node}"


def config_path(config: StackConfig, node: int) -> Path:
    return postgres.node_dir(config, node) / "patroni.yml"


def rest_port(config: StackConfig, node: int) -> int:
    return config.patroni_port + node - 1


def rest_url(config: StackConfig, node: int) -> str:
    return f"http://127.0.0.1:{rest_port(config, node)}"


def render(config: StackConfig, node: int, *, timescaledb: bool) -> dict[str, Any]:
    """Node `node`'s Patroni configuration (pure: no I/O)."""
    secret = postgres.password(config)
    local = f"127.0.0.1:{postgres.node_port(config, node)}"
    rest = f"127.0.0.1:{rest_port(config, node)}"
    parameters = postgres.server_settings(config, timescaledb=timescaledb)
    return {
        "scope": SCOPE,
        "name": name(node),
        "restapi": {
            "listen": rest,
            "connect_address": rest,
            "authentication": {"username": REST_USER, "password": secret},
        },
        "etcd3": {"hosts": [f"127.0.0.1:{config.etcd_port}"]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL_S,
                "loop_wait": LOOP_WAIT_S,
                "retry_timeout": RETRY_TIMEOUT_S,
                # A commit is acknowledged once the standby has it too, so a promoted
                # standby has every write a client (or the stream's Kafka offset) was
                # told of. Not strict: with the standby gone the leader goes on alone
                # rather than stopping every write (docs/ha.md).
                "synchronous_mode": True,
                "synchronous_mode_strict": False,
                # etcd lost: the leader keeps leading while it can reach every other
                # node's Patroni (which then cannot be promoting), instead of demoting.
                "failsafe_mode": True,
                # No replica more than this behind may be promoted.
                "maximum_lag_on_failover": 16 * 1024 * 1024,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": CLUSTER_SETTINGS,
                },
            },
            "initdb": [
                {"encoding": "UTF8"},
                {"locale": "C.UTF-8"},
                {"auth-local": "trust"},
                {"auth-host": "scram-sha-256"},
            ],
        },
        "postgresql": {
            "listen": local,
            "connect_address": local,
            "data_dir": str(postgres.node_data_dir(config, node)),
            "bin_dir": str(PG_BIN),
            "pgpass": str(postgres.node_dir(config, node) / "pgpass"),
            # Patroni talks to its own server as the superuser over the private socket.
            "use_unix_socket": True,
            "authentication": {
                "superuser": {"username": postgres.SUPERUSER, "password": secret},
                "replication": {"username": postgres.REPLICATION_USER, "password": secret},
                "rewind": {"username": REWIND_USER, "password": secret},
            },
            "parameters": {k: v for k, v in parameters.items() if k not in CLUSTER_SETTINGS}
            | {"unix_socket_directories": str(postgres.node_socket_dir(config, node))},
            "pg_hba": [
                "local all all trust",
                f"host all {postgres.SUPERUSER} 127.0.0.1/32 reject",
                f"host replication {postgres.REPLICATION_USER} 127.0.0.1/32 scram-sha-256",
                "host all all 127.0.0.1/32 scram-sha-256",
            ],
        },
        # No /dev/watchdog here: a hung node is fenced by its lock's lapse alone.
        "watchdog": {"mode": "off"},
    }


def prepare(config: StackConfig, node: int, *, timescaledb: bool) -> None:
    postgres.check_layout(config)
    root = postgres.pg_root(config)
    root.mkdir(parents=True, exist_ok=True)
    for parent in (config.state_dir, root):
        parent.chmod(parent.stat().st_mode | 0o711)
    for path in (postgres.node_dir(config, node), postgres.node_socket_dir(config, node)):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        chown_for(path, DATABASE_USER)
    # Passwords inside: readable by the postgres user alone.
    path = config_path(config, node)
    write_private(path, orjson.dumps(render(config, node, timescaledb=timescaledb)).decode())
    chown_for(path, DATABASE_USER)


def command(config: StackConfig, node: int) -> Command:
    mounts = (Mount(postgres.node_dir(config, node), True),)
    return Command(
        name(node), "patroni", [BINARY, str(config_path(config, node))],
        user=DATABASE_USER, mounts=mounts,
    )  # fmt: skip


def _get(config: StackConfig, node: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(rest_url(config, node) + path, timeout=2)
    except httpx.HTTPError:
        return None


def ready(config: StackConfig, node: int) -> bool:
    """Its PostgreSQL runs, as the leader or a replica that streams from it."""
    answer = _get(config, node, "/health")
    return answer is not None and answer.status_code == 200


def is_leader(config: StackConfig, node: int) -> bool:
    answer = _get(config, node, "/primary")
    return answer is not None and answer.status_code == 200


def is_replica(config: StackConfig, node: int) -> bool:
    answer = _get(config, node, "/replica")
    return answer is not None and answer.status_code == 200


def leader(config: StackConfig) -> int | None:
    return next((node for node in postgres.ha_nodes() if is_leader(config, node)), None)


def replicas(config: StackConfig) -> list[int]:
    return [node for node in postgres.ha_nodes() if is_replica(config, node)]


def members(config: StackConfig) -> list[dict[str, Any]]:
    """Every node's name, role, state, timeline and lag, as any Patroni sees the cluster."""
    for node in postgres.ha_nodes():
        answer = _get(config, node, "/cluster")
        if answer is not None and answer.status_code == 200:
            return list(answer.json().get("members", []))
    return []


def describe(config: StackConfig, node: int) -> dict[str, str]:
    """For `telemetry status`: the node's role, timeline and replay lag (bytes)."""
    for member in members(config):
        if member.get("name") == name(node):
            found = {
                "role": str(member.get("role", "")),
                "state": str(member.get("state", "")),
                "timeline": str(member.get("timeline", "")),
            }
            if "lag" in member:
                found["lag_bytes"] = str(member["lag"])
            return found
    return {}


def postmaster_pid(config: StackConfig, node: int) -> int | None:
    """The pid of the node's PostgreSQL server, from its postmaster.pid (None: stopped)."""
    path = postgres.node_data_dir(config, node) / "postmaster.pid"
    try:
        return int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def kill_server(config: StackConfig, node: int) -> None:
    """SIGKILL to the node's PostgreSQL server and its backends (a fault, for tests and
    benchmarks): Patroni runs it in a session of its own, so killing Patroni leaves it."""
    pid = postmaster_pid(config, node)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def _set_paused(config: StackConfig, paused: bool) -> None:
    """Patroni's maintenance mode on or off, in the cluster's configuration (etcd); every
    node follows it on its next loop, which this waits for."""
    _change(config, "PATCH", leader(config) or 1, "/config", {"pause": paused}, "maintenance")

    def followed() -> bool:
        states = [_get(config, node, "/patroni") for node in postgres.ha_nodes()]
        return all(s is not None and bool(s.json().get("pause")) == paused for s in states)

    if not wait_until(followed, 6 * LOOP_WAIT_S, 0.2):
        raise StackError(f"Patroni's nodes did not {'enter' if paused else 'leave'} maintenance")


@contextlib.contextmanager
def maintenance(config: StackConfig) -> Iterator[None]:
    """Patroni leaves both servers alone for the block: no failover, and no undoing of what
    an operator (or a test) does to a server, such as a replay paused on purpose, which
    Patroni otherwise resumes on its next loop."""
    _set_paused(config, True)
    try:
        yield
    finally:
        _set_paused(config, False)


def switchover(config: StackConfig, candidate: int | None = None) -> str:
    """Moves the leadership on purpose to `candidate` (by default the other node): Patroni
    stops the leader cleanly and promotes the synchronous standby, so no commit is lost;
    the old leader follows the new one. Returns Patroni's answer; StackError on refusal."""
    current = leader(config)
    if current is None:
        raise StackError("no PostgreSQL node leads now: nothing to switch over")
    if candidate is None:
        candidate = next(node for node in postgres.ha_nodes() if node != current)
    if candidate == current:
        raise StackError(f"{name(candidate)} leads already")
    body = {"leader": name(current), "candidate": name(candidate)}
    return _change(config, "POST", current, "/switchover", body, "switchover", timeout_s=90)


def _change(
    config: StackConfig,
    method: str,
    node: int,
    path: str,
    body: dict[str, Any],
    what: str,
    timeout_s: float = 10,
) -> str:
    """A change through node `node`'s REST API (behind its basic auth); Patroni's answer,
    or StackError when it does not answer or refuses."""
    try:
        answer = httpx.request(
            method,
            rest_url(config, node) + path,
            json=body,
            auth=(REST_USER, postgres.password(config)),
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise StackError(f"Patroni did not answer the {what}: {exc}") from exc
    if answer.status_code != 200:
        raise StackError(f"Patroni refused the {what} ({answer.status_code}): {answer.text}")
    return answer.text
