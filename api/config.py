"""Api settings (env prefix API_)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from runtime.settings import (
    LOCAL_ALERTMANAGER_URL,
    LOCAL_KAFKA,
    LOCAL_PRIMARY_DSN,
    LOCAL_PROMETHEUS_URL,
    LOCAL_REDIS_URL,
    LOCAL_REPLICA_DSN,
    HttpServiceSettings,
)


class ApiSettings(HttpServiceSettings):
    """The api's settings (env prefix `API_`): its databases, Redis, the view cache, the relay and
    the limits."""

    model_config = SettingsConfigDict(env_prefix="API_", extra="ignore")

    port: int = 18101
    # PgBouncer's read-only entry: the replica.
    read_dsn: str = LOCAL_REPLICA_DSN
    # PgBouncer's read-write entry: the primary (job writes, and job reads until the read
    # path checks the replica has replayed the caller's writes).
    write_dsn: str = LOCAL_PRIMARY_DSN
    pool_max_size: int = 10
    # A JSON request body past this is a 413 (the upload of `complete` has its own limit).
    max_body_bytes: int = 64 * 1024
    # Uploads (proof photos), shared with the photo worker: a directory both can reach.
    blob_dir: Path = Path(".telemetry/blobs")
    # The outbox relay (jobs/relay.py) runs in every api process; one publishes at
    # a time.
    kafka_bootstrap: str = LOCAL_KAFKA
    relay_enabled: bool = True
    relay_batch: int = 500
    relay_poll_s: float = 0.1
    relay_send_timeout_s: float = 5.0
    # Housekeeping by the relay: sent outbox rows are kept this long (for inspection and
    # replays by hand), and an Idempotency-Key is honoured this long.
    outbox_keep_sent_hours: float = 168.0
    idempotency_ttl_hours: float = 24.0
    pool_timeout_s: float = 2.0

    # The read path (docs/services.md, "Api: reads"). The view cache in Redis: off serves every view
    # from the database (a baseline; the in-process single-flight stays).
    cache_enabled: bool = True
    redis_url: str = LOCAL_REDIS_URL
    # A slow Redis must cost a read little before it is bypassed (for a second, then tried
    # again). Counted as Redis's time: when this process's own event loop is what is late,
    # a call may take up to `redis_max_wait_s`. Below 100 ms, a 2-core machine serving a
    # herd delays Redis's own answers past it now and then (measured: docs/benchmarks.md).
    redis_timeout_s: float = 0.1
    redis_max_wait_s: float = 1.0
    redis_max_connections: int = 128
    # How long a view is fresh; after it, it is served stale for `view_stale_s` more while
    # one process (the lease's holder) loads it again. `Cache-Control: max-age` says the same.
    job_view_fresh_s: float = 2.0
    share_view_fresh_s: float = 5.0
    # Live share links a job may have (each is a view written on every change of the job).
    max_share_links_per_job: int = 10
    # Each customer's and driver's requests a second per api process, and their burst
    # (api/principal_limit.py): past it, 429 with Retry-After, and other tenants go on.
    principal_rate_per_s: float = 100.0
    principal_burst: int = 200
    position_view_fresh_s: float = 1.0
    view_stale_s: float = 30.0
    # The in-process cache in front of Redis for the views everyone sees alike (share
    # links, driver positions): hot keys cost no Redis round trip.
    local_cache_s: float = 1.0
    # Database reads at once per process (below PgBouncer's pool of 20 per database and
    # this process's pool); `db_max_waiting` more wait up to `db_wait_s`, the rest get 503.
    db_max_concurrency: int = 8
    db_max_waiting: int = 256
    db_wait_s: float = 0.5
    # A principal's reads include their own writes this long after each (read-your-writes).
    ryw_window_s: float = 30.0
    # A replica further behind than this serves nobody until it catches up.
    replica_max_lag_s: float = 5.0
    replica_check_s: float = 1.0
    # GET /v1/ops/lag: a look at Kafka at most this often (concurrent requests share it),
    # and the statuses judged over this many looks.
    lag_min_interval_s: float = 2.0
    lag_window: int = 5
    # GET /v1/ops/overview asks the stack's Prometheus, at most this often.
    prometheus_url: str = LOCAL_PROMETHEUS_URL
    # ...and the stack's Alertmanager, for the alerts firing and the silences.
    alertmanager_url: str = LOCAL_ALERTMANAGER_URL
    overview_min_interval_s: float = 2.0
