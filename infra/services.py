"""Our own service processes (ingest, streams, api, the photo worker), started with settings
passed by env."""

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import orjson
from pydantic_settings import BaseSettings

from api.config import ApiSettings
from infra import kafka, pgbouncer, redis, runtimes
from infra.config import REPO_ROOT, StackConfig
from infra.launch import Command, Mount
from infra.procs import APP_USER, ProcessRef, StackError, free_port, stop, wait_until
from ingest.config import IngestSettings
from notifier.config import NotifierSettings
from photo_worker.config import PhotoWorkerSettings
from runtime import heartbeat
from runtime.settings import env_name
from schemas.notifier import WS_PATH
from streams.config import StreamsSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """One service process of the stack: its name, module, port, environment (its settings), what it
    needs first and what it may read or write."""

    name: str  # e.g. "ingest-1"
    module: str  # run as `python -m module`
    port: int
    env: dict[str, str]
    port_env: str  # the TELEMETRY_ variable that moves the port
    after: tuple[str, ...]  # the components it needs
    mounts: tuple[Mount, ...] = ()  # what of the state dir it reads or writes
    heartbeat: Path | None = None  # the file its loop touches (runtime/heartbeat.py)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> dict[str, str]:
        if self.module == "notifier":
            return {"url": self.url, "ws": f"ws://127.0.0.1:{self.port}{WS_PATH}"}
        return {"url": self.url}


def _key(config: StackConfig) -> Mount:
    """The tokens' public keys, as a directory: a rotation renames a new document in (the
    signing key is the stack's alone)."""
    return Mount(config.jwt_public_key.parent)


@dataclass(frozen=True)
class _Kind:
    """One service: its settings class (the names of its environment variables), how many
    processes the stack runs from which port, what it is given, and what it needs."""

    name: str  # its processes are name-1, name-2, ...
    module: str
    settings: type[BaseSettings]
    port_setting: str
    port_env: str  # the TELEMETRY_ variable that moves its first port
    count: Callable[[StackConfig], int]
    first_port: Callable[[StackConfig], int]
    given: Callable[[StackConfig], dict[str, object]]  # settings (by field) the stack sets
    after: tuple[str, ...]
    mounts: Callable[[StackConfig], tuple[Mount, ...]]


def _kinds() -> list[_Kind]:
    def bounded(config: StackConfig, read_only: bool) -> str:
        return pgbouncer.dsn(config, read_only=read_only, bounded=True)

    return [
        _Kind(
            "ingest", "ingest", IngestSettings, "port", "TELEMETRY_INGEST_PORT",
            lambda c: c.ingest_processes, lambda c: c.ingest_port,
            lambda c: {
                "jwt_public_key_path": c.jwt_public_key,
                "kafka_bootstrap": c.kafka_bootstrap,
                "redis_url": redis.url(c),
                "allowed_origins": c.allowed_origins,
            },
            ("kafka", "redis"), lambda c: (_key(c),),
        ),
        _Kind(
            "streams", "streams", StreamsSettings, "web_port", "TELEMETRY_STREAMS_WEB_PORT",
            lambda c: c.stream_workers, lambda c: c.streams_web_port,
            lambda c: {
                "kafka_bootstrap": c.kafka_bootstrap,
                "topic_replication_factor": kafka.replication_factor(c),
                "database_dsn": pgbouncer.dsn(c, read_only=False),
                "data_dir": streams_data_dir(c),
            },
            ("kafka", "pgbouncer"), lambda c: (Mount(streams_data_dir(c), writable=True),),
        ),
        _Kind(
            "api", "api", ApiSettings, "port", "TELEMETRY_API_PORT",
            lambda c: c.api_processes, lambda c: c.api_port,
            lambda c: {
                "jwt_public_key_path": c.jwt_public_key,
                "read_dsn": bounded(c, read_only=True),
                "write_dsn": bounded(c, read_only=False),
                "kafka_bootstrap": c.kafka_bootstrap,
                "redis_url": redis.url(c),
                "blob_dir": blob_dir(c),
                "prometheus_url": c.prometheus_url,
                "alertmanager_url": c.alertmanager_url,
                "allowed_origins": c.allowed_origins,
            },
            ("pgbouncer", "kafka", "redis"),
            lambda c: (_key(c), Mount(blob_dir(c), writable=True)),
        ),
        _Kind(
            "photo-worker", "photo_worker", PhotoWorkerSettings, "port",
            "TELEMETRY_PHOTO_WORKER_PORT",
            lambda c: c.photo_workers, lambda c: c.photo_worker_port,
            lambda c: {
                "kafka_bootstrap": c.kafka_bootstrap,
                "database_dsn": pgbouncer.dsn(c, read_only=False),
                "blob_dir": blob_dir(c),
            },
            ("kafka", "pgbouncer"), lambda c: (Mount(blob_dir(c), writable=True),),
        ),
        _Kind(
            "notifier", "notifier", NotifierSettings, "port", "TELEMETRY_NOTIFIER_PORT",
            lambda c: c.notifier_processes, lambda c: c.notifier_port,
            lambda c: {
                "jwt_public_key_path": c.jwt_public_key,
                "kafka_bootstrap": c.kafka_bootstrap,
                "write_dsn": bounded(c, read_only=False),
                "read_dsn": bounded(c, read_only=True),
                "redis_url": redis.url(c),
                # And the edge's own: the share page it serves follows its job live.
                "allowed_origins": c.allowed_origins + c.public_origins,
            },
            ("kafka", "pgbouncer", "redis"), lambda c: (_key(c),),
        ),
    ]  # fmt: skip


