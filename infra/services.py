"""Our own service processes (ingest, streams, api, the photo worker), started with settings
passed by env."""

import contextlib
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from infra import pgbouncer, redis, runtimes
from infra.config import REPO_ROOT, StackConfig
from infra.launch import Command, Mount
from infra.procs import APP_USER, ProcessRef, StackError, free_port, stop, wait_until
from schemas.notifier import WS_PATH


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # e.g. "ingest-1"
    module: str  # run as `python -m module`
    port: int
    env: dict[str, str]
    port_env: str  # the TELEMETRY_ variable that moves the port
    after: tuple[str, ...]  # the components it needs
    mounts: tuple[Mount, ...] = ()  # what of the state dir it reads or writes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> dict[str, str]:
        if self.module == "notifier":
            return {"url": self.url, "ws": f"ws://127.0.0.1:{self.port}{WS_PATH}"}
        return {"url": self.url}


def _auth_env(prefix: str, config: StackConfig) -> dict[str, str]:
    return {f"{prefix}JWT_PUBLIC_KEY_PATH": str(config.jwt_public_key)}


def _key(config: StackConfig) -> Mount:
    """The tokens' public key (the signing key is the stack's alone)."""
    return Mount(config.jwt_public_key)


def specs(config: StackConfig) -> list[ServiceSpec]:
    result: list[ServiceSpec] = []
    for i in range(config.ingest_processes):
        port = config.ingest_port + i
        env = _auth_env("INGEST_", config) | {
            "INGEST_PORT": str(port),
            "INGEST_KAFKA_BOOTSTRAP": config.kafka_bootstrap,
            "INGEST_REDIS_URL": redis.url(config),
        }
        result.append(
            ServiceSpec(
                f"ingest-{i + 1}",
                "ingest",
                port,
                env,
                "TELEMETRY_INGEST_PORT",
                ("kafka", "redis"),
                (_key(config),),
            )
        )
    for i in range(config.stream_workers):
        port = config.streams_web_port + i
        env = {
            "STREAMS_WEB_PORT": str(port),
            "STREAMS_KAFKA_BOOTSTRAP": config.kafka_bootstrap,
            "STREAMS_DATABASE_DSN": pgbouncer.dsn(config, read_only=False),
            "STREAMS_DATA_DIR": str(streams_data_dir(config)),
        }
        result.append(
            ServiceSpec(
                f"streams-{i + 1}",
                "streams",
                port,
                env,
                "TELEMETRY_STREAMS_WEB_PORT",
                ("kafka", "pgbouncer"),
                (Mount(streams_data_dir(config), writable=True),),
            )
        )
    for i in range(config.api_processes):
        port = config.api_port + i
        env = _auth_env("API_", config) | {
            "API_PORT": str(port),
            "API_READ_DSN": pgbouncer.dsn(config, read_only=True, bounded=True),
            "API_WRITE_DSN": pgbouncer.dsn(config, read_only=False, bounded=True),
            "API_KAFKA_BOOTSTRAP": config.kafka_bootstrap,
            "API_REDIS_URL": redis.url(config),
            "API_BLOB_DIR": str(blob_dir(config)),
            "API_PROMETHEUS_URL": config.prometheus_url,
        }
        result.append(
            ServiceSpec(
                f"api-{i + 1}",
                "api",
                port,
                env,
                "TELEMETRY_API_PORT",
                ("pgbouncer", "kafka", "redis"),
                (_key(config), Mount(blob_dir(config), writable=True)),
            )
        )
    for i in range(config.photo_workers):
        port = config.photo_worker_port + i
        env = {
            "PHOTO_WORKER_PORT": str(port),
            "PHOTO_WORKER_KAFKA_BOOTSTRAP": config.kafka_bootstrap,
            "PHOTO_WORKER_DATABASE_DSN": pgbouncer.dsn(config, read_only=False),
            "PHOTO_WORKER_BLOB_DIR": str(blob_dir(config)),
        }
        result.append(
            ServiceSpec(
                f"photo-worker-{i + 1}",
                "photo_worker",
                port,
                env,
                "TELEMETRY_PHOTO_WORKER_PORT",
                ("kafka", "pgbouncer"),
                (Mount(blob_dir(config), writable=True),),
            )
        )
    for i in range(config.notifier_processes):
        port = config.notifier_port + i
        env = _auth_env("NOTIFIER_", config) | {
            "NOTIFIER_PORT": str(port),
            "NOTIFIER_KAFKA_BOOTSTRAP": config.kafka_bootstrap,
            "NOTIFIER_WRITE_DSN": pgbouncer.dsn(config, read_only=False, bounded=True),
            "NOTIFIER_READ_DSN": pgbouncer.dsn(config, read_only=True, bounded=True),
            "NOTIFIER_REDIS_URL": redis.url(config),
        }
        result.append(
            ServiceSpec(
                f"notifier-{i + 1}",
                "notifier",
                port,
                env,
                "TELEMETRY_NOTIFIER_PORT",
                ("kafka", "pgbouncer", "redis"),
                (_key(config),),
            )
        )
    return result


def command(spec: ServiceSpec) -> Command:
    argv = [sys.executable, "-m", spec.module]
    return Command(spec.name, "app", argv, spec.env, REPO_ROOT, APP_USER, spec.mounts)


def writable_dirs(config: StackConfig) -> list[Path]:
    """Where our services write (uploads, the stream's local state): their user's own."""
    return [blob_dir(config), streams_data_dir(config)]


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


# A process this slow to say it lives is as stuck as one that says it is not.
LIVENESS_TIMEOUT_S = 5.0


def live(spec: ServiceSpec) -> bool:
    """Every service answers /healthz with 200 while it works: a consumer whose task died
    or whose batch is stuck answers 503, and a process that does not answer is stuck too."""
    try:
        return httpx.get(spec.url + "/healthz", timeout=LIVENESS_TIMEOUT_S).status_code == 200
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
            overrides = {f"{module.upper()}_PORT": str(port)} | env
            spec = replace(base, name=f"{name}-{i + 1}", port=port, env=base.env | overrides)
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
