"""CallBindings against a real redis-server: a URL nonce opens the one call it was bound to."""

from __future__ import annotations

import uuid

import pytest

from gateway.auth import AuthError
from gateway.call_binding import BindingUnavailable, CallBindings
from simulator.devstack.local_redis import free_port
from storage.errors import StorageError
from storage.keys import RedisKeyManager
from storage.redis_manager import AsyncAzureRedisManager


async def test_every_replica_checks_the_binding_of_the_answering_one(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    answering, other = CallBindings(redis_mgr), CallBindings(redis_mgr)
    call_a, call_c = str(uuid.uuid4()), str(uuid.uuid4())
    await answering.bind(call_a, "nonce-a", "corr-a")
    await answering.bind(call_c, "nonce-c", "corr-c")

    CallBindings.check(await other.lookup(call_a), "nonce-a", "corr-a")
    CallBindings.check(await other.lookup(call_a), "nonce-a")  # no correlation header
    for call_id, nonce, correlation, reason in [
        (call_c, "nonce-a", None, "call_mismatch"),  # A's URL, C's call
        (call_a, "nonce-a", "corr-c", "correlation_mismatch"),
        (str(uuid.uuid4()), "nonce-a", None, "unknown_call"),
    ]:
        with pytest.raises(AuthError) as info:
            CallBindings.check(await other.lookup(call_id), nonce, correlation)
        assert info.value.reason == reason


async def test_a_replica_that_saw_the_call_goes_on_without_redis(
    key_manager: RedisKeyManager,
) -> None:
    down = AsyncAzureRedisManager.from_url(
        f"redis://127.0.0.1:{free_port()}/0", key_manager, op_timeout=0.3
    )
    bindings = CallBindings(down)
    with pytest.raises(StorageError):
        await bindings.bind("call-1", "nonce-1", "corr-1")
    CallBindings.check(await bindings.lookup("call-1"), "nonce-1")  # the local copy
    with pytest.raises(BindingUnavailable):
        await bindings.lookup("call-2")
    await down.close()


async def test_wait_for_gives_up_after_the_timeout(redis_mgr: AsyncAzureRedisManager) -> None:
    assert await CallBindings(redis_mgr).wait_for(str(uuid.uuid4()), 0.2) is None
