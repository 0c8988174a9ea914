"""ConversationManager on a real redis-server: diffs, fencing, concurrency, legacy migration."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from simulator.devstack.local_redis import LocalRedisServer
from storage.conversation import ConversationManager, Turn
from storage.conversation_store import SCHEMA_VERSION
from storage.errors import (
    InvalidKeyError,
    PayloadTooLargeError,
    RedisUnavailableError,
    SerializationError,
    StaleEpochError,
)
from storage.keys import Component, RedisKeyManager
from storage.redis_manager import AsyncAzureRedisManager


@pytest.fixture
async def mgr2(
    redis_url: str, key_manager: RedisKeyManager
) -> AsyncIterator[AsyncAzureRedisManager]:
    """A second manager (own pool), as a second process would have."""
    async with AsyncAzureRedisManager.from_url(redis_url, key_manager, op_timeout=1.0) as m:
        yield m


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def sid() -> str:
    return uuid.uuid4().hex[:12]


def test_turn_round_trip() -> None:
    turn = Turn(3, "user", "hi", 1.5, participant="caller", confidence=0.9, meta={"lang": "en"})
    assert Turn.from_dict(turn.to_dict()) == turn
    assert Turn.from_dict({"role": "assistant", "text": "ok"}).seq == 0
    with pytest.raises(SerializationError):
        Turn.from_dict({"text": "no role"})


async def test_new_conversation_persist_and_reload(redis_mgr: AsyncAzureRedisManager) -> None:
    cm = await ConversationManager.from_redis(sid(), redis_mgr)
    assert (dict(cm.context), cm.history, cm.epoch, cm.dirty) == ({}, [], 0, False)
    assert await cm.persist() == 0  # nothing changed: no round trip

    await cm.claim_epoch()
    await cm.update_context({"caller": "Ann", "intent": None})
    t1 = await cm.append_to_history("user", "hello", participant="caller", confidence=0.92)
    t2 = await cm.append_to_history("assistant", "hi Ann", timestamp=12.5, voice="jenny")
    assert (cm.dirty, cm.pending_turns, t1.seq) == (True, 2, 0)
    assert await cm.persist() == 1
    assert (t1.seq, t2.seq, cm.dirty, cm.pending_turns) == (1, 2, False, 0)
    assert await cm.persist() == 0

    again = await ConversationManager.from_redis(cm.session_id, redis_mgr)
    assert again.context == {"caller": "Ann", "intent": None}
    assert [t.to_dict() for t in again.history] == [t1.to_dict(), t2.to_dict()]
    assert again.history[1].meta == {"voice": "jenny"} and again.epoch == cm.epoch == 1
    with pytest.raises(TypeError):
        again.context["x"] = 1  # type: ignore[index]


async def test_persist_sends_only_the_difference(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    cm = await ConversationManager.from_redis(sid(), redis_mgr)
    await cm.update_context({"a": 1})
    await cm.append_to_history("user", "one")
    await cm.persist()
    # Someone else's context write: a turns-only persist must not overwrite it.
    ctx_key = redis_mgr.keys.conversation_key(cm.session_id, Component.CONTEXT)
    await admin.set(ctx_key, orjson.dumps({"schema_version": 1, "context": {"other": True}}))
    await cm.append_to_history("user", "two")
    await cm.persist()
    snap = await redis_mgr.load_conversation(cm.session_id)
    assert snap is not None
    assert snap.context == {"other": True}
    assert [t["text"] for t in snap.turns] == ["one", "two"]


async def test_zombie_writer_is_fenced_and_keeps_pending(
    redis_mgr: AsyncAzureRedisManager, mgr2: AsyncAzureRedisManager
) -> None:
    conv = sid()
    old = await ConversationManager.from_redis(conv, redis_mgr)
    await old.claim_epoch()
    await old.append_to_history("user", "before restart")
    await old.persist()

    new = await ConversationManager.from_redis(conv, mgr2)  # the restarted actor
    assert await new.claim_epoch() == 2
    await old.append_to_history("user", "zombie")
    await old.update_context({"zombie": True})
    with pytest.raises(StaleEpochError):
        await old.persist()
    assert old.pending_turns == 1 and old.dirty  # nothing silently dropped

    await new.append_to_history("assistant", "after restart")
    await new.persist()
    snap = await redis_mgr.load_conversation(conv)
    assert snap is not None
    assert [t["text"] for t in snap.turns] == ["before restart", "after restart"]
    assert snap.context == {}


async def test_claimed_loads_and_claims_the_next_epoch_in_one_step(
    redis_mgr: AsyncAzureRedisManager, mgr2: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    conv = sid()
    first = await ConversationManager.claimed(conv, redis_mgr)
    assert (dict(first.context), first.history, first.epoch) == ({}, [], 1)
    await first.update_context({"caller": "Ann"})
    await first.append_to_history("user", "before restart")
    await first.persist()

    second = await ConversationManager.claimed(conv, mgr2)  # a restarted actor
    assert (second.context, second.epoch) == ({"caller": "Ann"}, 2)
    assert [t.text for t in second.history] == ["before restart"]
    await first.append_to_history("user", "zombie")
    with pytest.raises(StaleEpochError):
        await first.persist()

    legacy_conv = sid()  # a legacy hash is migrated, as from_redis does
    await admin.hset(
        RedisKeyManager.legacy_session_key(legacy_conv),
        mapping={"corememory": orjson.dumps({"customer": "Bo"}), "chat_history": "[]"},
    )
    migrated = await ConversationManager.claimed(legacy_conv, redis_mgr)
    assert (migrated.context, migrated.epoch) == ({"customer": "Bo"}, 1)


async def test_two_managers_appending_concurrently_lose_no_turn(
    redis_mgr: AsyncAzureRedisManager, mgr2: AsyncAzureRedisManager
) -> None:
    conv = sid()
    a = await ConversationManager.from_redis(conv, redis_mgr)
    b = await ConversationManager.from_redis(conv, mgr2)
    n = 40

    async def speak(cm: ConversationManager, who: str, i: int) -> None:
        await cm.append_to_history("user", f"{who}-{i}", participant=who)
        if i % 3 == 0:
            await cm.update_context({f"{who}-last": i})
        await cm.persist()

    await asyncio.gather(*(speak(cm, w, i) for i in range(n) for cm, w in ((a, "a"), (b, "b"))))
    await a.persist()
    await b.persist()

    snap = await redis_mgr.load_conversation(conv)
    assert snap is not None
    texts = [t["text"] for t in snap.turns]
    assert sorted(texts) == sorted(f"{w}-{i}" for w in "ab" for i in range(n))
    assert [t["seq"] for t in snap.turns] == list(range(1, 2 * n + 1))
    # Every local turn got the seq of its stored position.
    for cm in (a, b):
        for turn in cm.history:
            assert snap.turns[turn.seq - 1]["text"] == turn.text


async def test_persist_after_redis_outage_loses_nothing(
    redis_server: LocalRedisServer, redis_mgr: AsyncAzureRedisManager
) -> None:
    cm = await ConversationManager.from_redis(sid(), redis_mgr)
    await cm.append_to_history("user", "one")
    await cm.persist()
    redis_server.stop()
    try:
        await cm.append_to_history("user", "two")
        await cm.update_context({"k": "v"})
        with pytest.raises(RedisUnavailableError):
            await asyncio.wait_for(cm.persist(), 10)
        assert cm.pending_turns == 1 and cm.dirty
    finally:
        redis_server.start()
    # The restart lost the data (no persistence): the next persist sends what is pending, sees
    # the loss and writes the whole history again.
    assert await cm.persist() == 2
    snap = await redis_mgr.load_conversation(cm.session_id)
    assert snap is not None and [t["text"] for t in snap.turns] == ["one", "two"]
    assert snap.context == {"k": "v"}


async def test_bad_input(redis_mgr: AsyncAzureRedisManager) -> None:
    for bad in ("", "a:b", "a b"):
        with pytest.raises(InvalidKeyError):
            await ConversationManager.from_redis(bad, redis_mgr)
    cm = await ConversationManager.from_redis(sid(), redis_mgr)
    with pytest.raises(SerializationError):
        await cm.update_context({"when": object()})
    with pytest.raises(SerializationError):
        await cm.append_to_history("user", "x", extra={1, 2})
    with pytest.raises(PayloadTooLargeError):
        await cm.append_to_history("user", "x" * (512 * 1024 + 1))
    with pytest.raises(ValueError):
        await cm.append_to_history(" ", "x")
    assert not cm.dirty and cm.pending_turns == 0


# --- legacy layout --------------------------------------------------------------------------


LEGACY_LIST = [
    {"role": "system", "content": "You are a bank assistant."},
    {"role": "user", "content": "What is my balance?"},
    {"role": "assistant", "content": "Let me check."},
]
LEGACY_AGENTS = {
    "AuthAgent": [{"role": "user", "content": "My id is 42"}],
    "FraudAgent": [
        {"role": "user", "content": "I lost my card"},
        {"role": "assistant", "content": "Blocking it now."},
    ],
}


@pytest.mark.parametrize("history", [LEGACY_LIST, LEGACY_AGENTS], ids=["list", "per-agent"])
async def test_legacy_session_migrates_once_with_two_loaders(
    redis_mgr: AsyncAzureRedisManager,
    mgr2: AsyncAzureRedisManager,
    admin: aioredis.Redis,
    history: object,
) -> None:
    expected = (
        [m["content"] for m in LEGACY_LIST]
        if isinstance(history, list)
        else [m["content"] for msgs in LEGACY_AGENTS.values() for m in msgs]
    )
    for _ in range(5):  # repeat: the race window differs from run to run
        conv = sid()
        legacy = RedisKeyManager.legacy_session_key(conv)
        await admin.hset(
            legacy,
            mapping={
                "corememory": orjson.dumps({"customer": "Ann", "authenticated": True}),
                "chat_history": orjson.dumps(history),
                "other_field": "kept out",
            },
        )
        a, b = await asyncio.gather(
            ConversationManager.from_redis(conv, redis_mgr),
            ConversationManager.from_redis(conv, mgr2),
        )
        for cm in (a, b):
            assert cm.context == {"customer": "Ann", "authenticated": True}
            assert [t.text for t in cm.history] == expected
            assert [t.seq for t in cm.history] == list(range(1, len(expected) + 1))
        assert not await admin.exists(legacy)
        hist_key = redis_mgr.keys.conversation_key(conv, Component.HISTORY)
        assert await admin.llen(hist_key) == len(expected)  # migrated exactly once
        doc = orjson.loads(
            await admin.get(redis_mgr.keys.conversation_key(conv, Component.CONTEXT))
        )
        assert doc["schema_version"] == SCHEMA_VERSION
        assert doc["migrated_from_schema"] == 0

    if isinstance(history, dict):
        assert [t.participant for t in a.history] == ["AuthAgent", "FraudAgent", "FraudAgent"]

    # A later load reads the current format; appending continues after the migrated turns.
    c = await ConversationManager.from_redis(conv, redis_mgr)
    turn = await c.append_to_history("user", "new")
    await c.persist()
    assert turn.seq == len(expected) + 1


async def test_current_format_wins_over_a_stale_legacy_hash(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    conv = sid()
    cm = await ConversationManager.from_redis(conv, redis_mgr)
    await cm.append_to_history("user", "current")
    await cm.persist()
    await admin.hset(RedisKeyManager.legacy_session_key(conv), "chat_history", "[]")
    again = await ConversationManager.from_redis(conv, redis_mgr)
    assert [t.text for t in again.history] == ["current"]
    await admin.delete(RedisKeyManager.legacy_session_key(conv))


async def test_history_lost_by_a_redis_restart_is_written_again(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    session = sid()
    cm = await ConversationManager.from_redis(session, redis_mgr)
    await cm.claim_epoch()
    await cm.update_context({"caller": "Ada"})
    await cm.append_to_history("user", "one")
    await cm.append_to_history("assistant", "two")
    assert await cm.persist() == 1
    # A Redis restart without persistence: every key of the conversation is gone.
    await admin.delete(*(redis_mgr.keys.conversation_key(session, c) for c in Component))
    await cm.append_to_history("user", "three")
    assert await cm.persist() == 2  # the append showed the loss; the repair rewrote it all
    snap = await redis_mgr.load_conversation(session)
    assert snap is not None and snap.context == {"caller": "Ada"}
    assert [(t["seq"], t["text"]) for t in snap.turns] == [(1, "one"), (2, "two"), (3, "three")]
    assert [t.seq for t in cm.history] == [1, 2, 3]
    await cm.append_to_history("assistant", "four")
    assert await cm.persist() == 1  # back to one round trip