def specs(config: StackConfig) -> list[ServiceSpec]:
    """Every service process the stack runs, in start order, with the environment that sets
    its settings (the names come from each service's settings class)."""
    result: list[ServiceSpec] = []
    for kind in _kinds():
        given = kind.given(config)
        for i in range(kind.count(config)):
            port = kind.first_port(config) + i
            name = f"{kind.name}-{i + 1}"
            env = {env_name(kind.settings, field): _env_value(v) for field, v in given.items()}
            env[env_name(kind.settings, kind.port_setting)] = str(port)
            beat = heartbeat_path(config, name)
            env[env_name(kind.settings, "heartbeat_path")] = str(beat)
            mounts = (*kind.mounts(config), Mount(heartbeat_dir(config), writable=True))
            spec = ServiceSpec(
                name, kind.module, port, env, kind.port_env, kind.after, mounts, beat
            )
            result.append(spec)
    return result


def _env_value(value: object) -> str:
    # pydantic-settings reads a list or a tuple from JSON.
    return orjson.dumps(value).decode() if isinstance(value, tuple | list) else str(value)


def heartbeat_dir(config: StackConfig) -> Path:
    return config.state_dir / "heartbeats"


def heartbeat_path(config: StackConfig, name: str) -> Path:
    return heartbeat_dir(config) / name


def command(spec: ServiceSpec) -> Command:
    argv = [sys.executable, "-m", spec.module]
    return Command(spec.name, "app", argv, spec.env, REPO_ROOT, APP_USER, spec.mounts)


def writable_dirs(config: StackConfig) -> list[Path]:
    """Where our services write (uploads, the stream's local state): their user's own."""
    return [blob_dir(config), streams_data_dir(config), heartbeat_dir(config)]


def blob_dir(config: StackConfig) -> Path:
    return config.state_dir / "blobs"


def streams_data_dir(config: StackConfig) -> Path:
    return config.state_dir / "streams-data"


def start(config: StackConfig, spec: ServiceSpec) -> ProcessRef:
    return runtimes.spawn(config, command(spec))


def url_ready(url: str, name: str) -> bool:
    """Every service answers /readyz with 200 only when its dependencies answer."""
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def ready(spec: ServiceSpec) -> bool:
    return url_ready(spec.url, spec.name)


# A process this slow to say it lives, and whose loop has not turned for as long, is as
# stuck as one that says it is not.
LIVENESS_TIMEOUT_S = 5.0


def live(spec: ServiceSpec, timeout_s: float = LIVENESS_TIMEOUT_S) -> bool:
    """Every service answers /healthz with 200 while it works: a consumer whose task died
    or whose batch is stuck answers 503, and a process that does not answer is stuck too,
    unless its heartbeat is fresh: then its loop turns and the probe only waited behind its
    load (an overloaded process is not a stuck one; restarting it would refuse its
    connections and lose nothing of the load)."""
    try:
        return httpx.get(spec.url + "/healthz", timeout=timeout_s).status_code == 200
    except httpx.TimeoutException:
        if spec.heartbeat is not None and heartbeat.fresh(spec.heartbeat, time.time()):
            log.warning(
                "%s: /healthz unanswered in %.0f s, its loop turns: busy", spec.name, timeout_s
            )
            return True
        return False
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def variants(
    config: StackConfig, module: str, count: int, env: dict[str, str], name: str
) -> Iterator[list[tuple[ServiceSpec, ProcessRef]]]:
    """`count` more processes of `module` (api, ingest, notifier) beside the stack's, on
    free ports, with `env` over the stack's settings for it; yields them once they are
    ready, and stops them after (benchmarks and tests compare settings, or kill one)."""
    [base] = [spec for spec in specs(config) if spec.module == module][:1]
    started: list[tuple[ServiceSpec, ProcessRef]] = []
    try:
        for i in range(count):
            port = free_port()
            variant = f"{name}-{i + 1}"
            beat = heartbeat_path(config, variant)
            overrides = {
                f"{module.upper()}_PORT": str(port),
                f"{module.upper()}_HEARTBEAT_PATH": str(beat),
            } | env
            spec = replace(base, name=variant, port=port, env=base.env | overrides, heartbeat=beat)
            started.append((spec, start(config, spec)))
        for spec, _ in started:
            if not wait_until(functools.partial(ready, spec), 60, 0.2):
                raise StackError(f"{spec.name} did not become ready (see its log)")
        yield started
    finally:
        for _, ref in started:
            stop(ref, timeout_s=15)


@contextlib.contextmanager
def api_variants(
    config: StackConfig, count: int, env: dict[str, str], name: str = "api-variant"
) -> Iterator[list[str]]:
    """`variants` of the api, their outbox relay off (the stack's relays publish); yields
    their base URLs."""
    with variants(config, "api", count, {"API_RELAY_ENABLED": "false"} | env, name) as started:
        yield [spec.url for spec, _ in started]
