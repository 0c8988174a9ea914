"""Conversations in Redis: the schema (context document, append-only turn list, writer epoch),
the epoch-fenced checkpoint and the one-time migration of the legacy ``session:{id}`` layout.

Owns the conversation keys' layout and its two Lua scripts; never keeps a conversation in memory
(ConversationManager does) and never writes for an epoch older than the stored one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from storage.errors import SerializationError, StaleEpochError, StorageError
from storage.keys import TTL_POLICIES, Component, validate_identifier
from storage.redis_connection import RedisConnection, dumps, load_dict, loads

SCHEMA_VERSION = 1
LEGACY_SCHEMA_VERSION = 0

_CTX_TTL = TTL_POLICIES["conversation_context"]
_HISTORY_TTL = TTL_POLICIES["session_history"]

# KEYS: context, history, epoch.
# ARGV: epoch, has_context ("1"/"0"), context_doc, context_ttl, history_ttl, turn...
# Returns {1, history_len} or {0, stored_epoch} when the writer's epoch is stale.
CHECKPOINT_LUA = """
local stored = tonumber(redis.call('GET', KEYS[3]) or '0')
local epoch = tonumber(ARGV[1])
if stored > epoch then return {0, stored} end
if ARGV[6] == '1' then redis.call('DEL', KEYS[2]) end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
else
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local n = 0
for i = 7, #ARGV, 1000 do
  n = redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if n == 0 then n = redis.call('LLEN', KEYS[2]) end
if n > 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
if epoch > stored then
  redis.call('SET', KEYS[3], epoch, 'EX', ARGV[5])
elseif stored > 0 then
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return {1, n}
"""

# KEYS: legacy hash, context, history. ARGV: corememory seen, chat_history seen,
# context_doc, context_ttl, history_ttl, turn...
# Returns 1 migrated, 0 nothing to do (already current or legacy gone), -1 legacy changed.
MIGRATE_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local core = redis.call('HGET', KEYS[1], 'corememory') or ''
local hist = redis.call('HGET', KEYS[1], 'chat_history') or ''
if core ~= ARGV[1] or hist ~= ARGV[2] then return -1 end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
for i = 6, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if #ARGV >= 6 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
redis.call('DEL', KEYS[1])
return 1
"""


@dataclass
class ConversationSnapshot:
    context: dict[str, Any]
    turns: list[dict[str, Any]]
    epoch: int
    schema_version: int


@dataclass
class ClaimedConversation:
    snapshot: ConversationSnapshot | None  # as it was before the claim (None: nothing stored)
    epoch: int  # the epoch claimed
    legacy: bool  # a legacy ``session:{id}`` hash exists


def _snapshot(raw_ctx: Any, raw_turns: list[Any], raw_epoch: Any) -> ConversationSnapshot | None:
    """Parse a conversation read (context document, history list, epoch); None if empty."""
    if raw_ctx is None and not raw_turns and raw_epoch is None:
        return None
    doc = load_dict(raw_ctx, "conversation context") or {
        "schema_version": SCHEMA_VERSION,
        "context": {},
    }
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise SerializationError(f"unsupported conversation schema_version {version!r}")
    context = doc.get("context")
    if not isinstance(context, dict):
        raise SerializationError("conversation context document has no 'context' object")
    turns = []
    for seq, raw in enumerate(raw_turns, start=1):
        turn = load_dict(raw, "conversation turn")
        assert turn is not None
        turn["seq"] = seq
        turns.append(turn)
    return ConversationSnapshot(context, turns, int(raw_epoch or 0), version)


# --- the legacy layout ----------------------------------------------------------------------


