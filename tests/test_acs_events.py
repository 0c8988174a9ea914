from collections.abc import Callable, Mapping

import orjson
import pytest

from gateway.acs_events import (
    REASONS,
    VALIDATION_EVENT,
    BadPayload,
    parse_callbacks,
    parse_event_grid,
)


def _incoming(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "to": {"kind": "phoneNumber", "rawId": "4:+18005550100",
               "phoneNumber": {"value": "+18005550100"}},
        "from": {"kind": "phoneNumber", "rawId": "4:+14255550123",
                 "phoneNumber": {"value": "+14255550123"}},
        "serverCallId": "srv-1",
        "callerDisplayName": "Ada",
        "incomingCallContext": "opaque.ctx",
        "correlationId": "corr-1",
    }  # fmt: skip
    data.update(overrides)
    return {"id": "e1", "eventType": "Microsoft.Communication.IncomingCall", "data": data}


def test_validation_handshake_is_recognized() -> None:
    body = orjson.dumps(
        [
            {
                "id": "v",
                "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
            }
        ]
    )
    post = parse_event_grid(body)
    assert post.validation_code == "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"


def test_incoming_call_phone_and_acs_user() -> None:
    acs_user = {"kind": "communicationUser", "rawId": "8:acs:res_user",
                "communicationUser": {"id": "8:acs:res_user"}}  # fmt: skip
    post = parse_event_grid(orjson.dumps([_incoming(), _incoming(**{"from": acs_user})]))
    assert post.validation_code is None
    phone, user = post.incoming_calls
    assert phone.caller.lookup_id == "+14255550123"
    assert phone.incoming_call_context == "opaque.ctx"
    assert user.caller.lookup_id == "8:acs:res_user"


def test_identifier_without_raw_id_uses_typed_member() -> None:
    legacy = {"phoneNumber": {"value": "+15550001111"}}
    (call,) = parse_event_grid(orjson.dumps([_incoming(**{"from": legacy})])).incoming_calls
    assert call.caller.raw_id == "4:+15550001111"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b'"text"', "not_an_array"),
        (b'[{"eventType": "Microsoft.Communication.IncomingCall"}]', "missing_data"),
        (orjson.dumps([_incoming(incomingCallContext=None)]), "missing_incomingCallContext"),
        (orjson.dumps([_incoming(**{"from": 3})]), "bad_identifier"),
        (b"[" + b"1," * (1 << 20) + b"1]", "too_large"),
    ],
)
def test_bad_event_grid_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(BadPayload) as info:
        parse_event_grid(body)
    assert info.value.reason == reason


def test_callbacks_parse_and_name() -> None:
    events = parse_callbacks(
        orjson.dumps(
            [
                {
                    "id": "ev-1",
                    "source": "calling/callConnections/c1",
                    "type": "Microsoft.Communication.CallConnected",
                    "specversion": "1.0",
                    "data": {"callConnectionId": "c1", "serverCallId": "s", "correlationId": "r"},
                }
            ]
        )
    )
    assert events[0].name == "CallConnected"
    assert events[0].to_dict()["type"] == "CallConnected"


@pytest.mark.parametrize(
    "event",
    [
        {"id": "x", "type": "Other.Thing", "data": {"callConnectionId": "c"}},
        {"id": "x", "type": "Microsoft.Communication.CallConnected", "data": {}},
        {"type": "Microsoft.Communication.CallConnected", "data": {"callConnectionId": "c"}},
    ],
)
def test_bad_callbacks(event: dict[str, object]) -> None:
    with pytest.raises(BadPayload):
        parse_callbacks(orjson.dumps([event]))


def _callback(event_type: str = "CallConnected", **data: object) -> dict[str, object]:
    body: dict[str, object] = {"callConnectionId": "c1", "serverCallId": "s", "correlationId": "r"}
    body.update(data)
    return {"id": "ev-1", "type": f"Microsoft.Communication.{event_type}", "data": body}


LONG_RAW_ID = "8:" + "a" * 255
ACS_USER = "8:acs:1e5e54e0-7d3c-4c8d-a9e5-52b1f6e1d3a2_00000020-1b2c-3d4e-5f60-718293a4b5c6"


@pytest.mark.parametrize(
    "event",
    [
        _callback(),  # resultInformation absent, as in older API versions
        _callback("CallDisconnected", resultInformation={"code": 200, "subCode": 7000}),
        _callback("HoldAudioStarted"),  # unknown to the runtime: accepted, the actor ignores it
        _callback("ParticipantsUpdated", sequenceNumber=3, participants=[
            {"identifier": {"kind": "communicationUser", "rawId": ACS_USER}, "isMuted": False},
            {"kind": "phoneNumber", "rawId": "4:+14255550123"},  # older form: bare identifier
            {"identifier": {"kind": "unknown"}},  # no rawId: the actor skips it
        ]),
        _callback("RecordingStateChanged", recordingId="r1", state="active"),
    ],
)  # fmt: skip
def test_real_callback_variants_are_accepted(event: dict[str, object]) -> None:
    (parsed,) = parse_callbacks(orjson.dumps([event]))
    assert parsed.call_connection_id == "c1"


