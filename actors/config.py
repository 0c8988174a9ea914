"""CallActorConfig: everything a call actor needs, as one picklable value passed to Ray.

Holds configuration only; it never opens a connection or reads the environment by itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from actors.responder import check_settings as check_responder
from storage.settings import Settings, StorageSettings

AUDIO_FORMATS: dict[str, int] = {"pcm16KMono": 16000, "pcm24KMono": 24000}
FRAME_MS = 20


@dataclass(frozen=True)
class CallActorConfig:
    """The whole settings tree as the gateway read it (a worker never reads its own
    environment) and the call actor's own knobs."""

    settings: Settings
    # After CallDisconnected, keep reading the streams until the gateway closes them, at most this
    # long: the callback can overtake the caller's last frames and final transcription result.
    end_drain_s: float = 2.0
    ring_seconds: float = 10.0
    max_participants: int = 16
    max_dtmf_tones: int = 1000  # per call: the tones are kept in the size-limited call session
    outbound_max_seconds: float = 60.0
    speaker: Literal["pcm", "acs"] = "pcm"
    voice: str = "en-US-NancyNeural"
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
    # Ray placement
    max_restarts: int = 3
    max_task_retries: int = 2
    # A process Ray restarted that no gateway binds to a call within this time exits: its call
    # ended meanwhile (or it was a spare the pool no longer queues), and it holds a call slot.
    orphan_grace_s: float = 60.0

    def __post_init__(self) -> None:
        redis = self.settings.storage.redis
        if not (redis.url or redis.host):
            raise ValueError("RTVOICE_REDIS_URL or RTVOICE_REDIS_HOST is required")
        if self.max_restarts == 0:
            raise ValueError("max_restarts must be > 0 (or -1 for unlimited)")
        for name in ("ring_seconds", "checkpoint_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.speaker == "acs" and self.settings.acs.rest_credentials() is None:
            raise ValueError(
                "speaker 'acs' needs RTVOICE_ACS_CONNECTION_STRING, or RTVOICE_ACS_ENDPOINT and "
                "RTVOICE_ACS_ACCESS_KEY"
            )
        check_responder(self.settings.assistant)  # RTVOICE_RESPONDER and its model settings

    @property
    def storage(self) -> StorageSettings:
        return self.settings.storage

    @property
    def idle_timeout_s(self) -> float:
        return self.settings.actors.idle_timeout_s

    @property
    def namespace(self) -> str:
        return self.settings.actors.ray_namespace

    @property
    def call_slot_resource(self) -> str:
        return self.settings.actors.call_slot_resource

    @property
    def audio_format(self) -> str:
        return self.settings.acs.audio_format

    @property
    def sample_rate(self) -> int:
        return AUDIO_FORMATS[self.audio_format]

    @property
    def frame_bytes(self) -> int:
        """Bytes of one 20 ms frame of 16-bit mono PCM at the negotiated rate."""
        return self.sample_rate * FRAME_MS // 1000 * 2

    @property
    def spare_pool(self) -> str:
        """The pool of spares started with this configuration: a replica with another (a new
        release, or a test's second stack) must not take a spare started with this one."""
        return "pool-" + hashlib.sha256(repr(self).encode()).hexdigest()[:16]

    def with_changes(self, **changes: Any) -> CallActorConfig:
        """A copy with knobs changed by field name and settings by their flat (variable) name."""
        knobs, flat = _split(changes)
        settings = self.settings.replace(**flat) if flat else self.settings
        return replace(self, settings=settings, **knobs)

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> CallActorConfig:
        """Build from the runtime settings (the gateway's), changed as ``with_changes`` does."""
        knobs, flat = _split(changes)
        settings = settings.replace(**flat) if flat else settings
        storage = settings.storage
        # Absolute: actors run in Ray workers whose working directory is not the driver's.
        resolved = settings.replace(
            archive_path=str(Path(storage.archive_path).resolve()),
            spool_dir=str(Path(storage.spool_dir).resolve()),
        )
        return cls(settings=resolved, **knobs)


_FIELDS = frozenset(f.name for f in fields(CallActorConfig))


def _split(changes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(knobs of the actor, settings by flat name)."""
    knobs = {k: v for k, v in changes.items() if k in _FIELDS}
    return knobs, {k: v for k, v in changes.items() if k not in _FIELDS}
