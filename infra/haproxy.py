"""HAProxy, the L7 balancer (docs/edge.md): one port for every route, each path to its
service's processes, health-checked on /readyz, idempotent requests retried on another
process when one dies. Its configuration is written from the stack's topology and reloaded
in place when that changes (`telemetry scale`)."""

import csv
import io
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from infra import services
from infra.config import StackConfig
from infra.launch import Command, Mount
from infra.procs import HAPROXY_USER, StackError, own_tree, run
from runtime.http import RETRY_AFTER_S

NAME = "haproxy"
# The services behind it (the others have no public routes).
ROUTED = ("ingest", "api", "notifier")
BINARY = "/usr/sbin/haproxy"
MONITOR_PATH = "/lb/healthz"
# Routes (docs/edge.md): everything not matched goes to the api.
INGEST_PATHS = ("/v1/pings", "/osmand")
WS_PATH = "/ws"


@dataclass(frozen=True)
class Server:
    """One process behind a HAProxy backend: its component name and port."""

    name: str  # "api-2"
    port: int


@dataclass(frozen=True)
class Topology:
    """The processes behind each backend."""

    ingest: tuple[Server, ...]
    api: tuple[Server, ...]
    notifier: tuple[Server, ...]


# HAProxy's own answers, in the contract's error shape (docs/api.md) rather than its
# HTML pages: (status, reason, code, message).
ERRORS = (
    (400, "Bad Request", "bad_request", "the request could not be parsed"),
    (408, "Request Timeout", "request_timeout", "the request did not arrive in time"),
    (
        502,
        "Bad Gateway",
        "bad_gateway",
        "the service failed before answering; a request that changes something may or may "
        "not have been applied: retry it with the same Idempotency-Key",
    ),
    (503, "Service Unavailable", "unavailable", "no process of this service is ready"),
    (504, "Gateway Timeout", "gateway_timeout", "the service did not answer in time"),
)


# Every 503 (ours, or a service's) tells its client to come back in 1 to 3 s, drawn per
# answer: clients failed together do not all return together.
# The stats page's and exporter's share of the process's connections.
STATS_MAXCONN = 100
_LOW, _HIGH = RETRY_AFTER_S
RETRY_SPREAD = (
    f"    http-after-response set-header Retry-After %[rand({_HIGH - _LOW + 1}),add({_LOW})]"
    " if { status 503 }"
)


def error_file(status: int, reason: str, code: str, message: str) -> str:
    body = orjson.dumps({"error": {"code": code, "message": message, "details": None}})
    headers = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if status == 503:
        headers.append("Retry-After: 1")  # spread per answer by the frontend (RETRY_SPREAD)
    return "\r\n".join(headers) + "\r\n\r\n" + body.decode()


def conf_dir(config: StackConfig) -> Path:
    """Its configuration and error pages: a dir, so that a configuration replaced by a
    rename is seen by a container that mounts it."""
    return config.run_dir / "haproxy.d"


def errors_dir(config: StackConfig) -> Path:
    return conf_dir(config) / "errors"


def topology(config: StackConfig) -> Topology:
    """The processes the stack's configuration runs (its recorded topology applied)."""
    specs = services.specs(config)

    def of(module: str) -> tuple[Server, ...]:
        return tuple(Server(s.name, s.port) for s in specs if s.module == module)

    return Topology(ingest=of("ingest"), api=of("api"), notifier=of("notifier"))


def config_path(config: StackConfig) -> Path:
    return conf_dir(config) / "haproxy.cfg"


def sockets_dir(config: StackConfig) -> Path:
    """Where HAProxy makes its sockets: its user's own dir."""
    return config.run_dir / "haproxy"


def socket_path(config: StackConfig) -> Path:
    return sockets_dir(config) / "haproxy.sock"


def master_socket_path(config: StackConfig) -> Path:
    return sockets_dir(config) / "master.sock"


def url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.haproxy_port}"


def stats_url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.haproxy_stats_port}"


def _servers(servers: Iterable[Server]) -> str:
    lines = [f"    server {s.name} 127.0.0.1:{s.port} check" for s in servers]
    # A backend with no process (scaled to 0) answers 503 rather than failing to load.
    return "\n".join(lines) if lines else "    # no processes"


