"""Chaos: a gateway replica's process SIGKILLed mid-call. Two real ``rtvoice serve`` processes
behind a TCP load balancer; the one holding the call's sockets is killed. The stand-in (as ACS
does) connects its lost sockets again through the balancer, reaching the other replica, which
routes them to the same call actor: no caller line is lost, the actor never restarts.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.activation import get_call_actor
from simulator import CallFaults, Scenario, run_scenario
from simulator.service import AcsStandIn
from storage.settings import Settings
from tests.chaos import (
    LIVE_TIMEOUT_S,
    GatewayProcess,
    TcpProxy,
    caller,
    live_call_id,
    user_turns_heard,
)
from tests.helpers import archived_transcript, eventually, serve_env

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

LINES = [
    "this is heard by the first replica",
    "this is said after it was killed",
    "and this is the last line",
]


def replica_env(
    acs: AcsStandIn, event_grid_secret: str, ray_cluster: dict[str, Any], redis_url: str, tmp: Path
) -> dict[str, str]:
    """What both replicas share: the deployment's settings, as ``rtvoice serve`` reads them."""
    return serve_env(acs, event_grid_secret, redis_url, tmp) | {
        "RTVOICE_ENVIRONMENT": f"kill{uuid.uuid4().hex[:8]}",
        "RTVOICE_RAY_ADDRESS": str(ray_cluster["address"]),
        "RTVOICE_RAY_NAMESPACE": str(ray_cluster["namespace"]),
        "RTVOICE_POOL_MIN_SPARES": "1",
        "RTVOICE_POOL_MAX_SPARES": "1",
    }


async def test_a_gateway_killed_mid_call_the_call_goes_on_through_another_replica(
    acs: tuple[AcsStandIn, str], ray_cluster: dict[str, Any], redis_url: str, tmp_path: Path
) -> None:
    stand_in, event_grid_secret = acs
    env = replica_env(stand_in, event_grid_secret, ray_cluster, redis_url, tmp_path)
    namespace = str(ray_cluster["namespace"])
    script = caller("+14255550800", 7, LINES, pause_s=1.0).model_copy(
        update={"faults": CallFaults(reconnect_lost_sockets=True)}
    )
    call_id = ""
    async with TcpProxy([]) as balancer:
        env["RTVOICE_PUBLIC_URL"] = balancer.url  # what ACS is given: the balancer
        first, second = (
            GatewayProcess(env | {"RTVOICE_REPLICA_ID": name}) for name in ("gw-a", "gw-b")
        )
        try:
            await asyncio.gather(
                first.start(tmp_path / "gw-a.log"), second.start(tmp_path / "gw-b.log")
            )
            await first.warm()
            # The first replica takes every connection while it lives.
            balancer.upstreams = [("127.0.0.1", first.port), ("127.0.0.1", second.port)]
            placed = asyncio.create_task(
                run_scenario(stand_in, balancer.url, Scenario(callers=[script]))
            )
            call_id = await live_call_id(stand_in, script)
            await eventually(
                lambda: user_turns_heard(call_id, namespace, 1), timeout=LIVE_TIMEOUT_S
            )
            first.kill()  # mid-call, in the pause after the first line

            [report] = (await placed).calls
            assert report.answered and report.ok, report.unexpected
            assert report.media_connects == 2  # the stand-in connected again, to the other one
            assert report.heard_s > 0
            settings = Settings(redis_url=redis_url, archive_path=env["RTVOICE_ARCHIVE_PATH"])
            doc = await archived_transcript(settings, call_id, timeout=LIVE_TIMEOUT_S)
            assert [t["text"] for t in doc["turns"] if t["role"] == "user"] == LINES
            assert [t["role"] for t in doc["turns"]] == ["user", "assistant"] * len(LINES)
            # One actor all along: never restarted, its first epoch never fenced.
            assert doc["metadata"]["restarts"] == 0 and doc["metadata"]["epoch"] == 1
        finally:
            first.kill()
            second.stop()
            if call_id and (handle := get_call_actor(call_id, namespace)) is not None:
                ray.kill(handle, no_restart=True)
