"""Wire builders and the outbound parser (both casings, malformed input)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from simulator import wire

IDS = wire.CallIds("call-1", "server-1", "corr-1")
NOW = datetime(2024, 11, 15, 19, 16, 12, 925_000, tzinfo=UTC)


def test_iso_time_has_milliseconds_and_z() -> None:
    assert wire.iso_time(NOW) == "2024-11-15T19:16:12.925Z"


def test_incoming_call_event_carries_identifiers_and_context() -> None:
    fields = wire.IncomingCallFields(
        caller=wire.phone_identifier("+14255550123"),
        callee=wire.acs_user_identifier("8:acs:resource_user"),
        caller_display_name="Ada",
        server_call_id="server-1",
        correlation_id="corr-1",
        incoming_call_context="opaque",
    )
    [event] = wire.incoming_call_events(fields, "/topic", NOW)
    assert event["eventType"] == "Microsoft.Communication.IncomingCall"
    data = event["data"]
    assert data["from"]["phoneNumber"]["value"] == "+14255550123"
    assert data["from"]["rawId"] == "4:+14255550123"
    assert data["to"]["communicationUser"]["id"] == "8:acs:resource_user"
    assert data["incomingCallContext"] == "opaque"


def test_validation_event() -> None:
    [event] = wire.subscription_validation_events("CODE", "/topic", NOW)
    assert event["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
    assert event["data"]["validationCode"] == "CODE"


def test_cloud_event_shape() -> None:
    event = wire.cloud_event("CallConnected", IDS, {"operationContext": "x"}, NOW)
    assert event["type"] == "Microsoft.Communication.CallConnected"
    assert event["source"] == "calling/callConnections/call-1"
    assert event["specversion"] == "1.0"
    assert event["data"]["callConnectionId"] == "call-1"
    assert event["data"]["operationContext"] == "x"
    assert event["data"]["resultInformation"]["code"] == 200


def test_media_messages() -> None:
    meta = wire.audio_metadata("sub", 24000, 960)["audioMetadata"]
    assert meta == {
        "subscriptionId": "sub",
        "encoding": "PCM",
        "sampleRate": 24000,
        "channels": 1,
        "length": 960,
    }
    frame = wire.audio_data(b"\x01\x00", "t", "4:+1", silent=False)["audioData"]
    assert frame["participantRawID"] == "4:+1" and frame["data"] == "AQA="
    assert "participantRawID" not in wire.audio_data(b"", "t", None, True)["audioData"]


def test_transcription_ticks() -> None:
    data = wire.transcription_data("Hello there.", 1.5, 1.0, "4:+1", final=True)
    result = data["transcriptionData"]
    assert result["offset"] == 15_000_000 and result["duration"] == 10_000_000
    assert [w["text"] for w in result["words"]] == ["hello", "there"]
    assert result["words"][1]["offset"] == 20_000_000
    assert result["resultStatus"] == "Final"


@pytest.mark.parametrize("pascal_case", [True, False])
def test_outbound_both_casings(pascal_case: bool) -> None:
    parsed = wire.parse_outbound(wire.outbound_audio(b"\x01\x02\x03\x04", pascal_case))
    assert parsed == wire.OutboundAudio(b"\x01\x02\x03\x04")
    assert isinstance(wire.parse_outbound(wire.outbound_stop(pascal_case)), wire.OutboundStop)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\x00", "binary_frame"),
        ("{", "bad_json"),
        ("[]", "not_object"),
        ('{"audioData": {}}', "missing_kind"),
        ('{"kind": "Mystery"}', "unknown_kind"),
        ('{"kind": "AudioData", "audioData": {}}', "missing_data"),
        ('{"kind": "AudioData", "audioData": {"data": "@@"}}', "bad_base64"),
        ('{"kind": "AudioData", "audioData": {"data": "YWJj"}}', "odd_length"),  # 3 bytes
    ],
)
def test_malformed_outbound(message: str | bytes, reason: str) -> None:
    with pytest.raises(wire.MalformedOutbound) as raised:
        wire.parse_outbound(message)
    assert raised.value.reason == reason


def test_answer_request_parsing() -> None:
    body = {
        "incomingCallContext": "ctx",
        "callbackUri": "https://gw/cb",
        "mediaStreamingOptions": {
            "transportUrl": "wss://gw/ws",
            "audioChannelType": "Unmixed",
            "audioFormat": "pcm24KMono",
            "startMediaStreaming": True,
            "enableBidirectional": True,
        },
    }
    request = wire.parse_answer_request(body)
    assert request.media is not None and request.media.channel_type == "unmixed"
    assert request.media.audio_format == "pcm24KMono" and request.transcription is None
    with pytest.raises(wire.BadRequest):
        wire.parse_answer_request({"incomingCallContext": "ctx", "callbackUri": "ftp://x"})
    bad_media = {**body, "mediaStreamingOptions": {"transportUrl": "http://gw/ws"}}
    with pytest.raises(wire.BadRequest):
        wire.parse_answer_request(bad_media)


def test_play_request_parsing() -> None:
    body = {
        "playSources": [
            {"kind": "text", "text": {"text": "Hi", "voiceName": "en-US-NancyNeural"}},
            {"kind": "ssml", "ssml": {"ssmlText": "<speak>Bye now</speak>"}},
        ],
        "operationContext": "ctx",
    }
    play = wire.parse_play_request(body)
    assert play.texts == ["Hi", "Bye now"] and play.operation_context == "ctx"
    with pytest.raises(wire.BadRequest):
        wire.parse_play_request({"playSources": []})
