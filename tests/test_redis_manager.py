"""AsyncAzureRedisManager against a real redis-server (the session fixture), never a fake."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from azure.core.credentials import AccessToken
from redis.asyncio import BlockingConnectionPool, SSLConnection
from redis.asyncio.cluster import RedisCluster

from simulator.devstack.local_redis import LocalRedisServer, free_port
from storage import affinity, conversation_store, pool_store
from storage.affinity import AffinityRecord
from storage.conversation_store import parse_legacy_session
from storage.errors import (
    InvalidKeyError,
    PayloadTooLargeError,
    RedisTimeoutError,
    RedisUnavailableError,
    SerializationError,
    StaleEpochError,
)
from storage.keys import (
    AFFINITY_LEASE_SECONDS,
    PROFILE_CACHE_SECONDS,
    TTL_POLICIES,
    Component,
    RedisKeyManager,
)
from storage.redis_auth import REDIS_ENTRA_SCOPE, EntraIdCredentialProvider
from storage.redis_connection import PayloadLimits
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import ConfigError, load_settings
from tests.helpers import REDIS_OP_TIMEOUT_S

OP_TIMEOUT = REDIS_OP_TIMEOUT_S  # the redis_mgr fixture's


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A raw client, only to inspect what the manager wrote (TTL, INFO, legacy layout)."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def uid() -> str:
    return uuid.uuid4().hex[:12]


async def assert_ttl(admin: aioredis.Redis, key: str, policy_s: int) -> None:
    ttl = await admin.ttl(key)
    assert policy_s - 10 <= ttl <= policy_s, f"{key}: ttl {ttl}, policy {policy_s}"


# --- TTL per key family ---------------------------------------------------------------------


async def test_every_key_family_gets_its_ttl(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    keys = redis_mgr.keys
    call, conv, user, replica = uid(), uid(), uid(), uid()

    await redis_mgr.store_call_session(call, {"state": "connected"})
    await assert_ttl(admin, keys.call_key(call, Component.SESSION), TTL_POLICIES["session_history"])

    epoch = await redis_mgr.claim_epoch(conv)
    await redis_mgr.checkpoint(
        conv, epoch=epoch, context={"a": 1}, new_turns=[{"role": "u", "text": "x"}]
    )
    ctx, hist, ep = (
        keys.conversation_key(conv, c)
        for c in (Component.CONTEXT, Component.HISTORY, Component.EPOCH)
    )
    await assert_ttl(admin, ctx, TTL_POLICIES["conversation_context"])
    await assert_ttl(admin, hist, TTL_POLICIES["session_history"])
    await assert_ttl(admin, ep, TTL_POLICIES["session_history"])

    await redis_mgr.set_auth_state(call, {"ok": True})
    await assert_ttl(
        admin, keys.call_key(call, Component.AUTH), TTL_POLICIES["authentication_state"]
    )
    await redis_mgr.set_call_summary(call, {"turns": 3})
    await assert_ttl(admin, keys.call_key(call, Component.SUMMARY), TTL_POLICIES["call_summary"])
    await redis_mgr.set_tts("v", "pcm16KMono", "hello", b"\x00\x01")
    await assert_ttl(
        admin, keys.tts_cache_key("v", "pcm16KMono", "hello"), TTL_POLICIES["tts_cache"]
    )
    await redis_mgr.set_cached_profile(user, {"user_id": user})
    await assert_ttl(admin, keys.user_key(user), PROFILE_CACHE_SECONDS)

    assert await redis_mgr.claim_affinity(AffinityRecord(call, "10.0.0.1", 9000, "t", 1))
    await assert_ttl(admin, keys.call_key(call, Component.AFFINITY), AFFINITY_LEASE_SECONDS)
    await redis_mgr.add_worker_call(replica, call)
    await assert_ttl(admin, keys.worker_key(replica), AFFINITY_LEASE_SECONDS)


async def test_checkpoint_slides_the_context_ttl(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    conv = uid()
    await redis_mgr.checkpoint(
        conv, epoch=0, context={"a": 1}, new_turns=[{"role": "u", "text": "1"}]
    )
    ctx = redis_mgr.keys.conversation_key(conv, Component.CONTEXT)
    hist = redis_mgr.keys.conversation_key(conv, Component.HISTORY)
    await admin.expire(ctx, 5)
    await admin.expire(hist, 5)
    # No context change, no turns: still refreshes both TTLs (sliding).
    assert await redis_mgr.checkpoint(conv, epoch=0, context=None, new_turns=[]) == 1
    await assert_ttl(admin, ctx, TTL_POLICIES["conversation_context"])
    await assert_ttl(admin, hist, TTL_POLICIES["session_history"])


async def test_heartbeat_renews_the_worker_lease(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    replica = uid()
    await redis_mgr.add_worker_call(replica, "c1")
    await redis_mgr.add_worker_call(replica, "c2")
    await admin.expire(redis_mgr.keys.worker_key(replica), 3)
    await redis_mgr.heartbeat_worker(replica)
    await assert_ttl(admin, redis_mgr.keys.worker_key(replica), AFFINITY_LEASE_SECONDS)
    await redis_mgr.remove_worker_call(replica, "c1")
    assert await redis_mgr.worker_calls(replica) == {"c2"}


# --- checkpoint ----------------------------------------------------------------------------


class CountingConnection(aioredis.Connection):
    """Counts what crosses the socket: writes of packed commands and replies read."""

    sent: list[bytes] = []
    replies = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, bytes | str) else list(command)
        CountingConnection.sent.append(
            b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        )
        await super().send_packed_command(command, check_health)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.replies += 1
        return await super().read_response(*args, **kwargs)


async def _command_calls(admin: aioredis.Redis) -> dict[str, int]:
    stats = await admin.info("commandstats")
    return {name: int(v["calls"]) for name, v in stats.items()}


async def test_checkpoint_is_one_round_trip(
    redis_url: str, key_manager: RedisKeyManager, admin: aioredis.Redis
) -> None:
    pool = BlockingConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    redis_mgr = AsyncAzureRedisManager(aioredis.Redis.from_pool(pool), key_manager)
    conv = uid()
    try:
        epoch = await redis_mgr.claim_epoch(conv)
        # Warm up: the first call opens the connection and loads the script (NOSCRIPT, LOAD).
        await redis_mgr.checkpoint(conv, epoch=epoch, context={"a": 1}, new_turns=[])

        CountingConnection.sent.clear()
        CountingConnection.replies = 0
        before = await _command_calls(admin)
        turns = [{"role": "user", "text": f"t{i}"} for i in range(5)]
        length = await redis_mgr.checkpoint(
            conv, epoch=epoch, context={"a": 2, "b": 3}, new_turns=turns
        )
        after = await _command_calls(admin)

        # Client side: one write, one reply. Server side: exactly one more EVALSHA (the other
        # deltas are the commands the script ran inside that one call, plus our INFO).
        assert len(CountingConnection.sent) == 1 and CountingConnection.replies == 1
        assert CountingConnection.sent[0].upper().count(b"EVALSHA") == 1
        assert after["cmdstat_evalsha"] - before["cmdstat_evalsha"] == 1
    finally:
        await redis_mgr.close()
    assert length == 5
    async with AsyncAzureRedisManager.from_url(redis_url, key_manager) as reader:
        snap = await reader.load_conversation(conv)
    assert snap is not None
    assert snap.context == {"a": 2, "b": 3}
    assert [t["seq"] for t in snap.turns] == [1, 2, 3, 4, 5]
    assert snap.turns[4]["text"] == "t4"
    assert (snap.epoch, snap.schema_version) == (epoch, 1)


async def test_stale_epoch_is_refused_and_writes_nothing(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    conv = uid()
    old = await redis_mgr.claim_epoch(conv)
    await redis_mgr.checkpoint(
        conv, epoch=old, context={"v": "old"}, new_turns=[{"role": "u", "text": "1"}]
    )
    new = await redis_mgr.claim_epoch(conv)
    assert new == old + 1 == await redis_mgr.current_epoch(conv)

    with pytest.raises(StaleEpochError):
        await redis_mgr.checkpoint(
            conv, epoch=old, context={"v": "zombie"}, new_turns=[{"role": "u", "text": "z"}]
        )
    with pytest.raises(StaleEpochError):
        await redis_mgr.checkpoint(
            conv, epoch=0, context=None, new_turns=[{"role": "u", "text": "z"}]
        )
    snap = await redis_mgr.load_conversation(conv)
    assert snap is not None
    assert snap.context == {"v": "old"}
    assert [t["text"] for t in snap.turns] == ["1"]

    assert (
        await redis_mgr.checkpoint(
            conv, epoch=new, context=None, new_turns=[{"role": "u", "text": "2"}]
        )
        == 2
    )
    assert await redis_mgr.current_epoch(uid()) == 0


def _every_script_sha() -> list[str]:
    """The SHA1 of every Lua script the stores define (module constants named *_LUA)."""
    modules = (affinity, conversation_store, pool_store)
    scripts = [v for m in modules for k, v in vars(m).items() if k.endswith("_LUA")]
    return [hashlib.sha1(lua.encode()).hexdigest() for lua in scripts]


async def test_load_scripts_puts_every_script_in_a_redis_that_forgot_them(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    shas = _every_script_sha()
    assert len(shas) == 10
    await admin.script_flush()  # what a restart or a failover does
    assert not any(await admin.script_exists(*shas))
    await redis_mgr.load_scripts()
    assert all(await admin.script_exists(*shas))


async def test_load_of_unknown_conversation_is_none(redis_mgr: AsyncAzureRedisManager) -> None:
    assert await redis_mgr.load_conversation(uid()) is None
    assert await redis_mgr.migrate_legacy(uid()) is None


async def test_newer_schema_is_not_read_as_empty(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    conv = uid()
    key = redis_mgr.keys.conversation_key(conv, Component.CONTEXT)
    await admin.set(key, orjson.dumps({"schema_version": 99, "context": {}}))
    with pytest.raises(SerializationError):
        await redis_mgr.load_conversation(conv)
    await admin.set(key, b"{not json")
    with pytest.raises(SerializationError):
        await redis_mgr.load_conversation(conv)


# --- legacy migration ---------------------------------------------------------------------


def test_parse_legacy_list_and_agent_dict() -> None:
    ctx, turns = parse_legacy_session(
        b'{"name": "Ann"}',
        b'[{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]',
    )
    assert ctx == {"name": "Ann"}
    assert [(t["role"], t["text"], t["participant"]) for t in turns] == [
        ("system", "be nice", None),
        ("user", "hi", None),
    ]
    _, turns = parse_legacy_session(
        None,
        orjson.dumps(
            {
                "AuthAgent": [{"role": "user", "content": "my id"}],
                "Concierge": [{"role": "assistant", "content": [{"type": "text"}]}],
            }
        ),
    )
    assert [(t["participant"], t["text"]) for t in turns] == [
        ("AuthAgent", "my id"),
        ("Concierge", '[{"type":"text"}]'),
    ]
    with pytest.raises(SerializationError):
        parse_legacy_session(b"[1]", None)
    with pytest.raises(SerializationError):
        parse_legacy_session(None, b'"text"')


async def test_migrate_legacy_writes_current_format_and_deletes_legacy(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    sid = uid()
    legacy = RedisKeyManager.legacy_session_key(sid)
    await admin.hset(
        legacy,
        mapping={
            "corememory": orjson.dumps({"caller": "Ann"}),
            "chat_history": orjson.dumps([{"role": "user", "content": "hello"}]),
        },
    )
    snap = await redis_mgr.migrate_legacy(sid)
    assert snap is not None
    assert snap.context == {"caller": "Ann"}
    assert snap.turns[0]["text"] == "hello" and snap.turns[0]["seq"] == 1
    assert snap.schema_version == 1
    assert not await admin.exists(legacy)
    doc = orjson.loads(await admin.get(redis_mgr.keys.conversation_key(sid, Component.CONTEXT)))
    assert doc["schema_version"] == 1 and doc["migrated_from_schema"] == 0
    await assert_ttl(
        admin,
        redis_mgr.keys.conversation_key(sid, Component.HISTORY),
        TTL_POLICIES["session_history"],
    )


async def test_corrupt_legacy_raises(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    sid = uid()
    await admin.hset(RedisKeyManager.legacy_session_key(sid), "chat_history", "[oops")
    with pytest.raises(SerializationError):
        await redis_mgr.migrate_legacy(sid)


# --- affinity ------------------------------------------------------------------------------


def _record(call: str, epoch: int, host: str = "10.0.0.1") -> AffinityRecord:
    return AffinityRecord(call, host, 9000, f"tok{epoch}", epoch, node_id="n1", updated_at=1.5)


async def test_affinity_compare_and_set(redis_mgr: AsyncAzureRedisManager) -> None:
    call = uid()
    assert await redis_mgr.get_affinity(call) is None
    assert await redis_mgr.claim_affinity(_record(call, 2))
    assert not await redis_mgr.claim_affinity(_record(call, 1, host="zombie"))
    assert (await redis_mgr.get_affinity(call)) == _record(call, 2)
    assert await redis_mgr.claim_affinity(_record(call, 3, host="new"))
    got = await redis_mgr.get_affinity(call)
    assert got is not None and (got.host, got.epoch) == ("new", 3)

    assert not await redis_mgr.renew_affinity(call, 2)
    assert await redis_mgr.renew_affinity(call, 3)
    assert not await redis_mgr.release_affinity(call, 2)
    assert await redis_mgr.get_affinity(call) is not None
    assert await redis_mgr.release_affinity(call, 3)
    assert await redis_mgr.get_affinity(call) is None
    assert not await redis_mgr.renew_affinity(call, 3)


async def test_renewing_affinity_slides_the_call_url_binding(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis, key_manager: RedisKeyManager
) -> None:
    """The owner's heartbeat keeps the call's URL binding (auth) alive for as long as the call;
    a release leaves it to expire, so late callbacks of the ended call still authenticate."""
    call = uid()
    auth_key = key_manager.call_key(call, Component.AUTH)
    await redis_mgr.set_auth_state(call, {"nonce_sha256": "ab", "correlation_id": "c"})
    await admin.expire(auth_key, 5)
    assert await redis_mgr.claim_affinity(_record(call, 1))
    assert await redis_mgr.renew_affinity(call, 1)
    await assert_ttl(admin, auth_key, TTL_POLICIES["authentication_state"])
    await admin.expire(auth_key, 5)
    assert not await redis_mgr.renew_affinity(call, 0)  # not the owner: nothing slides
    assert 0 < await admin.ttl(auth_key) <= 5
    assert await redis_mgr.release_affinity(call, 1)
    assert await redis_mgr.get_auth_state(call) is not None


async def test_an_incoming_call_context_is_claimed_once(redis_mgr: AsyncAzureRedisManager) -> None:
    digest = uuid.uuid4().hex
    assert await redis_mgr.claim_answer(digest)
    assert not await redis_mgr.claim_answer(digest)
    assert await redis_mgr.claim_answer(uuid.uuid4().hex)


async def test_concurrent_claims_same_epoch_and_higher_wins(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    call = uid()
    results = await asyncio.gather(
        *(redis_mgr.claim_affinity(_record(call, e)) for e in range(1, 9))
    )
    got = await redis_mgr.get_affinity(call)
    assert got is not None and got.epoch == 8
    assert results[-1] is True


async def test_media_replica_keeps_lease(
    redis_mgr: AsyncAzureRedisManager, admin: aioredis.Redis
) -> None:
    call = uid()
    assert not await redis_mgr.set_media_replica(call, "gw-1")
    await redis_mgr.claim_affinity(_record(call, 1))
    await admin.expire(redis_mgr.keys.call_key(call, Component.AFFINITY), 17)
    assert await redis_mgr.set_media_replica(call, "gw-1")
    got = await redis_mgr.get_affinity(call)
    assert got is not None and got.media_replica == "gw-1" and got.epoch == 1
    assert 10 <= await admin.ttl(redis_mgr.keys.call_key(call, Component.AFFINITY)) <= 17
    assert await redis_mgr.set_media_replica(call, None)
    got = await redis_mgr.get_affinity(call)
    assert got is not None and got.media_replica is None


async def test_media_replica_of_the_newest_socket_wins(redis_mgr: AsyncAzureRedisManager) -> None:
    call = uid()
    await redis_mgr.claim_affinity(_record(call, 1))
    assert await redis_mgr.set_media_replica(call, "gw-b", since=1_700_000_002.25)
    assert not await redis_mgr.set_media_replica(
        call, "gw-a", since=1_700_000_001.5
    )  # older socket
    got = await redis_mgr.get_affinity(call)
    assert got is not None and got.media_replica == "gw-b"
    assert await redis_mgr.set_media_replica(call, "gw-a", since=1_700_000_003.0)
    got = await redis_mgr.get_affinity(call)
    assert got is not None and got.media_replica == "gw-a"


# --- caches, auth, summary, session ----------------------------------------------------------


async def test_tts_binary_round_trip(redis_mgr: AsyncAzureRedisManager) -> None:
    pcm = bytes(range(256)) * 64
    assert await redis_mgr.get_tts("en-US-Jenny", "pcm16KMono", "Hello") is None
    await redis_mgr.set_tts("en-US-Jenny", "pcm16KMono", "Hello", pcm)
    assert await redis_mgr.get_tts("en-US-Jenny", "pcm16KMono", "Hello") == pcm
    assert await redis_mgr.get_tts("en-US-Jenny", "pcm24KMono", "Hello") is None


async def test_profile_auth_summary_session(redis_mgr: AsyncAzureRedisManager) -> None:
    user, call = uid(), uid()
    await redis_mgr.set_cached_profile(user, {"user_id": user, "name": "Ann"})
    assert await redis_mgr.get_cached_profile(user) == {"user_id": user, "name": "Ann"}
    await redis_mgr.invalidate_profile(user)
    assert await redis_mgr.get_cached_profile(user) is None

    assert await redis_mgr.get_auth_state(call) is None
    await redis_mgr.set_auth_state(call, {"verified": True, "attempts": 1})
    assert await redis_mgr.get_auth_state(call) == {"verified": True, "attempts": 1}

    await redis_mgr.set_call_summary(call, {"turns": 4, "outcome": "resolved"})
    assert await redis_mgr.get_call_summary(call) == {"turns": 4, "outcome": "resolved"}

    assert await redis_mgr.load_call_session(call) is None
    await redis_mgr.store_call_session(call, {"state": "connected", "n": [1, 2]})
    assert await redis_mgr.load_call_session(call) == {"state": "connected", "n": [1, 2]}


# --- outbox --------------------------------------------------------------------------------


async def test_outbox_add_read_ack_and_redelivery(redis_mgr: AsyncAzureRedisManager) -> None:
    ids = [await redis_mgr.outbox_add("transcript", {"call_id": f"c{i}", "n": i}) for i in range(3)]
    assert await redis_mgr.outbox_length() == 3

    first = await redis_mgr.outbox_read("arch-1", count=10)
    assert [e.entry_id for e in first] == ids
    assert first[0].kind == "transcript" and first[0].document == {"call_id": "c0", "n": 0}

    # "Crash" without ack: the same consumer gets its pending entries again, first.
    again = await redis_mgr.outbox_read("arch-1", count=10)
    assert [e.entry_id for e in again] == ids
    # Another consumer does not steal them.
    assert await redis_mgr.outbox_read("arch-2") == []

    assert await redis_mgr.outbox_ack(ids[:2]) == 2
    assert [e.entry_id for e in await redis_mgr.outbox_read("arch-1")] == ids[2:]
    assert await redis_mgr.outbox_ack(ids[2:]) == 1
    assert await redis_mgr.outbox_read("arch-1") == []
    assert await redis_mgr.outbox_length() == 0
    assert await redis_mgr.outbox_ack([]) == 0


async def test_outbox_blocking_read_gets_new_entry(redis_mgr: AsyncAzureRedisManager) -> None:
    assert await redis_mgr.outbox_read("arch-1", block_ms=50) == []  # creates the group, times out

    async def add_later() -> str:
        await asyncio.sleep(0.1)
        return await redis_mgr.outbox_add("audit", {"id": "a1"})

    entries, entry_id = await asyncio.gather(
        redis_mgr.outbox_read("arch-1", block_ms=int(OP_TIMEOUT * 3000)), add_later()
    )
    assert [e.entry_id for e in entries] == [entry_id]


# --- bad input -----------------------------------------------------------------------------


async def test_bad_input_is_typed(redis_mgr: AsyncAzureRedisManager) -> None:
    for bad in ("", "a:b", "a b"):
        with pytest.raises(InvalidKeyError):
            await redis_mgr.store_call_session(bad, {})
        with pytest.raises(InvalidKeyError):
            await redis_mgr.load_conversation(bad)
        with pytest.raises(InvalidKeyError):
            await redis_mgr.claim_affinity(_record(bad, 1))
    with pytest.raises(SerializationError):
        await redis_mgr.store_call_session("c1", {"when": object()})
    with pytest.raises(SerializationError):
        await redis_mgr.checkpoint("c1", epoch=0, context={1: "non-str key"}, new_turns=[])
    with pytest.raises(SerializationError):
        await redis_mgr.outbox_add("transcript", {"x": {1, 2}})
    with pytest.raises(PayloadTooLargeError):
        await redis_mgr.set_call_summary("c1", {"blob": "x" * (1024 * 1024 + 1)})
    with pytest.raises(PayloadTooLargeError):
        await redis_mgr.checkpoint(
            "c1", epoch=0, context=None, new_turns=[{"role": "u", "text": "x" * 2_000_000}]
        )
    assert await redis_mgr.load_conversation("c1") is None  # nothing partial was written


async def test_limits_are_configurable(redis_url: str, key_manager: RedisKeyManager) -> None:
    limits = PayloadLimits(max_json_bytes=100, max_binary_bytes=10)
    async with AsyncAzureRedisManager.from_url(redis_url, key_manager, limits=limits) as small:
        with pytest.raises(PayloadTooLargeError):
            await small.set_auth_state("c1", {"x": "y" * 200})
        with pytest.raises(PayloadTooLargeError):
            await small.set_tts("v", "f", "t", b"\x00" * 11)


# --- Redis unreachable -----------------------------------------------------------------------


async def test_closed_port_raises_unavailable_quickly(key_manager: RedisKeyManager) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with AsyncAzureRedisManager.from_url(url, key_manager, op_timeout=OP_TIMEOUT) as dead:
        with pytest.raises(RedisUnavailableError):
            await asyncio.wait_for(dead.ping(), OP_TIMEOUT * 10)
        with pytest.raises(RedisUnavailableError):
            await asyncio.wait_for(dead.load_conversation("c1"), OP_TIMEOUT * 10)
        stats = dead.latency.stats()
        assert stats["ping"].errors == 1 and stats["load_conversation"].errors == 1


async def test_silent_server_raises_timeout(key_manager: RedisKeyManager) -> None:
    """A TCP peer that accepts but never answers: the op timeout bounds the whole call."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"redis://127.0.0.1:{port}/0"
        async with AsyncAzureRedisManager.from_url(url, key_manager, op_timeout=0.3) as mute:
            with pytest.raises(RedisTimeoutError):
                await asyncio.wait_for(mute.get_auth_state("c1"), 5)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_server_stop_then_recovery(
    redis_server: LocalRedisServer, redis_mgr: AsyncAzureRedisManager
) -> None:
    conv = uid()
    await redis_mgr.checkpoint(conv, epoch=0, context={"a": 1}, new_turns=[])
    redis_server.stop()
    try:
        with pytest.raises(RedisUnavailableError):
            await asyncio.wait_for(
                redis_mgr.checkpoint(conv, epoch=0, context={"a": 2}, new_turns=[]), OP_TIMEOUT * 10
            )
        with pytest.raises(RedisUnavailableError):
            await asyncio.wait_for(redis_mgr.get_auth_state("c1"), OP_TIMEOUT * 10)
    finally:
        redis_server.start()
    # Same manager, same pool: reconnects, reloads the script (the restart flushed it).
    assert await redis_mgr.ping()
    await redis_mgr.checkpoint(
        conv, epoch=0, context={"a": 3}, new_turns=[{"role": "u", "text": "x"}]
    )
    snap = await redis_mgr.load_conversation(conv)
    assert snap is not None and snap.context == {"a": 3}


