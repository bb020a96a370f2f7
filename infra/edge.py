"""The edge: nginx as the cache in front of HAProxy (the CDN's role, docs/edge.md). It
keeps only what the api marks `public` (share views), for as long as the api's
`Cache-Control` says, fetches a missing or expired key once however many ask
(`proxy_cache_lock`, stale while updating), and never keeps an authenticated or `private`
answer. Everything else, WebSocket upgrades included, passes through to HAProxy."""

import shutil
from pathlib import Path

import httpx
import orjson

from infra import haproxy
from infra.config import StackConfig
from infra.launch import Command, Mount
from infra.procs import NGINX_USER, StackError, own_tree, run
from schemas.tasks import MAX_PHOTO_BYTES

NAME = "edge"
BINARY = "/usr/sbin/nginx"
HEALTH_PATH = "/edge/healthz"
CACHE_STATUS_HEADER = "X-Cache-Status"
NO_ANSWER = (
    "no answer from the platform; a request that changes something may or may not have been "
    "applied: retry it with the same Idempotency-Key"
)
# The largest body the edge buffers for a JSON route (ingest's 256 KiB, the api's 64 KiB,
# with room), and for the proof photo's (a photo, and its multipart framing).
JSON_BODY_LIMIT_MIB = 1
PHOTO_BODY_LIMIT_MIB = MAX_PHOTO_BYTES // 2**20 + 1


def base_dir(config: StackConfig) -> Path:
    return config.state_dir / "edge"


def config_path(config: StackConfig) -> Path:
    return config.run_dir / "nginx.conf"


def url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.edge_port}"


def ws_url(config: StackConfig) -> str:
    return f"ws://127.0.0.1:{config.edge_port}{haproxy.WS_PATH}"


# What every route passes to HAProxy with. One upstream (HAProxy, which retries across
# processes itself). A pooled connection HAProxy closed as we used it (a reload closes the
# old workers' idle ones) is retried once on a new connection, for idempotent methods only:
# nginx never resends a POST or a PATCH without `non_idempotent`, which the ingest routes
# take: a ping is stored once however often it arrives (its key holds its id).
def _proxy(resend_posts: bool = False) -> str:
    retried = "error non_idempotent" if resend_posts else "error"
    return f"""\
            proxy_pass http://balancer;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_next_upstream {retried};
            proxy_next_upstream_tries 2;
            proxy_read_timeout 35s;"""


# How the edge caches (the share views, the only public answers). The api says how long
# an answer is fresh, and how long an expired one may still be served, bounded: while one
# background request refreshes it (conditionally: If-None-Match, which the api answers
# from its cache), its `stale-while-revalidate`, and while the api fails, its
# `stale-if-error`. No use_stale directive here: its conditions would override those
# bounds and keep an entry without end.
_CACHE = f"""\
            proxy_cache edge;
            proxy_cache_key $scheme$host$request_uri;
            proxy_cache_methods GET HEAD;
            # One request per key goes to the api while the others wait for its answer.
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_cache_lock_age 10s;
            proxy_cache_background_update on;
            proxy_cache_revalidate on;
            # A request with credentials neither reads nor fills the cache.
            proxy_cache_bypass $http_authorization $http_cookie;
            proxy_no_cache $http_authorization $http_cookie $edge_not_public;
            add_header {CACHE_STATUS_HEADER} $upstream_cache_status always;"""


def render(config: StackConfig) -> str:
    """The whole configuration; a pure function of the ports and paths."""
    base = base_dir(config)
    return f"""\
# Written by the stack (infra/edge.py): edits are overwritten.
worker_processes auto;
# A descriptor per connection, and some for the logs and the cache's and bodies' files.
worker_rlimit_nofile {config.edge_worker_connections + 1024};
pid {base / "nginx.pid"};
error_log stderr warn;
daemon off;

events {{
    worker_connections {config.edge_worker_connections};
}}

http {{
{_http(config)}

{_server(config)}
{_status_server(config)}}}
"""


def _http(config: StackConfig) -> str:
    """The http block's settings: temp paths, body limits and timeouts, the cache, the
    per-client limits, and the upstream (HAProxy)."""
    base = base_dir(config)
    requests_rate = config.edge_requests_per_client_s
    shares_rate = config.edge_share_requests_per_client_s
    return f"""\
    access_log off;
    client_body_temp_path {base / "body"};
    proxy_temp_path {base / "proxy"};
    fastcgi_temp_path {base / "fastcgi"};
    uwsgi_temp_path {base / "uwsgi"};
    scgi_temp_path {base / "scgi"};
    server_tokens off;
    # Bodies are buffered here before any route answers: each route takes what it needs
    # and no more. Past the JSON routes' own limits (the services answer those 413s in the
    # contract's shape), 1 MiB; the proof photo's route, below, a photo's. A client that
    # sends its headers or its body slower than this is dropped (a slow-loris).
    client_max_body_size {JSON_BODY_LIMIT_MIB}m;
    client_header_timeout 10s;
    client_body_timeout 15s;

    proxy_cache_path {base / "cache"} levels=1:2 keys_zone=edge:16m max_size=512m
                     inactive=10m use_temp_path=off;

    # Per client address: connections at once, requests a second (with a burst), and
    # share-link lookups a second (unauthenticated, and an unknown token costs the api a
    # database read). Past them, 429 with Retry-After.
    limit_conn_zone $binary_remote_addr zone=per_client:10m;
    limit_req_zone $binary_remote_addr zone=requests:10m rate={requests_rate}r/s;
    limit_req_zone $binary_remote_addr zone=shares:10m rate={shares_rate}r/s;
    limit_conn_status 429;
    limit_req_status 429;
    limit_conn_log_level warn;
    limit_req_log_level warn;

    # Only what the api marks public is kept: an answer without `public` in its
    # Cache-Control is never stored, whatever else it says.
    map $upstream_http_cache_control $edge_not_public {{
        "~*(^|[\\s,])public([\\s,]|$)" 0;
        default 1;
    }}
    map $http_upgrade $edge_connection {{
        default upgrade;
        "" "";
    }}

    upstream balancer {{
        server 127.0.0.1:{config.haproxy_port};
        keepalive 64;
        # Shorter than HAProxy keeps them, so we are the side that closes an idle one.
        keepalive_timeout 30s;
    }}"""


