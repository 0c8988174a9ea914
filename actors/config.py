"""CallActorConfig: everything a call actor needs, as one picklable value passed to Ray.

Holds configuration only; it never opens a connection or reads the environment by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from storage.settings import Settings

AUDIO_FORMATS: dict[str, int] = {"pcm16KMono": 16000, "pcm24KMono": 24000}
FRAME_MS = 20


def _secret(value: str | None) -> SecretStr | None:
    return SecretStr(value) if value is not None else None


@dataclass(frozen=True)
class CallActorConfig:
    # Redis: a URL (local), or Azure Cache for Redis by host with an access key or Entra ID.
    redis_url: str | None
    redis_host: str | None = None
    redis_port: int = 6380
    redis_access_key: str | None = None
    redis_use_entra_id: bool = False
    redis_username: str | None = None
    redis_cluster: bool = False
    app_prefix: str = "rtvoice"
    environment: str = "dev"
    # Archive: Cosmos when cosmos_endpoint is set, else the embedded SQLite store at archive_path.
    archive_path: str = "rtvoice-archive.sqlite3"
    cosmos_endpoint: str | None = None
    cosmos_key: str | None = None
    cosmos_database: str = "rtvoice"
    cosmos_verify_tls: bool = True
    spool_path: str = "rtvoice-archive-spool.jsonl"
    # Call behaviour
    idle_timeout_s: float = 120.0
    # After CallDisconnected, keep reading the streams until the gateway closes them, at most this
    # long: the callback can overtake the caller's last frames and final transcription result.
    end_drain_s: float = 2.0
    audio_format: Literal["pcm16KMono", "pcm24KMono"] = "pcm16KMono"
    ring_seconds: float = 10.0
    max_participants: int = 16
    max_dtmf_tones: int = 1000  # per call: the tones are kept in the size-limited call session
    outbound_max_seconds: float = 60.0
    responder: str = "echo"
    speaker: Literal["pcm", "acs"] = "pcm"
    voice: str = "en-US-NancyNeural"
    acs_endpoint: str | None = None
    acs_access_key: str | None = None
    # Stream endpoint (data plane)
    stream_host: str = "127.0.0.1"
    advertise_host: str | None = None
    max_frame_bytes: int = 256 * 1024
    max_message_bytes: int = 64 * 1024
    handshake_timeout_s: float = 5.0
    # Persistence cadence
    checkpoint_interval_s: float = 2.0
    heartbeat_interval_s: float = 5.0
    lease_s: int = 30
    redis_op_timeout_s: float = 2.0
    # Ray placement
    namespace: str = "rtvoice"
    call_slot_resource: str = "call_slot"
    max_restarts: int = 3
    max_task_retries: int = 2

    def __post_init__(self) -> None:
        if not (self.redis_url or self.redis_host):
            raise ValueError("redis_url or redis_host is required")
        if self.audio_format not in AUDIO_FORMATS:
            raise ValueError(f"audio_format must be one of {sorted(AUDIO_FORMATS)}")
        if self.max_restarts == 0:
            raise ValueError("max_restarts must be > 0 (or -1 for unlimited)")
        for name in ("idle_timeout_s", "ring_seconds", "checkpoint_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.speaker == "acs" and not (self.acs_endpoint and self.acs_access_key):
            raise ValueError("speaker 'acs' needs acs_endpoint and acs_access_key")

    @property
    def sample_rate(self) -> int:
        return AUDIO_FORMATS[self.audio_format]

    @property
    def frame_bytes(self) -> int:
        """Bytes of one 20 ms frame of 16-bit mono PCM at the negotiated rate."""
        return self.sample_rate * FRAME_MS // 1000 * 2

    def storage_settings(self) -> Settings:
        """The storage Settings the Redis manager and ``open_archive`` are built from."""
        return Settings(
            app_prefix=self.app_prefix,
            environment=self.environment,
            redis_url=self.redis_url,
            redis_host=self.redis_host,
            redis_port=self.redis_port,
            redis_access_key=_secret(self.redis_access_key),
            redis_use_entra_id=self.redis_use_entra_id,
            redis_username=self.redis_username,
            redis_cluster=self.redis_cluster,
            redis_op_timeout_s=self.redis_op_timeout_s,
            cosmos_endpoint=self.cosmos_endpoint,
            cosmos_key=_secret(self.cosmos_key),
            cosmos_database=self.cosmos_database,
            cosmos_verify_tls=self.cosmos_verify_tls,
            archive_path=self.archive_path,
        )

    def with_changes(self, **changes: Any) -> CallActorConfig:
        return replace(self, **changes)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CallActorConfig:
        """Build from the runtime settings (the gateway's), overriding any field by keyword."""
        secret = settings.redis_access_key
        values: dict[str, Any] = {
            "redis_url": settings.redis_url,
            "redis_host": settings.redis_host,
            "redis_port": settings.redis_port,
            "redis_access_key": secret.get_secret_value() if secret else None,
            "redis_use_entra_id": settings.redis_use_entra_id,
            "redis_username": settings.redis_username,
            "redis_cluster": settings.redis_cluster,
            "app_prefix": settings.app_prefix,
            "environment": settings.environment,
            # Absolute: actors run in Ray workers whose working directory is not the driver's.
            "archive_path": str(Path(settings.archive_path).resolve()),
            "spool_path": str(Path(cls.spool_path).resolve()),
            "cosmos_endpoint": settings.cosmos_endpoint,
            "cosmos_key": settings.cosmos_key.get_secret_value() if settings.cosmos_key else None,
            "cosmos_database": settings.cosmos_database,
            "cosmos_verify_tls": settings.cosmos_verify_tls,
            "idle_timeout_s": settings.call_idle_timeout_s,
            "audio_format": settings.audio_format,
            "acs_endpoint": settings.acs_endpoint,
            "acs_access_key": (
                settings.acs_access_key.get_secret_value() if settings.acs_access_key else None
            ),
            "redis_op_timeout_s": settings.redis_op_timeout_s,
            "namespace": settings.ray_namespace,
            "call_slot_resource": settings.call_slot_resource,
        }
        values.update(overrides)
        return cls(**values)