# --- Azure configuration (no network) ----------------------------------------------------------


def fake_jwt(oid: str, n: int) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'oid': oid, 'n': n})}.sig"


class FakeTokenCredential:
    """Stands in for Azure AD: hands out tokens with a chosen lifetime and counts requests."""

    def __init__(self, clock: Any, lifetime_s: int = 3600, oids: list[str] | None = None) -> None:
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.oids = oids or ["oid-1"]
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.append(scopes)
        oid = self.oids[min(len(self.scopes), len(self.oids)) - 1]
        return AccessToken(fake_jwt(oid, len(self.scopes)), int(self.clock() + self.lifetime_s))

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> FakeTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_entra_provider_caches_and_refreshes_before_expiry() -> None:
    clock = Clock()
    cred = FakeTokenCredential(clock, lifetime_s=3600)
    provider = EntraIdCredentialProvider(cred, clock=clock, refresh_margin_s=300)

    user, token = await provider.get_credentials_async()
    assert user == "oid-1" and cred.scopes == [(REDIS_ENTRA_SCOPE,)]
    assert await provider.get_credentials_async() == (user, token)  # cached
    clock.now += 3600 - 301
    await provider.get_credentials_async()
    assert len(cred.scopes) == 1 and provider.generation == 1
    clock.now += 2  # inside the 300 s margin, still before expiry
    assert provider.refresh_due()
    _, fresh = await provider.get_credentials_async()
    assert len(cred.scopes) == 2 and provider.generation == 2 and fresh != token
    assert provider.token is not None and provider.token.expires_on > clock.now + 3000

    # Concurrent connections share one fetch.
    clock.now += 3600
    await asyncio.gather(*(provider.get_credentials_async() for _ in range(10)))
    assert len(cred.scopes) == 3


