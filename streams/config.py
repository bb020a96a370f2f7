"""Streams settings (env prefix STREAMS_)."""

from pydantic_settings import SettingsConfigDict

from runtime.settings import ServiceSettings


class StreamsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMS_", extra="ignore")

    app_id: str = "telemetry-streams"
    kafka_bootstrap: str = "127.0.0.1:19092"
    pings_topic: str = "pings.v1"
    # Through PgBouncer to the primary.
    database_dsn: str = "host=127.0.0.1 port=16432 dbname=telemetry user=telemetry"
    pool_max_size: int = 4
    web_host: str = "127.0.0.1"
    web_port: int = 18201
    # A batch is flushed when it holds batch_max records or batch_within_s has passed.
    batch_max: int = 500
    batch_within_s: float = 0.1
    # Writes retry with backoff for as long as the database is down; offsets do not move.
    retry_backoff_max_s: float = 5.0
    partition_days_back: int = 8
    partition_days_ahead: int = 3
    maintenance_interval_s: float = 3600.0
