"""Settings every service shares; each service subclasses one with its own env prefix."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.auth import JWT_AUDIENCE, JWT_ISSUER


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    log_level: str = "INFO"


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


class HttpServiceSettings(ServedSettings):
    """An HTTP service that verifies tokens."""

    # Required: a service that cannot verify tokens must refuse to start.
    jwt_public_key_path: Path
    jwt_audience: str = JWT_AUDIENCE
    jwt_issuer: str = JWT_ISSUER
    # Tokens living longer than this (exp - iat) are refused; `iat`/`nbf` may be this far
    # in the future (clock skew between the issuer and us).
    token_max_lifetime_s: int = 24 * 3600
    token_leeway_s: int = 30
    # /docs and /openapi.json; off in a deployment that does not publish them.
    docs_enabled: bool = True
    # The whole body must arrive within this (a slow sender holds a slot otherwise).
    body_timeout_s: float = 10.0