async def test_entra_token_rotation_reauths_pooled_connections(
    redis_url: str, admin: aioredis.Redis, key_manager: RedisKeyManager
) -> None:
    """Against the real server: two ACL users stand in for two token identities. After the
    refresh, the pooled connection is re-AUTHed in place (same client, same connection)."""
    clock = Clock()
    first, second = f"u{uid()}", f"u{uid()}"
    cred = FakeTokenCredential(clock, lifetime_s=600, oids=[first, second])
    for n, oid in enumerate((first, second), start=1):  # token n is issued to identity n
        passwords = ["+" + fake_jwt(oid, n)]
        await admin.acl_setuser(
            oid, enabled=True, passwords=passwords, keys=["*"], commands=["+@all"]
        )
    provider = EntraIdCredentialProvider(cred, clock=clock)
    client = aioredis.Redis.from_url(redis_url, credential_provider=provider)
    async with AsyncAzureRedisManager(client, key_manager, token_provider=provider) as redis_mgr:
        try:
            assert await redis_mgr.ping()
            conn_ids = {c["id"] for c in await admin.client_list() if c["user"] == first}
            assert len(conn_ids) == 1
            clock.now += 600 - 60  # within the margin: the next op refreshes
            assert await redis_mgr.ping()
            users = {c["id"]: c["user"] for c in await admin.client_list()}
            assert users[next(iter(conn_ids))] == second
            assert len(cred.scopes) == 2
        finally:
            for oid in (first, second):
                await admin.acl_deluser(oid)