def test_real_incoming_call_variants_are_accepted() -> None:
    acs_user = {"kind": "communicationUser", "rawId": ACS_USER}
    custom = {"voipHeaders": {"x-tenant": "contoso"}, "sipHeaders": {}}
    server_call_id = "aHR0cHM6Ly9hcGkuZmxpZ2h0cHJveHkuc2t5cGUuY29tL2FwaS92Mi9jcC9jb252" * 8
    event = _incoming(
        **{"from": acs_user},
        incomingCallContext="e" * 12_000,  # "can be several kilobytes"
        serverCallId=server_call_id,
        callerDisplayName=None,
        customContext=custom,
    )
    (call,) = parse_event_grid(orjson.dumps([event])).incoming_calls
    assert call.caller.raw_id == ACS_USER
    assert call.caller_display_name == ""
    assert call.custom_context == custom


def _refusal(parse: Callable[[bytes], object], event: Mapping[str, object]) -> str:
    with pytest.raises(BadPayload) as info:
        parse(orjson.dumps([event]))
    assert info.value.reason in REASONS
    return info.value.reason


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"correlationId": "c" * 129}, "oversized_id"),
        ({"serverCallId": "s" * 1025}, "oversized_id"),
        ({"from": {"kind": "phoneNumber", "rawId": "4:" + "1" * 255}}, "oversized_id"),
        ({"from": {"kind": "k" * 129, "rawId": "4:+1"}}, "oversized_field"),
        ({"callerDisplayName": "é" * 129}, "oversized_field"),  # 258 UTF-8 bytes
        ({"incomingCallContext": "x" * (32 * 1024 + 1)}, "oversized_field"),
        ({"customContext": {"sipHeaders": {"x": "y" * 8192}}}, "oversized_field"),
        ({"correlationId": 42}, "not_a_string"),
        ({"incomingCallContext": ["opaque"]}, "not_a_string"),
        ({"from": {"kind": "phoneNumber", "rawId": 14255550123}}, "bad_identifier"),
        ({"from": {"kind": "phoneNumber", "rawId": "4:+1425\n5550123"}}, "bad_identifier"),
        ({"from": {"kind": "communicationUser", "rawId": "8:acs:\u202eevil"}}, "bad_identifier"),
        ({"from": {"phoneNumber": {"value": ""}}}, "bad_identifier"),
    ],
)
def test_incoming_call_fields_are_bounded(overrides: dict[str, object], reason: str) -> None:
    assert _refusal(parse_event_grid, _incoming(**overrides)) == reason


def test_custom_context_nested_past_what_orjson_writes_is_refused() -> None:
    body = orjson.dumps([_incoming(customContext="DEEP")])
    body = body.replace(b'"DEEP"', b'{"x":' * 300 + b"{}" + b"}" * 300)
    with pytest.raises(BadPayload) as info:
        parse_event_grid(body)
    assert info.value.reason == "oversized_field"


def test_validation_code_is_bounded() -> None:
    event = {"eventType": VALIDATION_EVENT, "data": {"validationCode": "v" * 129}}
    assert _refusal(parse_event_grid, event) == "oversized_id"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (_callback() | {"id": "e" * 129}, "oversized_id"),
        (_callback() | {"id": 7}, "not_a_string"),
        (_callback() | {"type": "Microsoft.Communication." + "X" * 120}, "oversized_field"),
        (_callback(callConnectionId="c" * 129), "oversized_id"),
        (_callback(callConnectionId={"id": "c1"}), "not_a_string"),
        (_callback(correlationId="r" * 129), "oversized_id"),
        (_callback(serverCallId="s" * 1025), "oversized_id"),
        (_callback("ParticipantsUpdated", participants=[{"identifier": {"rawId": LONG_RAW_ID}}]),
         "oversized_id"),
        (_callback("ParticipantsUpdated", participants=[{"rawId": "4:+1\x00"}]), "bad_identifier"),
    ],
)  # fmt: skip
def test_callback_fields_are_bounded(event: dict[str, object], reason: str) -> None:
    assert _refusal(parse_callbacks, event) == reason


def test_every_refusal_reason_is_enumerated() -> None:
    assert {"missing_incomingCallContext", "oversized_id", "oversized_field"} <= REASONS
    assert all(r.isidentifier() and len(r) <= 32 for r in REASONS)
