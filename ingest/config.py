"""Ingest settings (env prefix INGEST_)."""

from pydantic_settings import SettingsConfigDict

from runtime.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 18001
    kafka_bootstrap: str = "127.0.0.1:19092"
    pings_topic: str = "pings.v1"
    # The contract promises a 503 within 2 s when Kafka is down; keep the produce wait under it.
    produce_timeout_s: float = 1.5
    # How long a stalled producer may hold up shutdown (aiokafka issue 1101).
    shutdown_timeout_s: float = 5.0
