"""Callback delivery: signed CloudEvent arrays, and the duplicate / reorder / delay knobs."""

from __future__ import annotations

from simulator.callbacks import delivery_order
from simulator.jwt_issuer import TokenFault
from simulator.script import CallbackKnobs, CallerScript, CallFaults, ScriptLine
from simulator.service import AcsStandIn
from tests.fake_gateway import FakeGateway

SHORT = CallerScript(lines=[ScriptLine(pause_s=0.1)], lead_in_s=0.0, tail_s=0.0)


def _with(faults: CallFaults) -> CallerScript:
    return SHORT.model_copy(update={"faults": faults})


def test_delivery_order_swaps_neighbours_and_duplicates() -> None:
    events = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    assert delivery_order(events, CallbackKnobs()) == events
    reordered = delivery_order(events, CallbackKnobs(reorder=True))
    assert [e["id"] for e in reordered] == ["b", "a", "c"]
    doubled = delivery_order(events, CallbackKnobs(duplicate=True, reorder=True))
    assert [e["id"] for e in doubled] == ["b", "b", "a", "a", "c", "c"]


async def test_callbacks_are_cloudevent_arrays_that_verify_against_the_jwks() -> None:
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        report = await acs.place_call(gateway.url, SHORT)
    assert gateway.seen.callback_rejections == 0
    assert report.events == gateway.seen.callback_types()
    assert report.events[:2] == ["CallConnected", "ParticipantsUpdated"]
    assert report.time_to_connected_s is not None
    for event in gateway.seen.callbacks:
        assert event["specversion"] == "1.0"
        assert event["source"] == f"calling/callConnections/{report.call_connection_id}"
        data = event["data"]
        assert data["callConnectionId"] == report.call_connection_id
        assert {"serverCallId", "correlationId", "resultInformation"} <= set(data)
    connected = gateway.seen.callbacks[0]
    assert connected["data"]["operationContext"] == "fake-answer"
    participants = gateway.seen.callbacks[1]["data"]["participants"]
    assert participants[0]["identifier"]["rawId"] == "4:+14255550100"


async def test_tampered_callback_token_is_refused_by_a_verifying_gateway() -> None:
    script = _with(CallFaults(callback_token=TokenFault.TAMPERED))
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        report = await acs.place_call(gateway.url, script)
    assert gateway.seen.callbacks == []
    assert gateway.seen.callback_rejections == len(report.callback_statuses) > 0
    assert set(report.callback_statuses) == {401}
    assert report.unexpected == []  # a refusal is what the fault expects


async def test_duplicate_reorder_and_delay_knobs() -> None:
    knobs = CallbackKnobs(duplicate=True, reorder=True, delay_s=0.01)
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        report = await acs.place_call(gateway.url, _with(CallFaults(callbacks=knobs)))
    seen = gateway.seen.callback_types()
    assert seen[:4] == ["ParticipantsUpdated"] * 2 + ["CallConnected"] * 2
    ids = [e["id"] for e in gateway.seen.callbacks]
    assert ids[0] == ids[1] and ids[2] == ids[3]  # a duplicate is the same event, same id
    assert seen.count("CallDisconnected") == 2
    assert report.unexpected == []
