"""Admission (gateway/admission.py): free call slots plus spare actors, minus answers in flight;
and the gateway past capacity (rejects busy) or unable to reach an answered call's actor (hangs
up), end to end with LocalStack and the ACS stand-in."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import ray
from starlette import status

from actors.activation import get_call_actor
from gateway.admission import Admission
from simulator import CallerScript, ScriptLine
from simulator.devstack.local_stack import LocalStack
from storage.errors import RedisUnavailableError
from storage.settings import Settings
from tests.helpers import eventually


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Slots:
    """A fake free-slot source (what ``ray.available_resources`` would say), counting reads."""

    def __init__(self, free: float) -> None:
        self.free = free
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.free


def spares_of(count: int) -> Any:
    async def spares() -> int:
        return count

    return spares


async def test_admits_while_slots_are_free_and_refuses_at_zero() -> None:
    assert await Admission(free_slots=Slots(1)).admit()
    admission = Admission(free_slots=Slots(0))
    assert not await admission.admit()
    assert not await admission.has_capacity()


async def test_each_admitted_call_holds_a_unit_until_released() -> None:
    admission = Admission(free_slots=Slots(2))
    assert await admission.admit()
    assert await admission.admit()
    assert not await admission.admit()  # both slots promised to calls still starting
    assert admission.in_flight == 2
    admission.release()
    assert await admission.has_capacity()
    assert await admission.admit()


async def test_spare_actors_count_as_capacity() -> None:
    admission = Admission(free_slots=Slots(0), spares=spares_of(2))
    assert await admission.capacity() == 2
    assert await admission.admit()
    assert await admission.admit()
    assert not await admission.admit()


async def test_ray_is_asked_at_most_once_per_cache_period() -> None:
    slots, clock = Slots(5), Clock()
    admission = Admission(free_slots=slots, cache_s=0.5, clock=clock)
    for _ in range(3):
        await admission.has_capacity()
    assert slots.reads == 1
    slots.free = 0
    assert await admission.has_capacity()  # the cached reading still stands
    clock.now += 0.5
    assert not await admission.has_capacity()
    assert slots.reads == 2


async def test_concurrent_answers_never_take_more_than_there_is() -> None:
    admission = Admission(free_slots=Slots(3), spares=spares_of(1))
    results = await asyncio.gather(*(admission.admit() for _ in range(10)))
    assert sum(results) == 4


async def test_unreadable_sources_promise_nothing() -> None:
    def ray_down() -> float:
        raise ConnectionError("GCS unreachable")

    async def redis_down() -> int:
        raise RedisUnavailableError("down")

    # Each source that cannot be read counts as none; the other still counts.
    assert await Admission(free_slots=ray_down, spares=spares_of(3)).capacity() == 3
    assert await Admission(free_slots=Slots(2), spares=redis_down).capacity() == 2
    assert not await Admission(free_slots=ray_down, spares=redis_down).admit()


# --- end to end: the gateway with the stand-in ------------------------------------------------

SHORT_CALL = CallerScript(lines=[ScriptLine(say="Hello?")], lead_in_s=0.1, tail_s=0.2)
REJECTED = "rtvoice_gateway_calls_rejected_total"
DROPPED = "rtvoice_gateway_calls_dropped_total"
ANSWERED = "rtvoice_gateway_calls_answered_total"


@pytest.fixture
def stack_settings(stack_base: Settings) -> Settings:
    # No warm pool: these calls must not depend on one.
    return stack_base.replace(pool_min_spares=0, pool_max_spares=0)


@pytest.mark.slow  # local Ray
async def test_past_capacity_a_call_is_rejected_busy_and_never_answered(
    stack_settings: Settings,
) -> None:
    async with LocalStack(base=stack_settings) as stack:
        assert stack.acs is not None
        replica = stack.running[0]
        # The session shares one local Ray with 32 free slots: this replica sees none.
        replica.gateway.admission = Admission(free_slots=Slots(0))
        report = await asyncio.wait_for(stack.acs.place_call(stack.gateway_url, SHORT_CALL), 20)
        async with httpx.AsyncClient(trust_env=False) as http:
            ready = await http.get(f"{stack.gateway_url}/readyz")
        registry = replica.gateway.metrics.registry

    assert report.rejected and report.reject_reason == "busy"
    assert not report.answered and report.operations == ["reject"]
    assert report.unexpected == []  # refused by the app, not left ringing until ACS gives up
    assert registry.get_sample_value(REJECTED, {"reason": "capacity"}) == 1
    assert (registry.get_sample_value(ANSWERED) or 0) == 0
    assert ready.status_code == status.HTTP_503_SERVICE_UNAVAILABLE
    assert ready.json()["status"] == "at_capacity"
    assert ready.json()["checks"]["capacity"] is False


@pytest.mark.slow  # local Ray, a real call actor
async def test_an_answered_call_whose_actor_is_not_up_in_time_is_hung_up(
    stack_settings: Settings,
) -> None:
    settings = stack_settings.replace(activation_timeout_s=0.001)  # no actor starts that fast
    script = SHORT_CALL.model_copy(update={"lines": [ScriptLine(say="Hello?", pause_s=5.0)]})
    report = None
    try:
        async with LocalStack(base=settings) as stack:
            assert stack.acs is not None
            replica = stack.running[0]
            report = await asyncio.wait_for(stack.acs.place_call(stack.gateway_url, script), 30)
            registry = replica.gateway.metrics.registry
            timeouts = {"reason": "activation_timeout"}
            await eventually(lambda: registry.get_sample_value(DROPPED, timeouts))
    finally:
        if report is not None:  # the actor a callback or socket may have started meanwhile
            handle = get_call_actor(report.call_connection_id, settings.actors.ray_namespace)
            if handle is not None:
                ray.kill(handle, no_restart=True)

    assert report.answered and report.hung_up_by == "app"
    assert report.operations[:2] == ["answer", "terminate"]  # the app hung up, not the caller
    assert registry.get_sample_value(ANSWERED) == 1
