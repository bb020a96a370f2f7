"""Notifier settings (env prefix NOTIFIER_)."""

from pydantic_settings import SettingsConfigDict

from runtime.settings import (
    LOCAL_KAFKA,
    LOCAL_PRIMARY_DSN,
    LOCAL_REDIS_URL,
    LOCAL_REPLICA_DSN,
    HttpServiceSettings,
)
from schemas import topics


class NotifierSettings(HttpServiceSettings):
    """The notifier's settings (env prefix `NOTIFIER_`): its topics, databases, Redis log and the
    bounds on connections and what they may queue."""

    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")

    port: int = 18401
    kafka_bootstrap: str = LOCAL_KAFKA
    job_events_topic: str = topics.JOB_EVENTS
    positions_topic: str = topics.POSITIONS
    # Job rows and share links are read on the primary: a snapshot's seq must include every
    # event this process may already have consumed (a critical read: docs/notifier.md).
    write_dsn: str = LOCAL_PRIMARY_DSN
    # Driver positions and the fallback replay of job events read the replica first.
    read_dsn: str = LOCAL_REPLICA_DSN
    pool_max_size: int = 4
    db_timeout_s: float = 2.0
    # Database queries at once per process; a reconnect storm waits its turn here.
    db_max_concurrency: int = 4
    redis_url: str = LOCAL_REDIS_URL
    # A slow Redis costs a resume this much before it falls back to PostgreSQL.
    redis_timeout_s: float = 0.25
    # Job events a resume replays at most; older gaps get `resync`. Also the length of each
    # job's log in Redis.
    retained_events: int = 1000
    # A job's Redis log outlives its last event this long (finished jobs' logs go away).
    log_ttl_s: int = 7 * 24 * 3600

    # Connections: the first message (auth) must come within `auth_timeout_s`.
    auth_timeout_s: float = 10.0
    max_connections: int = 20_000
    # Connections that have not authenticated yet, per process and per client address
    # (the local fleet and benchmarks are one address: 127.0.0.1). Past either, a new
    # handshake gets 503.
    max_unauthenticated: int = 10_000
    max_unauthenticated_per_client: int = 10_000
    # Unknown share tokens a client address may try, a second and in a burst, before its
    # share auths are refused without a database read (4401).
    failed_share_lookups_per_s: float = 2.0
    failed_share_lookup_burst: float = 20.0
    # Share-link connections are looked at this often: those whose link was revoked (or
    # has ended with its job's cancel) are closed with 4401.
    share_recheck_s: float = 10.0
    accept_backlog: int = 2048
    max_subscriptions: int = 100
    # Unsent output past this closes the connection (4408); the client resumes.
    max_unsent_bytes: int = 1024 * 1024
    # All the process's connections together may queue this much; past it the one whose
    # frame would cross it is closed as slow (4408), whatever its own share.
    max_queued_bytes_total: int = 256 * 1024 * 1024
    # Every this often, an application ping (docs/notifier.md) and a WebSocket ping; a
    # peer that has not answered the last WebSocket ping by the next is gone (a vanished
    # phone): its connection is closed.
    ping_interval_s: float = 25.0
    # permessage-deflate costs tens of KiB per connection: off unless asked for.
    compression: bool = False
