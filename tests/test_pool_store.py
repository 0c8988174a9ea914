"""storage/pool_store.py: where a queued spare listens travels with its claim and goes when the
spare leaves the queue (real redis-server); stored addresses are parsed, never trusted."""

from __future__ import annotations

import uuid

import pytest

from storage.affinity import Endpoint
from storage.pool_store import SpareClaim, decode_address, encode_address
from storage.redis_manager import AsyncAzureRedisManager

A = Endpoint("10.0.0.4", 41001, "token-a", 0)
B = Endpoint("10.0.0.5", 41002, "token-b", 0)


async def test_a_claim_carries_the_spare_address_until_it_is_bound(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    await redis_mgr.add_spare(pool, "spare-a", A)
    await redis_mgr.add_spare(pool, "spare-b", B)
    await redis_mgr.add_spare(pool, "spare-c")  # started where its address is not known
    assert await redis_mgr.claim_spare(pool, "call-1") == SpareClaim("spare-a", A)
    assert await redis_mgr.claim_spare(pool, "call-1") == SpareClaim("spare-a", A)  # a retry
    assert await redis_mgr.claim_spare(pool, "call-2") == SpareClaim("spare-b", B)

    await redis_mgr.settle_spare_claim(pool, "call-1", "spare-a")  # bound: its address goes
    await redis_mgr.settle_spare_claim(pool, "call-2", "call-2")  # not bound: back, address kept
    assert await redis_mgr.claim_spare(pool, "call-3") == SpareClaim("spare-b", B)
    assert await redis_mgr.claim_spare(pool, "call-4") == SpareClaim("spare-c", None)

    await redis_mgr.add_spare(pool, "spare-a")  # the same name again, no address now
    assert await redis_mgr.claim_spare(pool, "call-5") == SpareClaim("spare-a", None)


async def test_a_spare_taken_out_of_the_queue_takes_its_address_with_it(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    for name, address in (("spare-a", A), ("spare-b", B), ("spare-c", A)):
        await redis_mgr.add_spare(pool, name, address)
    assert await redis_mgr.pop_spare(pool) == "spare-a"
    assert await redis_mgr.pop_newest_spare(pool) == "spare-c"
    assert await redis_mgr.remove_spare(pool, "spare-b")
    for name in ("spare-a", "spare-b", "spare-c"):  # queued again without one: none is left
        await redis_mgr.add_spare(pool, name)
    claims = [await redis_mgr.claim_spare(pool, f"call-{i}") for i in range(3)]
    assert [c.address for c in claims if c is not None] == [None, None, None]


def test_an_address_round_trips() -> None:
    assert decode_address(encode_address(A)) == A


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b"[]", b'{"host": "h", "port": "1", "token": "t"}', b'{"host": 1}'],
)
def test_a_stored_address_that_is_not_one_is_none(raw: bytes | None) -> None:
    assert decode_address(raw) is None
