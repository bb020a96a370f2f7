"""Streams settings (env prefix STREAMS_)."""

from pathlib import Path
from typing import Self

from pydantic import model_validator
from pydantic_settings import SettingsConfigDict

from runtime.settings import LOCAL_KAFKA, LOCAL_PRIMARY_DSN, ServiceSettings
from schemas import topics


class StreamsSettings(ServiceSettings):
    """The stream worker's settings (env prefix `STREAMS_`): Kafka, the database, batching, retries,
    retention and its web server."""

    model_config = SettingsConfigDict(env_prefix="STREAMS_", extra="ignore")

    app_id: str = topics.STREAMS_GROUP
    kafka_bootstrap: str = LOCAL_KAFKA
    # Copies of the topics Faust makes for itself (its partition assignor's): as many as
    # the stack's own topics have (3 on a cluster).
    topic_replication_factor: int = 1
    pings_topic: str = topics.PINGS
    positions_topic: str = topics.POSITIONS
    # Through PgBouncer to the primary.
    database_dsn: str = LOCAL_PRIMARY_DSN
    pool_max_size: int = 4
    session_timeout_s: float = 10.0
    # How long the group waits for its members to rejoin in a rebalance (a member's
    # batch in flight finishes first). A worker that hangs (SIGSTOP, a frozen VM) during
    # one holds every partition of the group still for this long.
    rebalance_timeout_s: float = 20.0
    # Faust's local state (it keeps tables' metadata there even with the memory store).
    data_dir: Path = Path(".telemetry/streams-data")
    # The worker's web server (/healthz, /readyz, /metrics): loopback unless told otherwise.
    web_host: str = "127.0.0.1"
    web_port: int = 18201
    # A batch is what the consumer has fetched when the previous one is done, up to
    # batch_max records: large under a backlog, small at a trickle. An idle consumer
    # waits up to batch_within_s for records in one poll. The sink writes a batch in
    # transactions of at most batch_max_pings pings.
    batch_max: int = 5_000
    batch_max_pings: int = 5_000
    # Transactions of one batch in flight at once (each its own pool connection).
    concurrent_flushes: int = 2
    batch_within_s: float = 0.1
    # Writes and sends retry with jittered backoff for as long as they fail; offsets do
    # not move meanwhile.
    retry_backoff_max_s: float = 5.0
    # Every sink transaction's bounded waits (a zombie worker's locks, a hung statement).
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 30_000
    # A ping further than this ahead of its record's receipt is flagged `future`.
    future_tolerance_s: float = 30.0
    # A job's driver within this of the dropoff has arrived (event `job.arrived`).
    arrival_radius_m: float = 100.0
    # /healthz answers 503 once a batch has waited unwritten this long.
    health_stall_s: float = 30.0
    # On SIGTERM a batch in flight may finish within this; past it the worker exits
    # without committing (the batch is replayed by whoever takes the partitions).
    shutdown_grace_s: float = 5.0
    # Dead letters and positions: the whole wait for Kafka's acks.
    produce_timeout_s: float = 5.0
    partition_days_back: int = 8
    partition_days_ahead: int = 3
    retention_days: int = 30
    minute_aggregates_retention_days: int = 90
    hourly_aggregates_retention_days: int = 730
    maintenance_interval_s: float = 3600.0

    @model_validator(mode="after")
    def _retention_keeps_the_accepted_window(self) -> Self:
        # Partitions are created `partition_days_back` days back for pings ingest still
        # accepts; a shorter retention would drop them again at once.
        if self.retention_days <= self.partition_days_back:
            raise ValueError("retention_days must be greater than partition_days_back")
        return self