def _status_server(config: StackConfig) -> str:
    """nginx's own counters (stub_status) for its exporter: loopback, apart from the public
    port, so no client reaches them."""
    return f"""\
    server {{
        listen 127.0.0.1:{config.edge_status_port};
        access_log off;
        location = /stub_status {{
            stub_status;
        }}
        location / {{
            return 404;
        }}
    }}
"""


def _server(config: StackConfig) -> str:
    """The public server: its limits, our own errors in the contract's shape, the health
    path, the WebSocket tunnel and the routes (the photo's, share links cached, the rest)."""
    return f"""\
    server {{
        listen 127.0.0.1:{config.edge_port} backlog=4096;
        limit_conn per_client {config.edge_connections_per_client};
        limit_req zone=requests burst={config.edge_request_burst} nodelay;

        # Our own failures in the contract's error shape (HAProxy's pass through as they
        # are). A POST whose answer was lost may or may not have been applied: the client
        # retries it with the same Idempotency-Key.
        error_page 502 = @bad_gateway;
        error_page 504 = @gateway_timeout;
        error_page 413 = @too_large;
        error_page 429 = @too_many;
        location @bad_gateway {{
            default_type application/json;
            add_header Retry-After 1 always;
            return 502 '{_error("bad_gateway", NO_ANSWER)}';
        }}
        location @gateway_timeout {{
            default_type application/json;
            return 504 '{_error("gateway_timeout", "the platform did not answer in time")}';
        }}
        location @too_large {{
            default_type application/json;
            return 413 '{_error("payload_too_large", "the body is larger than this route takes")}';
        }}

        location @too_many {{
            default_type application/json;
            add_header Retry-After 1 always;
            return 429 '{_error("too_many_requests", "too many requests from this address")}';
        }}

        location = {HEALTH_PATH} {{
            default_type text/plain;
            return 200 "ok\\n";
        }}

        location = {haproxy.WS_PATH} {{
            proxy_pass http://balancer;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $edge_connection;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            # The notifier pings every 25 s; HAProxy's tunnel timeout is the real bound.
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}

        # The services' own metrics are for Prometheus, on their own ports: not public.
        location = /metrics {{
            default_type application/json;
            return 404 '{_error("not_found", "no such route")}';
        }}

        location ~ ^({"|".join(haproxy.INGEST_PATHS)})$ {{
{_proxy(resend_posts=True)}
        }}

        location ~ ^/v1/jobs/[^/]+/complete$ {{
            client_max_body_size {PHOTO_BODY_LIMIT_MIB}m;
{_proxy()}
        }}

        location ^~ /v1/share/ {{
            # Both limits: a location with its own limit_req inherits none of the server's.
            limit_req zone=requests burst={config.edge_request_burst} nodelay;
            limit_req zone=shares burst={2 * config.edge_share_requests_per_client_s} nodelay;
{_proxy()}

{_CACHE}
        }}

        location / {{
{_proxy()}

{_CACHE}
        }}
    }}
"""


def _error(code: str, message: str) -> str:
    return orjson.dumps({"error": {"code": code, "message": message, "details": None}}).decode()


def binary() -> str:
    found = shutil.which("nginx") or (BINARY if Path(BINARY).exists() else None)
    if found is None:
        raise StackError("nginx is missing: install it with 'apt-get install nginx'")
    return found


def check_command(path: Path, program: str = BINARY) -> list[str]:
    """nginx's own check of a configuration (the stack's, and compose's first run)."""
    # -e: the error log before the configuration is read (Debian's default is /var/log).
    return [program, "-t", "-q", "-e", "stderr", "-c", str(path)]


def prepare(config: StackConfig) -> None:
    """Writes the configuration, checked by nginx itself, and the directories it writes."""
    # As the user it runs as: a check by root would leave it files it cannot write.
    run(check_command(write(config), binary()), user=NGINX_USER)


def write(config: StackConfig) -> Path:
    """The configuration and the directories nginx writes in."""
    base = base_dir(config)
    for name in ("cache", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (base / name).mkdir(parents=True, exist_ok=True)
    own_tree(base, NGINX_USER)
    path = config_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(config))
    return path


def command(config: StackConfig) -> Command:
    argv = [BINARY, "-e", "stderr", "-c", str(config_path(config))]
    mounts = (Mount(config_path(config)), Mount(base_dir(config), writable=True))
    return Command(NAME, "nginx", argv, user=NGINX_USER, mounts=mounts)


def ready(config: StackConfig) -> bool:
    try:
        return httpx.get(url(config) + HEALTH_PATH, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