def render(config: StackConfig, topology: Topology) -> str:
    """The whole configuration; a pure function of the ports and the topology."""
    return f"""\
# Written by the stack (infra/haproxy.py) from its topology: edits are overwritten.
global
    maxconn {_total(config) + STATS_MAXCONN}
    # The master passes the listening sockets to the new worker on a reload: no connection
    # is refused while it happens.
    stats socket {socket_path(config)} mode 600 level admin expose-fd listeners
    # After a reload the old worker keeps established connections (WebSocket tunnels) at
    # most this long.
    hard-stop-after {config.haproxy_hard_stop_after_s}s
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    # Only what went wrong reaches the log (a 5xx, a retry, a server down): not every
    # request.
    option dontlog-normal
{_errorfiles(config)}
    # A loopback connect slower than this met a full backlog: better another process. It
    # is also the pause before a retry.
    timeout connect 500ms
    timeout client 60s
    timeout server 30s
    timeout http-request 10s
    # Longer than the edge keeps idle connections to us, so the edge closes them first
    # (a request never meets a connection we are closing).
    timeout http-keep-alive 60s
    timeout queue 5s
    # WebSockets: the notifier pings every 25 s, so an hour without a byte is a dead peer.
    timeout tunnel 1h
    timeout client-fin 5s
    # A request that meets a dead process goes to another one. A connection that failed
    # carried nothing, so any method is retried then; otherwise only idempotent ones are
    # (the frontend disables the rest), so a POST in flight at a crash gets a 502.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout
    # A process whose port refuses a connection is taken out at once, not after the checks.
    default-server inter 1s fastinter 500ms downinter 250ms fall 2 rise 1
    default-server observe layer4 error-limit 1 on-error mark-down

frontend public
    bind 127.0.0.1:{config.haproxy_port}
    maxconn {_total(config)}
    monitor-uri {MONITOR_PATH}
    option forwardfor
{RETRY_SPREAD}
    http-request disable-l7-retry unless METH_GET || METH_HEAD || METH_OPTIONS
    acl to_ingest path {" ".join(INGEST_PATHS)}
    acl to_notifier path {WS_PATH}
    # Each service's own budget of the connections: past it, its requests get 503 and the
    # others' go on (a WebSocket holds its connection for its whole life).
{_budgets(config)}
    use_backend ingest if to_ingest
    use_backend notifier if to_notifier
    default_backend api

# The stats page and the Prometheus exporter, on a port of their own.
frontend stats
    bind 127.0.0.1:{config.haproxy_stats_port}
    no log
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /
    stats refresh 5s

backend ingest
    balance roundrobin
{_check()}
{_servers(topology.ingest)}

backend api
    balance roundrobin
{_check()}
{_servers(topology.api)}

backend notifier
    # Connections last: the least loaded process takes the next one.
    balance leastconn
{_check()}
{_servers(topology.notifier)}
"""


def _budgets(config: StackConfig) -> str:
    routes = (
        ("to_ingest", "ingest", config.haproxy_ingest_maxconn),
        ("to_notifier", "notifier", config.haproxy_notifier_maxconn),
        ("!to_ingest !to_notifier", "api", config.haproxy_api_maxconn),
    )
    return "\n".join(
        f"    http-request deny deny_status 503 if {route} {{ be_conn({backend}) ge {most} }}"
        for route, backend, most in routes
    )


def _total(config: StackConfig) -> int:
    c = config
    return c.haproxy_ingest_maxconn + c.haproxy_api_maxconn + c.haproxy_notifier_maxconn


def _errorfiles(config: StackConfig) -> str:
    directory = errors_dir(config)
    return "\n".join(f"    errorfile {e[0]} {directory / f'{e[0]}.http'}" for e in ERRORS)


def _check() -> str:
    # HTTP/1.1 with a Host: the notifier's server (websockets) refuses HTTP/1.0.
    return (
        "    option httpchk\n"
        "    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost\n"
        "    http-check expect status 200"
    )


