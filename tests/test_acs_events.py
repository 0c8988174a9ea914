from collections.abc import Callable, Mapping

import orjson
import pytest

from gateway.acs_events import (
    INCOMING_CALL_EVENT,
    MAX_BODY_BYTES,
    MAX_EVENTS_PER_REQUEST,
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
    post = parse_callbacks(
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
    assert post.events[0].name == "CallConnected"
    assert post.events[0].to_dict()["type"] == "CallConnected"
    assert post.skipped == ()


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"type": "Microsoft.Communication.CallConnected", "data": {"callConnectionId": "c"}},
         "missing_id"),
        ({"id": "x", "data": {"callConnectionId": "c"}}, "missing_type"),
        ({"id": "x", "type": 7, "data": {"callConnectionId": "c"}}, "not_a_string"),
        ({"id": "x", "type": "Microsoft.Communication.CallConnected"}, "missing_data"),
        ("CallConnected", "bad_event"),
    ],
)  # fmt: skip
def test_bad_callbacks(event: object, reason: str) -> None:
    with pytest.raises(BadPayload) as info:
        parse_callbacks(orjson.dumps([event]))
    assert info.value.reason == reason


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
    (parsed,) = parse_callbacks(orjson.dumps([event])).events
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
    # Skipped events are counted by reason too: their reasons are labels of the same closed set.
    assert {"unknown_type", "missing_callConnectionId", "bad_event"} <= REASONS
    assert all(r.isidentifier() and len(r) <= 32 for r in REASONS)


# -- batches: Event Grid's own size, and one bad event does not lose the good ones -----------------


def _other_grid_event(n: int) -> dict[str, object]:
    return {"id": f"o{n}", "eventType": "Microsoft.Communication.CallEnded", "data": {}}


def test_event_grid_batch_up_to_its_maximum_is_accepted() -> None:
    batch = [_incoming()] + [_other_grid_event(n) for n in range(4_999)]
    body = orjson.dumps(batch)
    assert len(body) <= MAX_BODY_BYTES
    post = parse_event_grid(body)
    assert len(post.incoming_calls) == 1
    assert post.ignored == 4_999
    assert MAX_EVENTS_PER_REQUEST >= 5_000  # Event Grid's maxEventsPerBatch ceiling
    with pytest.raises(BadPayload) as info:
        parse_event_grid(orjson.dumps([*batch, _other_grid_event(5_000)]))
    assert info.value.reason == "too_many_events"


def test_callback_batch_past_a_hundred_events_is_accepted() -> None:
    batch = [_callback() | {"id": f"ev-{n}"} for n in range(5_000)]
    body = orjson.dumps(batch)
    assert len(body) <= MAX_BODY_BYTES
    assert len(parse_callbacks(body).events) == 5_000


def test_malformed_grid_events_are_skipped_beside_good_ones() -> None:
    batch = [
        _incoming(incomingCallContext=None),
        _incoming(),
        7,
        {"eventType": INCOMING_CALL_EVENT},
        _incoming(**{"from": {"kind": "phoneNumber", "rawId": "4:+1\n"}}),
        _incoming(correlationId="corr-2"),
    ]
    post = parse_event_grid(orjson.dumps(batch))
    assert [c.correlation_id for c in post.incoming_calls] == ["corr-1", "corr-2"]
    assert post.skipped == (
        "missing_incomingCallContext",
        "bad_event",
        "missing_data",
        "bad_identifier",
    )
    assert set(post.skipped) <= REASONS


def test_well_formed_grid_event_of_another_type_keeps_its_batch() -> None:
    post = parse_event_grid(orjson.dumps([_other_grid_event(0), 7]))
    assert (post.incoming_calls, post.ignored, post.skipped) == ([], 1, ("bad_event",))


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        ([_incoming(incomingCallContext=None), _incoming(**{"from": 3})],
         "missing_incomingCallContext"),
        ([7, _incoming(incomingCallContext=None)], "bad_event"),
    ],
)  # fmt: skip
def test_grid_batch_with_nothing_usable_is_refused(batch: list[object], reason: str) -> None:
    with pytest.raises(BadPayload) as info:
        parse_event_grid(orjson.dumps(batch))
    assert info.value.reason == reason


def test_malformed_callbacks_are_skipped_beside_good_ones() -> None:
    batch = [
        _callback(callConnectionId=5),
        _callback() | {"id": "ev-2"},
        "CallConnected",
        _callback(correlationId="r" * 129),
    ]
    post = parse_callbacks(orjson.dumps(batch))
    assert [e.id for e in post.events] == ["ev-2"]
    assert post.skipped == ("not_a_string", "bad_event", "oversized_id")


