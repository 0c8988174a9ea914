"""Runtime configuration: one typed object read once from ``RTVOICE_*`` environment variables.

A wrong value fails at start with a message naming the variable; secrets never appear in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RTVOICE_"


class ConfigError(ValueError):
    """The environment holds a value rtvoice cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Key grammar
    app_prefix: str = "rtvoice"
    environment: str = "dev"

    # Redis: a URL (local) or Azure Cache for Redis (host + access key or Entra ID).
    redis_url: str | None = None
    redis_host: str | None = None
    redis_port: int = Field(default=6380, ge=1, le=65535)
    redis_access_key: SecretStr | None = None
    redis_use_entra_id: bool = False
    redis_username: str | None = None
    redis_cluster: bool = False
    redis_op_timeout_s: float = Field(default=2.0, gt=0, le=60)

    # Archive: Cosmos DB when an endpoint is set, else the embedded SQLite store.
    cosmos_endpoint: str | None = None
    cosmos_key: SecretStr | None = None
    cosmos_use_entra_id: bool = False
    cosmos_database: str = "rtvoice"
    cosmos_verify_tls: bool = True
    archive_path: str = "rtvoice-archive.sqlite3"

    # ACS
    public_url: str | None = None
    acs_connection_string: SecretStr | None = None
    acs_endpoint: str | None = None
    acs_access_key: SecretStr | None = None
    acs_jwt_issuer: str = "https://acscallautomation.communication.azure.com"
    acs_jwks_url: str = "https://acscallautomation.communication.azure.com/calling/keys"
    acs_audience: str | None = None
    # Shared by all gateway replicas: signs the per-call secrets in callback and WebSocket URLs.
    gateway_secret: SecretStr | None = None
    # Event Grid webhook: a secret in the subscription URL (?code=), and/or Entra ID delivery.
    eventgrid_secret: SecretStr | None = None
    eventgrid_entra_audience: str | None = None
    eventgrid_entra_tenant_id: str | None = None
    eventgrid_entra_issuer: str | None = None  # default: the tenant's v2.0 issuer
    eventgrid_entra_jwks_url: str | None = None  # default: the tenant's v2.0 keys
    # Local development only: allows an unauthenticated webhook and unchecked ACS tokens.
    insecure_dev: bool = False
    media_wait_s: float = Field(default=10.0, gt=0, le=120)
    audio_format: Literal["pcm16KMono", "pcm24KMono"] = "pcm16KMono"
    audio_channel_type: Literal["mixed", "unmixed"] = "mixed"
    transcription_locale: str = "en-US"

    # Ray
    ray_address: str | None = None
    ray_namespace: str = "rtvoice"
    call_slot_resource: str = "call_slot"
    call_idle_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    replica_id: str | None = None

    @field_validator("app_prefix", "environment", "ray_namespace", "call_slot_resource")
    @classmethod
    def _no_separator(cls, value: str) -> str:
        if not value or any(c == ":" or c.isspace() for c in value):
            raise ValueError("must be non-empty without ':' or whitespace")
        return value

    @field_validator("public_url", "acs_endpoint", "cosmos_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default: the process environment) or raise ConfigError."""
    try:
        if environ is None:
            return Settings()
        values = {
            k[len(ENV_PREFIX) :].lower(): v for k, v in environ.items() if k.startswith(ENV_PREFIX)
        }
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
