"""Redis (Debian's redis-server): the cache and the rate limiter's store."""

from pathlib import Path

import redis

from infra.config import StackConfig
from infra.launch import Command

REDIS_SERVER = "/usr/bin/redis-server"


def data_dir(config: StackConfig) -> Path:
    return config.state_dir / "redis"


def prepare(config: StackConfig) -> None:
    data_dir(config).mkdir(parents=True, exist_ok=True)


def command(config: StackConfig) -> Command:
    argv = [
        REDIS_SERVER,
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
    return Command("redis", "redis", argv)


def url(config: StackConfig, db: int = 0) -> str:
    return f"redis://127.0.0.1:{config.redis_port}/{db}"


def ready(config: StackConfig) -> bool:
    client = redis.Redis.from_url(url(config), socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
