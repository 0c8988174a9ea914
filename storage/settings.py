"""Runtime configuration: one typed tree (storage, ACS, gateway, actors, assistant) read once
from the ``RTVOICE_*`` environment variables by :func:`load_settings`.

The tree is made of plain pydantic models: building one never reads the environment, so a Ray
worker that receives it (pickled) uses exactly what the gateway read, never its own environment.
Every variable keeps its documented flat name (``ENV_VARS`` maps it to its place in the tree); the
same flat names are accepted as keywords, ``Settings(redis_url=...)``. A wrong value fails at start
with the variable's name; secrets are ``SecretStr`` everywhere and never appear in a repr or error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "RTVOICE_"


class ConfigError(ValueError):
    """The environment holds a value rtvoice cannot use."""


def _no_separator(value: str) -> str:
    if not value or any(c == ":" or c.isspace() for c in value):
        raise ValueError("must be non-empty without ':' or whitespace")
    return value


def _http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/") if value else value


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RedisSettings(_Group):
    """A URL (local Redis), or Azure Cache for Redis by host with an access key or Entra ID."""

    url: str | None = None
    host: str | None = None
    port: int = Field(default=6380, ge=1, le=65535)
    access_key: SecretStr | None = None
    use_entra_id: bool = False
    username: str | None = None
    cluster: bool = False
    op_timeout_s: float = Field(default=2.0, gt=0, le=60)


class CosmosSettings(_Group):
    """The Cosmos DB archive; without an endpoint the embedded SQLite store is used."""

    endpoint: str | None = None
    key: SecretStr | None = None
    use_entra_id: bool = False
    database: str = "rtvoice"
    verify_tls: bool = True

    _endpoint = field_validator("endpoint")(_http_url)


class StorageSettings(_Group):
    app_prefix: str = "rtvoice"
    environment: str = "dev"
    redis: RedisSettings = RedisSettings()
    cosmos: CosmosSettings = CosmosSettings()
    archive_path: str = "rtvoice-archive.sqlite3"
    # Per-process spool files (transcripts kept while Redis and the archive are both down).
    spool_dir: str = "rtvoice-spool"

    _names = field_validator("app_prefix", "environment")(_no_separator)


class AcsSettings(_Group):
    """The ACS resource: REST endpoint and key, who signs its tokens, and the media options."""

    connection_string: SecretStr | None = None
    endpoint: str | None = None
    access_key: SecretStr | None = None
    jwt_issuer: str = "https://acscallautomation.communication.azure.com"
    jwks_url: str = "https://acscallautomation.communication.azure.com/calling/keys"
    audience: str | None = None
    audio_format: Literal["pcm16KMono", "pcm24KMono"] = "pcm16KMono"
    audio_channel_type: Literal["mixed", "unmixed"] = "mixed"
    transcription_locale: str = "en-US"
    dtmf_tones: bool = True  # ask ACS for the caller's keypad tones on the media socket
    # Azure AI services linked to the ACS resource (https://<name>.cognitiveservices.azure.com/):
    # real ACS needs it for transcription and for playing text.
    cognitive_services_endpoint: str | None = None

    _endpoint = field_validator("endpoint", "cognitive_services_endpoint")(_http_url)

    def rest_credentials(self) -> tuple[str, str] | None:
        """(endpoint, access key) for Call Automation REST requests, from the connection string
        or from the endpoint and key; None when neither is set."""
        if self.connection_string is not None:
            return parse_connection_string(self.connection_string.get_secret_value())
        if self.endpoint and self.access_key:
            return self.endpoint, self.access_key.get_secret_value()
        return None


def parse_connection_string(value: str) -> tuple[str, str]:
    """``endpoint=...;accesskey=...`` -> (endpoint, key), keeping the endpoint's scheme.

    The SDK's own parser forces https, which a plain-http stand-in cannot serve.
    """
    parts: dict[str, str] = {}
    for piece in value.split(";"):
        name, sep, val = piece.partition("=")
        if sep:
            parts[name.strip().lower()] = val.strip()
    endpoint, key = parts.get("endpoint"), parts.get("accesskey")
    if not endpoint or not key:
        raise ConfigError(
            "RTVOICE_ACS_CONNECTION_STRING: expected 'endpoint=<url>;accesskey=<key>'"
        )
    return endpoint.rstrip("/"), key


class GatewaySettings(_Group):
    public_url: str | None = None
    # Shared by all gateway replicas: signs the nonce in callback and WebSocket URLs.
    secret: SecretStr | None = None
    # Event Grid webhook: a secret in the subscription URL (?code=), and/or Entra ID delivery.
    eventgrid_secret: SecretStr | None = None
    eventgrid_entra_audience: str | None = None
    eventgrid_entra_tenant_id: str | None = None
    eventgrid_entra_issuer: str | None = None  # default: the tenant's v2.0 issuer
    eventgrid_entra_jwks_url: str | None = None  # default: the tenant's v2.0 keys
    media_wait_s: float = Field(default=10.0, gt=0, le=120)
    # An answered call whose actor is not up within this long is hung up (gateway/app.py).
    activation_timeout_s: float = Field(default=10.0, gt=0, le=300)
    replica_id: str | None = None
    # Local development only: allows an unauthenticated webhook and unchecked ACS tokens.
    insecure_dev: bool = False

    _public_url = field_validator("public_url")(_http_url)


class ActorSettings(_Group):
    ray_address: str | None = None
    ray_namespace: str = "rtvoice"
    call_slot_resource: str = "call_slot"
    idle_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    # Call slots this node offers; unset: sized from its cores and memory (actors/capacity.py).
    call_slots: int | None = Field(default=None, ge=0, le=10_000)
    # Warm pool of spare call actors (actors/pool.py): kept between these, adapted to arrivals.
    pool_min_spares: int = Field(default=2, ge=0, le=1_000)
    pool_max_spares: int = Field(default=16, ge=0, le=1_000)
    # Spares kept are twice the calls that took one in this window; past it, surplus spares
    # retire (their call slots free, and the autoscaler removes idle nodes).
    pool_demand_window_s: float = Field(default=30.0, gt=0, le=3_600)

    _names = field_validator("ray_namespace", "call_slot_resource")(_no_separator)


DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant answering a phone call. Reply in one to three short spoken "
    "sentences, in plain words: no lists, no markdown, no emoji."
)


def _responder_name(value: str) -> str:
    if value in ("echo", "openai"):
        return value
    module, _, attr = value.partition(":")
    if not (module and attr) or not all(p.isidentifier() for p in (*module.split("."), attr)):
        raise ValueError("must be echo, openai or module:attr (a responder of your own)")
    return value


class AssistantSettings(_Group):
    """What answers the caller (actors/responder.py): the offline echo, a model behind an
    OpenAI-compatible API (Azure OpenAI by key or Entra ID, or any ``base_url``), or a
    responder of your own named ``module:attr``."""

    responder: str = "echo"
    model: str = "gpt-4o-mini"  # with an Azure endpoint: the deployment name
    system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT, max_length=20_000)
    temperature: float = Field(default=0.3, ge=0, le=2)
    max_reply_tokens: int = Field(default=200, ge=1, le=4096)
    # Earlier turns go into the prompt, newest first, up to this many characters.
    history_chars: int = Field(default=6000, ge=200, le=500_000)
    azure_endpoint: str | None = None
    api_version: str = "2024-10-21"
    base_url: str | None = None  # any OpenAI-compatible API (default: api.openai.com)
    api_key: SecretStr | None = None
    use_entra_id: bool = False  # Azure OpenAI through azure-identity's DefaultAzureCredential
    # No byte from the model for this long (first token included): the caller hears a fallback.
    timeout_s: float = Field(default=8.0, gt=0, le=120)

    _responder = field_validator("responder")(_responder_name)
    _urls = field_validator("azure_endpoint", "base_url")(_http_url)


# Every variable (without the prefix) and its place in the tree.
ENV_VARS: Final[dict[str, tuple[str, ...]]] = {
    "APP_PREFIX": ("storage", "app_prefix"),
    "ENVIRONMENT": ("storage", "environment"),
    "REDIS_URL": ("storage", "redis", "url"),
    "REDIS_HOST": ("storage", "redis", "host"),
    "REDIS_PORT": ("storage", "redis", "port"),
    "REDIS_ACCESS_KEY": ("storage", "redis", "access_key"),
    "REDIS_USE_ENTRA_ID": ("storage", "redis", "use_entra_id"),
    "REDIS_USERNAME": ("storage", "redis", "username"),
    "REDIS_CLUSTER": ("storage", "redis", "cluster"),
    "REDIS_OP_TIMEOUT_S": ("storage", "redis", "op_timeout_s"),
    "COSMOS_ENDPOINT": ("storage", "cosmos", "endpoint"),
    "COSMOS_KEY": ("storage", "cosmos", "key"),
    "COSMOS_USE_ENTRA_ID": ("storage", "cosmos", "use_entra_id"),
    "COSMOS_DATABASE": ("storage", "cosmos", "database"),
    "COSMOS_VERIFY_TLS": ("storage", "cosmos", "verify_tls"),
    "ARCHIVE_PATH": ("storage", "archive_path"),
    "SPOOL_DIR": ("storage", "spool_dir"),
    "ACS_CONNECTION_STRING": ("acs", "connection_string"),
    "ACS_ENDPOINT": ("acs", "endpoint"),
    "ACS_ACCESS_KEY": ("acs", "access_key"),
    "ACS_JWT_ISSUER": ("acs", "jwt_issuer"),
    "ACS_JWKS_URL": ("acs", "jwks_url"),
    "ACS_AUDIENCE": ("acs", "audience"),
    "AUDIO_FORMAT": ("acs", "audio_format"),
    "AUDIO_CHANNEL_TYPE": ("acs", "audio_channel_type"),
    "TRANSCRIPTION_LOCALE": ("acs", "transcription_locale"),
    "ACS_DTMF_TONES": ("acs", "dtmf_tones"),
    "ACS_COGNITIVE_SERVICES_ENDPOINT": ("acs", "cognitive_services_endpoint"),
    "PUBLIC_URL": ("gateway", "public_url"),
    "GATEWAY_SECRET": ("gateway", "secret"),
    "EVENTGRID_SECRET": ("gateway", "eventgrid_secret"),
    "EVENTGRID_ENTRA_AUDIENCE": ("gateway", "eventgrid_entra_audience"),
    "EVENTGRID_ENTRA_TENANT_ID": ("gateway", "eventgrid_entra_tenant_id"),
    "EVENTGRID_ENTRA_ISSUER": ("gateway", "eventgrid_entra_issuer"),
    "EVENTGRID_ENTRA_JWKS_URL": ("gateway", "eventgrid_entra_jwks_url"),
    "MEDIA_WAIT_S": ("gateway", "media_wait_s"),
    "ACTIVATION_TIMEOUT_S": ("gateway", "activation_timeout_s"),
    "REPLICA_ID": ("gateway", "replica_id"),
    "INSECURE_DEV": ("gateway", "insecure_dev"),
    "RAY_ADDRESS": ("actors", "ray_address"),
    "RAY_NAMESPACE": ("actors", "ray_namespace"),
    "CALL_SLOT_RESOURCE": ("actors", "call_slot_resource"),
    "CALL_IDLE_TIMEOUT_S": ("actors", "idle_timeout_s"),
    "CALL_SLOTS": ("actors", "call_slots"),
    "POOL_MIN_SPARES": ("actors", "pool_min_spares"),
    "POOL_MAX_SPARES": ("actors", "pool_max_spares"),
    "POOL_DEMAND_WINDOW_S": ("actors", "pool_demand_window_s"),
    "RESPONDER": ("assistant", "responder"),
    "LLM_MODEL": ("assistant", "model"),
    "LLM_SYSTEM_PROMPT": ("assistant", "system_prompt"),
    "LLM_TEMPERATURE": ("assistant", "temperature"),
    "LLM_MAX_TOKENS": ("assistant", "max_reply_tokens"),
    "LLM_HISTORY_CHARS": ("assistant", "history_chars"),
    "LLM_TIMEOUT_S": ("assistant", "timeout_s"),
    "LLM_BASE_URL": ("assistant", "base_url"),
    "LLM_API_KEY": ("assistant", "api_key"),
    "AZURE_OPENAI_ENDPOINT": ("assistant", "azure_endpoint"),
    "AZURE_OPENAI_API_VERSION": ("assistant", "api_version"),
    "AZURE_OPENAI_USE_ENTRA_ID": ("assistant", "use_entra_id"),
}
_BY_PATH: Final[dict[tuple[str, ...], str]] = {path: name for name, path in ENV_VARS.items()}


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"redis_url": x}`` -> ``{"storage": {"redis": {"url": x}}}``; unknown names refused."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        path = ENV_VARS.get(name.upper())
        if path is None:
            raise ValueError(f"unknown setting {name!r}")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


class Settings(_Group):
    storage: StorageSettings = StorageSettings()
    acs: AcsSettings = AcsSettings()
    gateway: GatewaySettings = GatewaySettings()
    actors: ActorSettings = ActorSettings()
    assistant: AssistantSettings = AssistantSettings()

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """Accept the documented flat names as keywords (``Settings(redis_url=...)``)."""
        if not isinstance(data, dict) or not set(data) - set(cls.model_fields):
            return data
        groups = {k: v for k, v in data.items() if k in cls.model_fields}
        flat = {k: v for k, v in data.items() if k not in cls.model_fields}
        for group, values in _nest(flat).items():
            current = groups.get(group, {})
            if isinstance(current, BaseModel):
                current = current.model_dump()
            groups[group] = _merge(dict(current), values)
        return groups

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (lower case, no prefix), secrets still wrapped."""
        out: dict[str, Any] = {}
        for name, path in ENV_VARS.items():
            node: Any = self
            for part in path:
                node = getattr(node, part)
            out[name.lower()] = node
        return out

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed, by flat name (``replace(redis_url=...)``)."""
        return _validated(self.flat() | changes)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict | BaseModel):
            inner = base[key]
            base[key] = _merge(
                inner.model_dump() if isinstance(inner, BaseModel) else dict(inner), value
            )
        else:
            base[key] = value
    return base


def _validated(flat: Mapping[str, Any]) -> Settings:
    try:
        return Settings.model_validate(_nest(flat))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = tuple(str(p) for p in err["loc"][:4] if isinstance(p, str))
            name = next((_BY_PATH[path[:n]] for n in (3, 2) if path[:n] in _BY_PATH), "?")
            problems.append(f"{ENV_PREFIX}{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default: the process environment) or raise ConfigError.

    Variables not in ``ENV_VARS`` are ignored (other tools share the prefix namespace)."""
    env = os.environ if environ is None else environ
    flat = {
        name[len(ENV_PREFIX) :].lower(): value
        for name, value in env.items()
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].upper() in ENV_VARS
    }
    return _validated(flat)
