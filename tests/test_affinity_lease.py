"""AffinityLease, a call actor's affinity lease, as a plain object on a real Redis (no Ray)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.affinity_lease import AffinityLease, Renewal
from storage.affinity import AffinityRecord, Endpoint
from storage.errors import StaleEpochError, StorageError
from tests.helpers import eventually

CALL = "call-lease"


def endpoint(epoch: int) -> Endpoint:
    return Endpoint("127.0.0.1", 4000 + epoch, f"token-{epoch}", epoch)


async def test_claim_renew_reclaim_after_a_lapse_and_release(redis_mgr: Any) -> None:
    lease = AffinityLease(redis_mgr, CALL, 2, lease_s=30)
    await lease.claim(endpoint(2), "node-a")
    record = await redis_mgr.get_affinity(CALL)
    assert (record.endpoint, record.node_id) == (endpoint(2), "node-a")
    assert await lease.renew() is Renewal.HELD
    await redis_mgr.release_affinity(CALL, 2)  # the key is gone: a Redis restart, say
    assert await lease.renew() is Renewal.RECLAIMED
    assert (await redis_mgr.get_affinity(CALL)).endpoint == endpoint(2)
    assert await lease.release()
    assert await redis_mgr.get_affinity(CALL) is None


async def test_a_newer_epoch_fences_the_lease(redis_mgr: Any) -> None:
    old = AffinityLease(redis_mgr, CALL, 1, lease_s=30)
    await old.claim(endpoint(1), "")
    await redis_mgr.claim_affinity(AffinityRecord.of(CALL, endpoint(3), "", 0.0))
    assert await old.renew() is Renewal.FENCED
    assert not await old.release()  # only the owner's epoch releases
    assert (await redis_mgr.get_affinity(CALL)).epoch == 3
    with pytest.raises(StaleEpochError):
        await AffinityLease(redis_mgr, CALL, 2, lease_s=30).claim(endpoint(2), "")


async def test_heartbeat_rewrites_after_a_lapse_and_stops_when_fenced(redis_mgr: Any) -> None:
    lease = AffinityLease(redis_mgr, CALL, 1, lease_s=30)
    await lease.claim(endpoint(1), "")
    events: list[str] = []

    async def reclaimed() -> None:
        events.append("reclaimed")

    def failed(step: str, exc: StorageError) -> None:
        events.append(step)

    beat = asyncio.create_task(
        lease.heartbeat(
            0.05,
            on_reclaimed=reclaimed,
            on_fenced=lambda: events.append("fenced"),
            on_failure=failed,
        )
    )
    await asyncio.sleep(0.2)
    assert not events  # held: nothing to say
    await redis_mgr.release_affinity(CALL, 1)
    await eventually(lambda: events == ["reclaimed"])
    await redis_mgr.claim_affinity(AffinityRecord.of(CALL, endpoint(2), "", 0.0))
    await asyncio.wait_for(beat, 5.0)  # the loop ends once fenced
    assert events == ["reclaimed", "fenced"]