async def test_for_azure_access_key_uses_tls_and_password() -> None:
    keys = RedisKeyManager("rtvoice", "prod")
    redis_mgr = AsyncAzureRedisManager.for_azure(
        "example.redis.cache.windows.net", keys, access_key="k3y"
    )
    pool = redis_mgr._client.connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["password"] == "k3y"
    assert pool.connection_kwargs["port"] == 6380
    assert "credential_provider" not in pool.connection_kwargs
    await redis_mgr.close()


async def test_for_azure_entra_uses_provider_and_no_password() -> None:
    keys = RedisKeyManager("rtvoice", "prod")
    cred = FakeTokenCredential(time.time)
    redis_mgr = AsyncAzureRedisManager.for_azure(
        "example.redis.cache.windows.net", keys, credential=cred
    )
    kwargs = redis_mgr._client.connection_pool.connection_kwargs
    assert isinstance(kwargs["credential_provider"], EntraIdCredentialProvider)
    assert kwargs.get("password") is None
    assert cred.scopes == []  # no token fetched, no I/O, until the first connection
    await redis_mgr.close()


async def test_for_azure_cluster_needs_hash_tags() -> None:
    with pytest.raises(ConfigError):
        AsyncAzureRedisManager.for_azure("h", RedisKeyManager(), access_key="k", cluster=True)
    with pytest.raises(ConfigError):
        AsyncAzureRedisManager.for_azure("h", RedisKeyManager())
    redis_mgr = AsyncAzureRedisManager.for_azure(
        "h", RedisKeyManager(hash_tags=True), access_key="k", cluster=True
    )
    assert isinstance(redis_mgr._client, RedisCluster)
    await redis_mgr.close()


