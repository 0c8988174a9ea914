"""Redis key grammar and TTL policy: the only place in rtvoice that spells a Redis key.

Grammar: ``{app_prefix}:{environment}:{data_type}:{identifier}:{component}``. Identifiers are
validated, never escaped: an id that is empty or holds ``:`` or whitespace is rejected.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Final

from storage.errors import InvalidKeyError


class DataType(StrEnum):
    CALL = "call"
    CONVERSATION = "conversation"
    WORKER = "worker"
    CACHE = "cache"
    USER = "user"
    ARCHIVE = "archive"


class Component(StrEnum):
    SESSION = "session"
    CONTEXT = "context"
    HISTORY = "history"
    EPOCH = "epoch"
    AUTH = "auth"
    SUMMARY = "summary"
    AFFINITY = "affinity"
    TTS = "tts"
    PROFILE = "profile"
    OUTBOX = "outbox"
    ANSWER = "answer"
    LEASE = "lease"
    SPARES = "spares"
    CLAIMS = "claims"
    ADDRESSES = "addresses"
    ACTOR = "actor"
    DRAINING = "draining"


# Seconds. Applied on every write that creates or refreshes a key (ARCHITECTURE.md).
TTL_POLICIES: Final[dict[str, int]] = {
    "conversation_context": 30 * 60,
    "session_history": 2 * 60 * 60,
    "authentication_state": 15 * 60,
    "tts_cache": 24 * 60 * 60,
    "call_summary": 7 * 24 * 60 * 60,
}
# Affinity records are leases renewed by heartbeat; short so a dead owner is noticed quickly.
AFFINITY_LEASE_SECONDS: Final[int] = 30
# An incoming call context is answered once; Event Grid retries for minutes at most.
ANSWER_CLAIM_SECONDS: Final[int] = 10 * 60
# A pool's spares claimed by calls being bound (kept while the pool is in use).
SPARE_CLAIMS_SECONDS: Final[int] = 60 * 60
# User profiles are a read-through cache of the archive; invalidated on write.
PROFILE_CACHE_SECONDS: Final[int] = 60 * 60

_FORBIDDEN = re.compile(r"[:\s]")


def validate_identifier(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it may stand in a key, else raise :class:`InvalidKeyError`."""
    if not isinstance(value, str):
        raise InvalidKeyError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidKeyError(f"{what} must not be empty")
    if _FORBIDDEN.search(value):
        raise InvalidKeyError(f"{what} must not contain ':' or whitespace")
    return value


class RedisKeyManager:
    """Builds every Redis key of the application.

    With ``hash_tags=True`` (Redis Cluster) the identifier is wrapped in ``{}`` so that all keys of
    one call or conversation land in one slot and a checkpoint script may touch them together.
    """

    def __init__(
        self, app_prefix: str = "rtvoice", environment: str = "prod", *, hash_tags: bool = False
    ) -> None:
        self.app_prefix = validate_identifier(app_prefix, "app_prefix")
        self.environment = validate_identifier(environment, "environment")
        self.hash_tags = hash_tags

    def key(self, data_type: DataType, identifier: str, component: Component) -> str:
        ident = validate_identifier(identifier, f"{data_type.value} id")
        if self.hash_tags:
            ident = "{" + ident + "}"
        return f"{self.app_prefix}:{self.environment}:{data_type.value}:{ident}:{component.value}"

    def call_key(self, call_id: str, component: Component) -> str:
        return self.key(DataType.CALL, call_id, component)

    def conversation_key(self, conversation_id: str, component: Component) -> str:
        return self.key(DataType.CONVERSATION, conversation_id, component)

    def worker_key(self, worker_id: str, component: Component = Component.AFFINITY) -> str:
        return self.key(DataType.WORKER, worker_id, component)

    def user_key(self, user_id: str, component: Component = Component.PROFILE) -> str:
        """``user:{sha256(user id)}:profile``: ACS user ids (``8:acs:...``) hold ``:``, and a
        phone number should not be readable in a key name."""
        if not user_id:
            raise InvalidKeyError("user id must not be empty")
        digest = hashlib.sha256(user_id.encode("utf-8")).hexdigest()
        return self.key(DataType.USER, digest, component)

    def tts_cache_key(self, voice: str, audio_format: str, text: str) -> str:
        """``cache:{sha256}:tts``: one entry per (voice, format, text), shared by all calls."""
        digest = hashlib.sha256(
            "\x1f".join((voice, audio_format, text)).encode("utf-8")
        ).hexdigest()
        return self.key(DataType.CACHE, digest, Component.TTS)

    def outbox_key(self) -> str:
        """The archive outbox stream (one per deployment)."""
        return self.key(DataType.ARCHIVE, "transcripts", Component.OUTBOX)

    @staticmethod
    def legacy_session_key(session_id: str) -> str:
        """``session:{id}``: the hash layout of existing ACS voice samples, read for migration."""
        return f"session:{validate_identifier(session_id, 'session id')}"
