"""Chaos: one call's actor made slow (its process stopped with SIGSTOP, as a long GC pause or a
starved CPU would, then resumed) while other calls run through the same gateway. The other
calls' frames keep reaching their actors while it is stopped; the slow call's backlog at the
gateway stays bounded, what is dropped is counted, and none of its caller's lines is lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
import ray

from actors.activation import get_call_actor
from simulator import Scenario, run_scenario
from simulator.devstack.local_stack import LocalStack
from storage.settings import Settings
from tests.chaos import LIVE_TIMEOUT_S, caller, live_call_id, user_turns_heard
from tests.helpers import archived_transcript, eventually, spares_ready

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

# The slow actor's pause: past what the kernel buffers and the gateway's backlog limit hold
# for it (~4 s in the kernel, 128 KiB queued at the gateway: ~6 s of 16 kHz audio).
STOPPED_S = 10.0
FLOWING_FRAMES = 100  # 2 s of audio each other call's actor takes in while the slow one is stopped


async def frames_in(handle: Any) -> int:
    return int((await handle.info.remote())["metrics"]["frames_in"])


async def test_a_slow_actor_delays_no_other_call_and_its_backlog_is_bounded(
    stack_base: Settings,
) -> None:
    base = stack_base.replace(pool_min_spares=3)  # a spare for each of the three calls
    namespace = base.actors.ray_namespace
    lines = ["the first thing I say", "the second thing I say", "the third thing I say"]
    scripts = [caller(f"+1425555090{i}", 5 + 4 * i, lines, pause_s=STOPPED_S / 2) for i in range(3)]
    call_ids: list[str] = []
    try:
        async with LocalStack(base=base) as stack:
            assert stack.acs is not None and stack.settings is not None
            await spares_ready(stack.pool, len(scripts))  # no cold start past the timeout
            placed = asyncio.create_task(
                run_scenario(
                    stack.acs, stack.gateway_url, Scenario(calls=len(scripts), callers=scripts)
                )
            )
            call_ids.extend([await live_call_id(stack.acs, s) for s in scripts])
            for call_id in call_ids:
                await eventually(
                    lambda c=call_id: user_turns_heard(c, namespace, 1), timeout=LIVE_TIMEOUT_S
                )
            slow, others = call_ids[0], call_ids[1:]
            # Handles first, from the pool's owner records (as the gateway finds them): asking
            # every spare (get_call_actor) waits on the stopped one too.
            handles = [await stack.pool.handle(c) for c in call_ids]
            assert all(h is not None for h in handles)
            pid = (await handles[0].info.remote())["pid"]
            os.kill(pid, signal.SIGSTOP)
            stopped = asyncio.get_running_loop().time()
            try:
                before = [await frames_in(h) for h in handles[1:]]

                async def others_flowing() -> bool:
                    now = [await frames_in(h) for h in handles[1:]]
                    return all(n - b >= FLOWING_FRAMES for n, b in zip(now, before, strict=True))

                await eventually(others_flowing, timeout=STOPPED_S)  # not held behind it
                left = stopped + STOPPED_S - asyncio.get_running_loop().time()
                await asyncio.sleep(max(0.0, left))
            finally:
                os.kill(pid, signal.SIGCONT)

            reports = (await placed).calls
            for report in reports:
                assert report.answered and report.ok, report.unexpected
            registry = stack.running[0].gateway.metrics.registry
            dropped = registry.get_sample_value(
                "rtvoice_gateway_frames_dropped_total", {"stream": "media"}
            )
            received = {}
            for call_id, report in zip(call_ids, reports, strict=True):
                doc = await archived_transcript(stack.settings, call_id, timeout=LIVE_TIMEOUT_S)
                # No caller line lost, the slow call's included: transcription is never dropped.
                assert [t["text"] for t in doc["turns"] if t["role"] == "user"] == lines
                received[call_id] = (doc["metrics"]["frames_in"], report.frames_sent)
            assert all(got == sent for got, sent in map(received.get, others)), (received, dropped)
            # The slow call's media past the bound was dropped at the gateway and counted:
            # every frame sent either reached its actor or is in the count.
            got, sent = received[slow]
            assert dropped and got + dropped == sent, (got, dropped, sent)
    finally:
        for call_id in call_ids:  # detached actors a failed run may leave behind
            handle = get_call_actor(call_id, namespace)
            if handle is not None:
                ray.kill(handle, no_restart=True)
