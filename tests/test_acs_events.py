import orjson
import pytest

from gateway.acs_events import BadPayload, parse_callbacks, parse_event_grid


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