def test_callback_batch_with_nothing_usable_is_refused() -> None:
    with pytest.raises(BadPayload) as info:
        parse_callbacks(orjson.dumps([_callback(callConnectionId=5), "x"]))
    assert info.value.reason == "not_a_string"


# -- callbacks we do not handle are acknowledged and ignored (ACS_PROTOCOL.md) ---------------------


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"id": "x", "type": "Other.Thing", "data": {"callConnectionId": "c"}}, "unknown_type"),
        ({"type": "Microsoft.AzureMonitor.Ping"}, "unknown_type"),  # no id, no data: not ours
        ({"id": "x", "type": "Microsoft.Communication.CallConnected", "data": {}},
         "missing_callConnectionId"),
        (_callback(callConnectionId=""), "missing_callConnectionId"),
    ],
)  # fmt: skip
def test_callbacks_we_do_not_handle_are_skipped(event: dict[str, object], reason: str) -> None:
    post = parse_callbacks(orjson.dumps([event]))
    assert post.events == []
    assert post.skipped == (reason,)


def test_unhandled_callbacks_beside_handled_and_malformed_ones() -> None:
    batch = [
        {"id": "u", "type": "Contoso.Custom", "data": {}},
        _callback(),
        {"id": "m", "type": "Microsoft.Communication.CallConnected", "data": {"serverCallId": "s"}},
    ]
    post = parse_callbacks(orjson.dumps(batch))
    assert [e.call_connection_id for e in post.events] == ["c1"]
    assert post.skipped == ("unknown_type", "missing_callConnectionId")
    # Unhandled events are well formed: beside them, a malformed one is skipped, not refused.
    mixed = parse_callbacks(orjson.dumps([batch[0], _callback() | {"id": 1}]))
    assert (mixed.events, mixed.skipped) == ([], ("unknown_type", "not_a_string"))


# -- identifiers without ``kind`` ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "kind", "lookup_id"),
    [
        ({"rawId": "4:+14255550123", "phoneNumber": {"value": "+14255550123"}},
         "phoneNumber", "+14255550123"),
        ({"rawId": "4:+14255550123"}, "phoneNumber", "+14255550123"),
        ({"rawId": ACS_USER}, "communicationUser", ACS_USER),
        ({"rawId": ACS_USER, "communicationUser": {"id": ACS_USER}}, "communicationUser",
         ACS_USER),
        ({"rawId": "8:orgid:u1", "microsoftTeamsUser": {"userId": "u1"}}, "microsoftTeamsUser",
         "8:orgid:u1"),
        ({"rawId": "8:teamsvisitor:v1"}, "microsoftTeamsUser", "8:teamsvisitor:v1"),
        ({"rawId": "28:orgid:app1"}, "microsoftTeamsApp", "28:orgid:app1"),
        ({"kind": "", "rawId": "4:+14255550123"}, "phoneNumber", "+14255550123"),
        ({"rawId": "9:something"}, "unknown", "9:something"),
        ({"kind": "communicationUser", "rawId": "4:+1"}, "communicationUser", "4:+1"),  # as sent
    ],
)  # fmt: skip
def test_identifier_without_kind_gets_it_inferred(
    identifier: dict[str, object], kind: str, lookup_id: str
) -> None:
    (call,) = parse_event_grid(orjson.dumps([_incoming(**{"from": identifier})])).incoming_calls
    assert call.caller.kind == kind
    assert call.caller.lookup_id == lookup_id
    assert call.to_dict()["caller_id"] == lookup_id


# -- Event Grid subscriptions in the CloudEvents 1.0 schema -------------------------------------


def _cloud_event(**fields: object) -> dict[str, object]:
    grid = _incoming()
    return {
        "id": "8b6c3f0e-1a2b-4c5d-9e8f-0a1b2c3d4e5f",
        "source": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Communication/"
        "communicationServices/acs",
        "subject": "/caller/4:+14255550123/recipient/4:+18005550100",
        "time": "2024-11-15T19:16:12.9250000+00:00",
        "specversion": "1.0",
        "type": INCOMING_CALL_EVENT,
        "data": grid["data"],
    } | fields


def test_event_grid_cloud_events_schema_incoming_call_is_parsed() -> None:
    post = parse_event_grid(orjson.dumps([_cloud_event()]))
    (call,) = post.incoming_calls
    assert call.caller.lookup_id == "+14255550123"
    assert call.incoming_call_context == "opaque.ctx"
    (bare,) = parse_event_grid(orjson.dumps(_cloud_event())).incoming_calls  # unbatched delivery
    assert bare == call


def test_event_grid_cloud_events_of_other_types_are_ignored() -> None:
    post = parse_event_grid(orjson.dumps([_cloud_event(type="Microsoft.Communication.Other")]))
    assert (post.incoming_calls, post.ignored) == ([], 1)
