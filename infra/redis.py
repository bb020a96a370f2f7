"""Redis (Debian's redis-server): the cache and the rate limiter's store."""

import redis

from infra.config import StackConfig
from infra.procs import ProcessRef, spawn

REDIS_SERVER = "/usr/bin/redis-server"


def start(config: StackConfig) -> ProcessRef:
    directory = config.state_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    argv = [
        REDIS_SERVER,
        "--bind",
        "127.0.0.1",
        "--port",
        str(config.redis_port),
        "--dir",
        str(directory),
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
    return spawn(argv, log_path=config.logs_dir / "redis.log")


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
