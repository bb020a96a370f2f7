"""Api settings (env prefix API_)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from runtime.settings import HttpServiceSettings


class ApiSettings(HttpServiceSettings):
    model_config = SettingsConfigDict(env_prefix="API_", extra="ignore")

    port: int = 18101
    # PgBouncer's read-only entry: the replica.
    read_dsn: str = "host=127.0.0.1 port=16432 dbname=telemetry_ro user=telemetry"
    # PgBouncer's read-write entry: the primary (job writes, and job reads until the read
    # path checks the replica has replayed the caller's writes).
    write_dsn: str = "host=127.0.0.1 port=16432 dbname=telemetry user=telemetry"
    pool_max_size: int = 10
    # A JSON request body past this is a 413 (the upload of `complete` has its own limit).
    max_body_bytes: int = 64 * 1024
    # Uploads (proof photos), shared with the photo worker: a directory both can reach.
    blob_dir: Path = Path(".telemetry/blobs")
    # The outbox relay (api/outbox_relay.py) runs in every api process; one publishes at
    # a time.
    kafka_bootstrap: str = "127.0.0.1:19092"
    relay_enabled: bool = True
    relay_batch: int = 500
    relay_poll_s: float = 0.1
    relay_send_timeout_s: float = 5.0
    # Housekeeping by the relay: sent outbox rows are kept this long (for inspection and
    # replays by hand), and an Idempotency-Key is honoured this long.
    outbox_keep_sent_hours: float = 168.0
    idempotency_ttl_hours: float = 24.0
    pool_timeout_s: float = 2.0
