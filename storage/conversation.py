"""One conversation's context and history in memory, checkpointed to Redis by difference.

Talks to Redis only through AsyncAzureRedisManager (load, migrate, checkpoint); never spells a key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from storage.conversation_store import SCHEMA_VERSION, ConversationSnapshot
from storage.errors import PayloadTooLargeError, SerializationError
from storage.keys import validate_identifier
from storage.redis_connection import dumps
from storage.redis_manager import AsyncAzureRedisManager

__all__ = ["ConversationManager", "Turn"]


@dataclass
class Turn:
    """One utterance. ``seq`` is its 1-based position in the stored history (0 until persisted)."""

    seq: int
    role: str
    text: str
    timestamp: float
    participant: str | None = None
    confidence: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "role": self.role,
            "text": self.text,
            "timestamp": self.timestamp,
            "participant": self.participant,
            "confidence": self.confidence,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Turn:
        try:
            confidence = data.get("confidence")
            meta = data.get("meta") or {}
            if not isinstance(meta, dict):
                raise TypeError("meta is not an object")
            return cls(
                seq=int(data.get("seq") or 0),
                role=str(data["role"]),
                text=str(data["text"]),
                timestamp=float(data.get("timestamp") or 0.0),
                participant=data.get("participant"),
                confidence=None if confidence is None else float(confidence),
                meta=meta,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"invalid turn: {exc!r}") from None


class ConversationManager:
    """Context (a dict, shallow-merged) and an append-only history for one session.

    Changes stay pending until :meth:`persist`, which sends only the difference in one
    checkpoint round trip fenced by ``epoch``; a failed persist keeps them for the next one.
    """

    def __init__(
        self,
        session_id: str,
        redis_mgr: AsyncAzureRedisManager,
        snapshot: ConversationSnapshot | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session_id = validate_identifier(session_id, "session id")
        self._redis = redis_mgr
        self._clock = clock
        snap = snapshot or ConversationSnapshot({}, [], 0, SCHEMA_VERSION)
        self._context: dict[str, Any] = dict(snap.context)
        self._history: list[Turn] = [Turn.from_dict(t) for t in snap.turns]
        self.epoch = snap.epoch
        self.schema_version = SCHEMA_VERSION
        self._pending: list[Turn] = []
        self._context_version = 0  # bumped by each update, so a persist racing one stays dirty
        self._persisted_version = 0
        self._persist_lock = asyncio.Lock()

    @classmethod
    async def from_redis(
        cls, session_id: str, redis_mgr: AsyncAzureRedisManager
    ) -> ConversationManager:
        """Load the current format; else migrate the legacy layout (once); else start empty."""
        validate_identifier(session_id, "session id")
        snapshot = await redis_mgr.load_conversation(session_id)
        if snapshot is None:
            snapshot = await redis_mgr.migrate_legacy(session_id)
        return cls(session_id, redis_mgr, snapshot)

    @classmethod
    async def claimed(
        cls, session_id: str, redis_mgr: AsyncAzureRedisManager
    ) -> ConversationManager:
        """``from_redis`` then ``claim_epoch`` in one round trip (a legacy hash to migrate adds
        its own): how a call's actor takes its conversation, on the caller's set-up path."""
        claim = await redis_mgr.claim_conversation(session_id)
        snapshot = claim.snapshot
        if snapshot is None and claim.legacy:
            snapshot = await redis_mgr.migrate_legacy(session_id)
        cm = cls(session_id, redis_mgr, snapshot)
        cm.epoch = claim.epoch
        return cm

    def __repr__(self) -> str:
        return (
            f"ConversationManager({self.session_id}, epoch={self.epoch}, "
            f"turns={len(self._history)}, pending={len(self._pending)})"
        )

    @property
    def context(self) -> Mapping[str, Any]:
        return MappingProxyType(self._context)

    @property
    def history(self) -> list[Turn]:
        return list(self._history)

    @property
    def dirty(self) -> bool:
        return self._context_version != self._persisted_version or bool(self._pending)

    @property
    def pending_turns(self) -> int:
        return len(self._pending)

    async def claim_epoch(self) -> int:
        """Become the owner: every writer holding an older epoch is refused from now on."""
        self.epoch = await self._redis.claim_epoch(self.session_id)
        return self.epoch

    async def update_context(self, patch: dict[str, Any]) -> None:
        if not isinstance(patch, dict):
            raise SerializationError("context patch must be a dict")
        if not patch:
            return
        dumps(patch, "context patch", self._redis.limits.max_json_bytes)  # fail now, not later
        self._context.update(patch)
        self._context_version += 1

    async def append_to_history(
        self,
        role: str,
        text: str,
        *,
        participant: str | None = None,
        confidence: float | None = None,
        timestamp: float | None = None,
        **meta: Any,
    ) -> Turn:
        if not isinstance(role, str) or not role.strip():
            raise ValueError("role must be a non-empty string")
        if not isinstance(text, str):
            raise SerializationError("text must be a string")
        limit = self._redis.limits.max_turn_text_bytes
        size = len(text.encode("utf-8"))
        if size > limit:
            raise PayloadTooLargeError(f"turn text is {size} bytes, limit {limit}")
        turn = Turn(
            seq=0,
            role=role,
            text=text,
            timestamp=self._clock() if timestamp is None else float(timestamp),
            participant=participant,
            confidence=confidence,
            meta=dict(meta),
        )
        dumps(turn.to_dict(), "turn", self._redis.limits.max_json_bytes)
        self._pending.append(turn)
        self._history.append(turn)
        return turn

    async def persist(self) -> int:
        """Write what changed since the last persist; returns the round trips made.

        One round trip normally; two when Redis turns out to hold fewer turns than this writer
        has persisted (it restarted without persistence): the whole history is then rewritten.
        """
        async with self._persist_lock:  # two persists at once would send one batch twice
            if not self.dirty:
                return 0
            batch = list(self._pending)
            known = len(self._history)  # turns Redis should hold once the batch is in
            version = self._context_version
            context_changed = version != self._persisted_version
            length = await self._redis.checkpoint(
                self.session_id,
                epoch=self.epoch,
                context=dict(self._context) if context_changed else None,
                new_turns=[t.to_dict() for t in batch],
            )
            round_trips = 1
            if length < known:  # turns we wrote are gone: write everything we know again
                length = await self._redis.checkpoint(
                    self.session_id,
                    epoch=self.epoch,
                    context=dict(self._context),
                    new_turns=[t.to_dict() for t in self._history[:known]],
                    replace_history=True,
                )
                round_trips = 2
            first = length - len(batch) + 1
            for offset, turn in enumerate(batch):
                turn.seq = first + offset
            del self._pending[: len(batch)]
            self._persisted_version = version
            return round_trips
