"""Ingest settings (env prefix INGEST_)."""

from typing import Literal

from pydantic_settings import SettingsConfigDict

from runtime.settings import LOCAL_KAFKA, LOCAL_REDIS_URL, HttpServiceSettings
from schemas import topics


class IngestSettings(HttpServiceSettings):
    """Ingest's settings (env prefix `INGEST_`): Kafka, Redis, the rate limit and the in-flight
    limit."""

    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    port: int = 18001
    kafka_bootstrap: str = LOCAL_KAFKA
    pings_topic: str = topics.PINGS
    # The device registry (GPS devices on the OsmAnd protocol), a compacted topic.
    devices_topic: str = topics.DEVICES
    # The Kafka client: aiokafka (in the event loop) or confluent-kafka (librdkafka's threads).
    producer: Literal["aiokafka", "confluent"] = "aiokafka"
    # The contract promises a 503 within 2 s when Kafka is down: the whole wait for the
    # broker (connecting included) stays under it.
    produce_timeout_s: float = 1.5
    # How long a stalled producer may hold up shutdown (aiokafka issue 1101).
    shutdown_timeout_s: float = 5.0
    # Requests waiting for a Kafka ack at once; beyond it, 503 rather than unbounded memory.
    max_in_flight: int = 2000
    redis_url: str = LOCAL_REDIS_URL
    redis_timeout_s: float = 0.2
    # Connections to Redis at once; a request finding none free fails open like a timeout.
    redis_max_connections: int = 64
    # Per driver: an app pings every few seconds and flushes a buffer after a dead zone.
    rate_limit_per_s: float = 5.0
    rate_limit_burst: int = 20
    rate_limit_enabled: bool = True
    # Where a request is decided: "local", in the process, synced with Redis every
    # `rate_limit_sync_s` (ingest/local_ratelimit.py says what that promises); or "redis",
    # one shared bucket asked per request (ingest/ratelimit.py).
    rate_limit_mode: Literal["local", "redis"] = "local"
    rate_limit_sync_s: float = 0.25
    # What reads a body first: msgspec (valid bodies; anything else goes to the models) or
    # the pydantic models alone. The answers are the same (tests/unit/test_pings_wire.py).
    body_decoder: Literal["msgspec", "pydantic"] = "msgspec"