def _legacy_turn(message: Any, participant: str | None) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise SerializationError("legacy chat_history entry is not an object")
    content = message.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:  # multimodal parts etc.: keep them readable rather than drop them
        text = orjson.dumps(content).decode()
    stamp = message.get("timestamp")
    meta = {k: v for k, v in message.items() if k not in ("role", "content", "timestamp")}
    meta["migrated_from_schema"] = LEGACY_SCHEMA_VERSION
    # Same shape as conversation.Turn.to_dict() without seq (seq is the list position).
    return {
        "role": str(message.get("role") or "unknown"),
        "text": text,
        "timestamp": float(stamp) if isinstance(stamp, int | float) else 0.0,
        "participant": participant,
        "confidence": None,
        "meta": meta,
    }


def parse_legacy_session(
    corememory: bytes | str | None, chat_history: bytes | str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Legacy ``session:{id}`` fields -> (context, turns). Agent-keyed histories are concatenated
    agent by agent (the legacy layout has no timestamps to interleave them) with participant set."""
    context = load_dict(corememory, "legacy corememory") or {}
    history = loads(chat_history, "legacy chat_history") if chat_history else []
    if isinstance(history, list):
        return context, [_legacy_turn(m, None) for m in history]
    if isinstance(history, dict):
        turns: list[dict[str, Any]] = []
        for agent, messages in history.items():
            if not isinstance(messages, list):
                raise SerializationError(f"legacy chat_history[{agent!r}] is not a list")
            turns.extend(_legacy_turn(m, str(agent)) for m in messages)
        return context, turns
    raise SerializationError("legacy chat_history is neither a list nor an object")


class ConversationStore(RedisConnection):
    """Load, checkpoint and migrate conversations; ``claim_epoch`` makes the caller the writer.

    In cluster mode the legacy migration needs a standalone server (the legacy key has no hash
    tag, so it cannot share a slot with the conversation's keys).
    """

    def _register_scripts(self) -> None:
        super()._register_scripts()
        self._checkpoint = self._script(CHECKPOINT_LUA)
        self._migrate = self._script(MIGRATE_LUA)

    def _conv_keys(self, conversation_id: str) -> tuple[str, str, str]:
        k = self.keys.conversation_key
        return (
            k(conversation_id, Component.CONTEXT),
            k(conversation_id, Component.HISTORY),
            k(conversation_id, Component.EPOCH),
        )

    async def context_ttls(self, conversation_ids: Sequence[str]) -> list[int]:
        """PTTL (ms) of each conversation's context key, in one round trip (-2: no key)."""
        if not conversation_ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for conversation_id in conversation_ids:
            pipe.pttl(self._conv_keys(conversation_id)[0])
        async with self._op("context_ttls"):
            return [int(ttl) for ttl in await pipe.execute()]

    def _queue_read(self, pipe: Any, conversation_id: str) -> None:
        ctx_key, hist_key, epoch_key = self._conv_keys(conversation_id)
        pipe.get(ctx_key)
        pipe.lrange(hist_key, 0, -1)
        pipe.get(epoch_key)

    async def _read_conversation(self, conversation_id: str) -> ConversationSnapshot | None:
        pipe = self._client.pipeline(transaction=False)
        self._queue_read(pipe, conversation_id)
        return _snapshot(*await pipe.execute())

    async def load_conversation(self, conversation_id: str) -> ConversationSnapshot | None:
        validate_identifier(conversation_id, "conversation id")
        async with self._op("load_conversation"):
            return await self._read_conversation(conversation_id)

    def _queue_claim(self, pipe: Any, conversation_id: str) -> None:
        """The next epoch (two replies: the epoch, then the TTL refresh)."""
        epoch_key = self._conv_keys(conversation_id)[2]
        pipe.incr(epoch_key)
        pipe.expire(epoch_key, _HISTORY_TTL)

    async def claim_epoch(self, conversation_id: str) -> int:
        async with self._op("claim_epoch"):
            pipe = self._client.pipeline(transaction=False)
            self._queue_claim(pipe, conversation_id)
            epoch, _ = await pipe.execute()
        return int(epoch)

    async def claim_conversation(self, conversation_id: str) -> ClaimedConversation:
        """What a conversation's new writer does first, in one round trip: read the snapshot,
        claim the next epoch, and learn whether a legacy hash waits to be migrated."""
        validate_identifier(conversation_id, "conversation id")
        pipe = self._client.pipeline(transaction=False)
        self._queue_read(pipe, conversation_id)  # the epoch read comes before the claim
        self._queue_claim(pipe, conversation_id)
        pipe.exists(self.keys.legacy_session_key(conversation_id))
        async with self._op("claim_conversation"):
            raw_ctx, raw_turns, raw_epoch, epoch, _, legacy = await pipe.execute()
        snapshot = _snapshot(raw_ctx, raw_turns, raw_epoch)
        return ClaimedConversation(snapshot, int(epoch), bool(legacy))

    async def current_epoch(self, conversation_id: str) -> int:
        key = self._conv_keys(conversation_id)[2]
        async with self._op("current_epoch"):
            raw = await self._client.get(key)
        return int(raw or 0)

    def _turn_payloads(self, turns: Sequence[dict[str, Any]]) -> list[bytes]:
        out = []
        for turn in turns:
            if not isinstance(turn, dict):
                raise SerializationError("a turn must be a dict")
            stored = {k: v for k, v in turn.items() if k != "seq"}  # seq = list position
            out.append(dumps(stored, "turn", self.limits.max_json_bytes))
        return out

    async def checkpoint(
        self,
        conversation_id: str,
        *,
        epoch: int,
        context: dict[str, Any] | None,
        new_turns: list[dict[str, Any]],
        replace_history: bool = False,
    ) -> int:
        """Write context + append turns + refresh TTLs in one EVALSHA, fenced by ``epoch``.

        Returns the history's length. ``replace_history`` makes ``new_turns`` the whole history
        (a writer repairing what a Redis restart without persistence lost).
        """
        keys = self._conv_keys(conversation_id)
        doc = b""
        if context is not None:
            if not isinstance(context, dict):
                raise SerializationError("context must be a dict")
            doc = dumps(
                {"schema_version": SCHEMA_VERSION, "context": context},
                "conversation context",
                self.limits.max_json_bytes,
            )
        args: list[Any] = [
            int(epoch),
            "1" if context is not None else "0",
            doc,
            _CTX_TTL,
            _HISTORY_TTL,
            "1" if replace_history else "0",
            *self._turn_payloads(new_turns),
        ]
        async with self._op("checkpoint"):
            ok, value = await self._checkpoint(keys=keys, args=args)
        if not ok:
            raise StaleEpochError(
                f"conversation {conversation_id}: epoch {epoch} is older than stored {value}"
            )
        return int(value)

    async def migrate_legacy(self, conversation_id: str) -> ConversationSnapshot | None:
        """Move a legacy ``session:{id}`` hash to the current format, once (Lua compare-and-set:
        of two concurrent loaders exactly one writes; the other reads what it wrote)."""
        legacy = self.keys.legacy_session_key(conversation_id)
        keys = (legacy, *self._conv_keys(conversation_id)[:2])
        async with self._op("migrate_legacy"):
            for _ in range(3):  # retried only if the legacy hash changed between read and write
                core, hist = await self._client.hmget(legacy, ["corememory", "chat_history"])
                if core is None and hist is None:
                    return await self._read_conversation(conversation_id)
                context, turns = parse_legacy_session(core, hist)
                doc = dumps(
                    {
                        "schema_version": SCHEMA_VERSION,
                        "context": context,
                        "migrated_from_schema": LEGACY_SCHEMA_VERSION,
                    },
                    "migrated context",
                    self.limits.max_json_bytes,
                )
                args = [core or b"", hist or b"", doc, _CTX_TTL, _HISTORY_TTL]
                args += self._turn_payloads(turns)
                result = await self._migrate(keys=keys, args=args)
                if result >= 0:
                    return await self._read_conversation(conversation_id)
            raise StorageError(f"legacy session {conversation_id} kept changing during migration")
