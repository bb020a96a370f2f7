"""Settings every service shares; each service subclasses it with its own env prefix."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.auth import JWT_AUDIENCE, JWT_ISSUER


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    log_level: str = "INFO"
    jwt_public_key_path: Path | None = None
    jwt_audience: str = JWT_AUDIENCE
    jwt_issuer: str = JWT_ISSUER
