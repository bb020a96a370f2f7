"""The photo worker's settings (env prefix `PHOTO_WORKER_`)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from runtime.settings import LOCAL_KAFKA, LOCAL_PRIMARY_DSN, ServedSettings
from schemas import topics


class PhotoWorkerSettings(ServedSettings):
    """What the worker reads from and writes to; its port serves only probes and metrics."""

    model_config = SettingsConfigDict(env_prefix="PHOTO_WORKER_", extra="ignore")

    port: int = 18301  # /healthz, /readyz, /metrics
    max_concurrent_requests: int = 64  # probes and scrapes only
    kafka_bootstrap: str = LOCAL_KAFKA
    group_id: str = topics.PHOTO_WORKER_GROUP
    # PgBouncer's read-write entry (the primary).
    database_dsn: str = LOCAL_PRIMARY_DSN
    blob_dir: Path = Path(".telemetry/blobs")
    retry_s: float = 1.0
    # The blob sweep (jobs/blob_sweep.py): how often, when an unreferenced upload is an
    # orphan, and how long a proof's raw upload (with its EXIF location) is kept.
    blob_sweep_every_s: float = 600.0
    orphan_blob_after_s: float = 3600.0
    raw_photo_keep_hours: float = 7 * 24.0
