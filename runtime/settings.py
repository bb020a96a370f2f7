"""Settings every service shares; each service subclasses one with its own env prefix."""

from pathlib import Path
from typing import Self

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.auth import JWT_AUDIENCE, JWT_ISSUER, Role

# Where the local stack (`telemetry up`, infra/) serves Kafka, PgBouncer and Redis: every
# service's defaults point there, and the stack's own settings (infra/config.py) start its
# servers there. The one place these ports are written.
LOCAL_KAFKA_PORT = 19092
LOCAL_PGBOUNCER_PORT = 16432
LOCAL_REDIS_PORT = 16379
LOCAL_PROMETHEUS_PORT = 18090
LOCAL_KAFKA = f"127.0.0.1:{LOCAL_KAFKA_PORT}"
LOCAL_REDIS_URL = f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"
LOCAL_PROMETHEUS_URL = f"http://127.0.0.1:{LOCAL_PROMETHEUS_PORT}"
LOCAL_ALERTMANAGER_PORT = 18093
LOCAL_ALERTMANAGER_URL = f"http://127.0.0.1:{LOCAL_ALERTMANAGER_PORT}"
# PgBouncer's two entries: `telemetry` (the primary) and `telemetry_ro` (the replica).
LOCAL_PRIMARY_DSN = f"host=127.0.0.1 port={LOCAL_PGBOUNCER_PORT} dbname=telemetry user=telemetry"
LOCAL_REPLICA_DSN = f"host=127.0.0.1 port={LOCAL_PGBOUNCER_PORT} dbname=telemetry_ro user=telemetry"


def env_name(settings: type[BaseSettings], field: str) -> str:
    """The environment variable that sets `field` of a settings class."""
    if field not in settings.model_fields:
        raise KeyError(f"{settings.__name__} has no setting {field!r}")
    return f"{settings.model_config.get('env_prefix', '')}{field}".upper()


def default_of(settings: type[BaseSettings], field: str) -> int:
    """A settings class's default for an int field (a service's own port)."""
    value = settings.model_fields[field].default
    assert isinstance(value, int), (settings.__name__, field)
    return value


class ServiceSettings(BaseSettings):
    """What every service's settings have: its log level."""

    model_config = SettingsConfigDict(extra="ignore")

    log_level: str = "INFO"
    # A file touched every second while the event loop turns (runtime/heartbeat.py): the
    # supervisor tells a busy process from a stuck one by it. None: no heartbeat.
    heartbeat_path: Path | None = None


class ServedSettings(ServiceSettings):
    """A service with an HTTP server (its routes, or only its probes and metrics), served by
    runtime/serve.py: where it listens and how it bounds its work."""

    # Loopback unless told otherwise: an edge (HAProxy) is what faces the network.
    host: str = "127.0.0.1"
    port: int
    # Serve /metrics on its own port (None: on the service's port).
    metrics_port: int | None = None
    # Requests in progress at once, beyond which the answer is 503 (nothing queues).
    max_concurrent_requests: int = 4000
    # An idle keep-alive connection is closed after this. Longer than HAProxy keeps idle
    # connections to us, so it is HAProxy that closes them: a request it sends never meets
    # a connection we are closing (a POST would get a 502).
    keep_alive_s: float = 65.0
    # Browser pages allowed to call it (CORS; the notifier: the WebSocket's Origin), each
    # as scheme://host[:port]. None by default; never a wildcard (runtime/cors.py).
    allowed_origins: tuple[str, ...] = ()


class HttpServiceSettings(ServedSettings):
    """An HTTP service that verifies tokens."""

    @field_validator("jwt_public_key_path", "jwt_jwks_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # `API_JWT_JWKS_URL=` unsets it

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if (self.jwt_public_key_path is None) == (self.jwt_jwks_url is None):
            raise ValueError("set one of jwt_public_key_path and jwt_jwks_url")
        return self

    # Where the keys that verify tokens are, one of the two (a service that cannot verify
    # must refuse to start): a file, a JWKS document (every key that verifies, by kid; read
    # again when it changes) or one PEM public key; or an identity provider's JWKS URL
    # (fetched at start, every 5 minutes and for an unknown kid: docs/auth.md).
    jwt_public_key_path: Path | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: str = JWT_AUDIENCE
    jwt_issuer: str = JWT_ISSUER
    # The claim naming the caller's role (dotted: `realm_access.roles`; a string or a
    # list), and how its values map to our roles ({} : the values are our role names).
    jwt_role_claim: str = "role"
    jwt_role_map: dict[str, Role] = {}
    # Tokens living longer than this (exp - iat) are refused; `iat`/`nbf` may be this far
    # in the future (clock skew between the issuer and us).
    token_max_lifetime_s: int = 24 * 3600
    token_leeway_s: int = 30
    # /docs and /openapi.json; off in a deployment that does not publish them.
    docs_enabled: bool = True
    # The whole body must arrive within this (a slow sender holds a slot otherwise).
    body_timeout_s: float = 10.0