async def test_from_settings(redis_url: str) -> None:
    settings = load_settings({"RTVOICE_REDIS_URL": redis_url, "RTVOICE_ENVIRONMENT": "t1"})
    async with AsyncAzureRedisManager.from_settings(settings.storage) as redis_mgr:
        assert redis_mgr.keys.environment == "t1"
        assert await redis_mgr.ping()
    with pytest.raises(ConfigError):
        AsyncAzureRedisManager.from_settings(load_settings({}).storage)
    azure = load_settings(
        {"RTVOICE_REDIS_HOST": "h.redis.cache.windows.net", "RTVOICE_REDIS_ACCESS_KEY": "k"}
    )
    redis_mgr = AsyncAzureRedisManager.from_settings(azure.storage)
    assert redis_mgr._client.connection_pool.connection_class is SSLConnection
    await redis_mgr.close()


async def test_latency_recorded_per_operation(redis_mgr: AsyncAzureRedisManager) -> None:
    await redis_mgr.ping()
    await redis_mgr.get_auth_state("c1")
    await redis_mgr.get_auth_state("c2")
    stats = redis_mgr.latency.stats()
    assert stats["get_auth_state"].count == 2 and stats["ping"].count == 1
    assert stats["get_auth_state"].p99_ms >= stats["get_auth_state"].p50_ms > 0
