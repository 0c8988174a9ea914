"""gateway/drain.py, a replica's drain, against a real redis-server: the replica's admission
refuses new calls at once (rejected busy, /readyz draining), and the drain waits, with progress,
for its live calls to end. A node's drain runs in tests/test_cluster_autoscaling.py."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from gateway.admission import Admission
from gateway.drain import Progress, drain_replica, wait_drained
from simulator.devstack.local_stack import LocalStack
from simulator.script import CallerScript, ScriptLine
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import Settings


async def test_a_draining_replica_admits_nothing_and_waits_for_its_calls(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    replica = f"gw-{uuid.uuid4().hex[:6]}"
    admission = Admission(
        free_slots=lambda: 10.0, draining=lambda: redis_mgr.is_draining(replica), cache_s=0
    )
    assert await admission.admit()
    admission.release()
    call_id = f"call-{uuid.uuid4().hex[:8]}"
    await redis_mgr.add_worker_call(replica, call_id)  # its media is on this replica

    seen: list[Progress] = []
    drain = asyncio.create_task(
        drain_replica(redis_mgr, replica, timeout_s=30, interval_s=0.05, on_progress=seen.append)
    )
    await asyncio.sleep(0.2)
    assert not drain.done() and seen and seen[-1].live_calls == 1
    assert not await admission.admit() and admission.draining  # refused: the caller hears busy

    await redis_mgr.remove_worker_call(replica, call_id)  # the call ended
    assert await drain
    assert seen[-1].live_calls == 0 and "drained" in seen[-1].line()

    await redis_mgr.clear_draining(replica)  # `rtvoice drain --undo`
    assert await admission.admit()


async def test_the_wait_gives_up_at_the_timeout() -> None:
    async def always_one() -> int:
        return 1

    lines: list[str] = []
    done = await wait_drained(
        "node n1",
        always_one,
        timeout_s=0.1,
        interval_s=0.02,
        on_progress=lambda p: lines.append(p.line()),
    )
    assert not done and lines[-1].startswith("node n1: 1 live calls")


@pytest.mark.slow  # local Ray
async def test_a_drained_replica_rejects_calls_busy_and_says_so_in_readyz(
    stack_base: Settings,
) -> None:
    base = stack_base.replace(pool_min_spares=0, pool_max_spares=0)
    async with LocalStack(base=base) as stack:
        assert stack.acs is not None and stack.redis is not None
        await stack.redis.set_draining("gw-0", ttl_s=60)  # `rtvoice drain --replica gw-0`
        script = CallerScript(lines=[ScriptLine(say="Hello?")], lead_in_s=0.1, tail_s=0.2)
        report = await asyncio.wait_for(stack.acs.place_call(stack.gateway_url, script), 20)
        async with httpx.AsyncClient(trust_env=False) as http:
            ready = await http.get(f"{stack.gateway_url}/readyz")
    assert report.rejected and report.reject_reason == "busy" and not report.answered
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
