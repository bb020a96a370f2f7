"""Redis (Debian's redis-server): the cache and the rate limiter's store. It asks every
client for a password (made once per state dir): a local process without it can neither
read the views nor plant one."""

import secrets
from pathlib import Path

import redis

from infra.config import StackConfig
from infra.launch import Command, Mount
from infra.procs import REDIS_USER, own_tree, write_private

REDIS_SERVER = "/usr/bin/redis-server"


def data_dir(config: StackConfig) -> Path:
    return config.state_dir / "redis"


def conf_path(config: StackConfig) -> Path:
    return data_dir(config) / "redis.conf"


def password(config: StackConfig) -> str:
    path = data_dir(config) / "password"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def prepare(config: StackConfig) -> None:
    data_dir(config).mkdir(parents=True, exist_ok=True)
    # In a file the server reads, not on its command line, which any local user can list;
    # Redis's own user's, whom no other component runs as.
    write_private(conf_path(config), f"requirepass {password(config)}\n")
    own_tree(data_dir(config), REDIS_USER)
    data_dir(config).chmod(0o700)


def command(config: StackConfig) -> Command:
    argv = [
        REDIS_SERVER,
        str(conf_path(config)),
        "--bind",
        "127.0.0.1",
        "--port",
        str(config.redis_port),
        "--dir",
        str(data_dir(config)),
        "--daemonize",
        "no",
        # A cache and rate-limit counters: nothing here must survive a restart.
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory",
        "512mb",
        "--maxmemory-policy",
        "allkeys-lru",
    ]
    # Nothing is saved (no snapshot, no append-only file): its dir is read-only to it.
    return Command("redis", "redis", argv, user=REDIS_USER, mounts=(Mount(data_dir(config)),))


def url(config: StackConfig, db: int = 0) -> str:
    return f"redis://:{password(config)}@127.0.0.1:{config.redis_port}/{db}"


def ready(config: StackConfig) -> bool:
    client = redis.Redis.from_url(url(config), socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