def write_errors(config: StackConfig) -> None:
    errors_dir(config).mkdir(parents=True, exist_ok=True)
    for error in ERRORS:
        (errors_dir(config) / f"{error[0]}.http").write_text(error_file(*error))


def write(config: StackConfig, topology: Topology) -> bool:
    """Writes the configuration, checked by HAProxy itself first; True when it changed."""
    write_errors(config)
    path = config_path(config)
    text = render(config, topology)
    if path.exists() and path.read_text() == text:
        return False
    candidate = path.with_suffix(".new")
    candidate.write_text(text)
    run(check_command(candidate, binary()))
    candidate.replace(path)
    return True


def check_command(path: Path, program: str = BINARY) -> list[str]:
    """HAProxy's own check of a configuration (the stack's, and compose's first run)."""
    return [program, "-c", "-q", "-f", str(path)]


def binary() -> str:
    found = shutil.which("haproxy") or (BINARY if Path(BINARY).exists() else None)
    if found is None:
        raise StackError("HAProxy is missing: install it with 'apt-get install haproxy'")
    return found


def prepare(config: StackConfig) -> None:
    binary()
    write(config, topology(config))
    own_tree(sockets_dir(config), HAPROXY_USER)


def command(config: StackConfig) -> Command:
    # -W: a master that stays our pid and runs the workers; -S: its CLI, which reloads
    # them; -db: in the foreground, logging to our log file.
    argv = [
        BINARY, "-W", "-db", "-S", str(master_socket_path(config)),
        "-f", str(config_path(config)),
    ]  # fmt: skip
    mounts = (Mount(conf_dir(config)), Mount(sockets_dir(config), writable=True))
    return Command(NAME, "haproxy", argv, user=HAPROXY_USER, mounts=mounts)


def follow(config: StackConfig) -> bool:
    """Writes the configuration for the stack's topology and, when it changed, reloads the
    running HAProxy: the master starts new workers on it, and the old ones finish the
    connections they hold (up to `hard-stop-after`). True when it reloaded."""
    if not write(config, topology(config)):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as master:
            master.settimeout(5)
            master.connect(str(master_socket_path(config)))
            master.sendall(b"reload\n")
    except OSError as exc:
        raise StackError(f"could not reload HAProxy through its master socket: {exc}") from exc
    return True


def runtime_command(config: StackConfig, command: str) -> str:
    """One command on the current worker's runtime API (its admin socket); its answer."""
    return ask(socket_path(config), command)


def ask(path: Path, command: str) -> str:
    """One command on the runtime API at the socket `path`; its answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as api:
            api.settimeout(5)
            api.connect(str(path))
            api.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := api.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise StackError(f"HAProxy's runtime API did not answer {command!r}: {exc}") from exc
    return b"".join(chunks).decode(errors="replace")


# The services HAProxy balances: each one's backend has its name.
BALANCED = ("ingest", "api", "notifier")


def set_server_state(config: StackConfig, backend: str, server: str, state: str) -> None:
    """`ready`, `drain` (no new request, those in flight finish) or `maint`."""
    answer = runtime_command(config, f"set server {backend}/{server} state {state}").strip()
    if answer:
        raise StackError(f"HAProxy refused to set {backend}/{server} {state}: {answer}")


def stat_rows(answer: str) -> list[dict[str, str]]:
    """`show stat`'s answer as rows (pxname, svname, status, check_status...)."""
    return list(csv.DictReader(io.StringIO(answer.lstrip("# "))))


def _stat_row(config: StackConfig, backend: str, server: str) -> dict[str, str] | None:
    for row in stat_rows(runtime_command(config, "show stat")):
        if row.get("pxname") == backend and row.get("svname") == server:
            return row
    return None


def has_server(config: StackConfig, backend: str, server: str) -> bool:
    return _stat_row(config, backend, server) is not None


def server_stat(config: StackConfig, backend: str, server: str) -> dict[str, str]:
    """The server's row of `show stat` (status, scur: its connections now...)."""
    row = _stat_row(config, backend, server)
    if row is None:
        raise StackError(f"HAProxy has no server {backend}/{server}")
    return row


def ready(config: StackConfig) -> bool:
    try:
        return httpx.get(url(config) + MONITOR_PATH, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
