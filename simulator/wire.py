"""ACS wire formats as the stand-in produces and reads them: pure builders and parsers.

Owns the JSON shapes only; never performs I/O, never reads clocks (times are passed in).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

EVENT_NAMESPACE = "Microsoft.Communication."
INCOMING_CALL = "Microsoft.Communication.IncomingCall"
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
TICKS_PER_SECOND = 10_000_000  # transcription offsets and durations are 100 ns ticks

Json = dict[str, Any]


def iso_time(moment: datetime) -> str:
    """``2024-11-15T19:16:12.925Z``: millisecond UTC timestamps as ACS writes them."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


# --- identifiers ---------------------------------------------------------------------------


def phone_identifier(number: str) -> Json:
    return {"kind": "phoneNumber", "rawId": f"4:{number}", "phoneNumber": {"value": number}}


def acs_user_identifier(user_id: str) -> Json:
    return {"kind": "communicationUser", "rawId": user_id, "communicationUser": {"id": user_id}}


def raw_id(identifier: Json) -> str:
    return str(identifier["rawId"])


# --- Event Grid (stand-in -> gateway webhook) ----------------------------------------------


def subscription_validation_events(code: str, topic: str, now: datetime) -> list[Json]:
    return [
        {
            "id": str(uuid.uuid4()),
            "topic": topic,
            "subject": "",
            "data": {
                "validationCode": code,
                "validationUrl": f"https://rp-stand-in.invalid/validate?code={code}",
            },
            "eventType": SUBSCRIPTION_VALIDATION,
            "eventTime": iso_time(now),
            "metadataVersion": "1",
            "dataVersion": "2",
        }
    ]


@dataclass(frozen=True, slots=True)
class IncomingCallFields:
    caller: Json
    callee: Json
    caller_display_name: str
    server_call_id: str
    correlation_id: str
    incoming_call_context: str
    custom_context: Json | None = None


def incoming_call_events(call: IncomingCallFields, topic: str, now: datetime) -> list[Json]:
    data: Json = {
        "to": call.callee,
        "from": call.caller,
        "serverCallId": call.server_call_id,
        "callerDisplayName": call.caller_display_name,
        "incomingCallContext": call.incoming_call_context,
        "correlationId": call.correlation_id,
    }
    if call.custom_context is not None:
        data["customContext"] = call.custom_context
    return [
        {
            "id": str(uuid.uuid4()),
            "topic": topic,
            "subject": f"/caller/{raw_id(call.caller)}/recipient/{raw_id(call.callee)}",
            "data": data,
            "eventType": INCOMING_CALL,
            "eventTime": iso_time(now),
            "metadataVersion": "1",
            "dataVersion": "1.0",
        }
    ]


# --- Call Automation REST ------------------------------------------------------------------


def error_body(code: str, message: str) -> Json:
    return {"error": {"code": code, "message": message}}


@dataclass(frozen=True, slots=True)
class CallIds:
    call_connection_id: str
    server_call_id: str
    correlation_id: str


def call_properties(
    ids: CallIds, state: str, callback_uri: str, caller: Json, callee: Json, display_name: str
) -> Json:
    props: Json = {
        "callConnectionId": ids.call_connection_id,
        "serverCallId": ids.server_call_id,
        "correlationId": ids.correlation_id,
        "callConnectionState": state,
        "callbackUri": callback_uri,
        "targets": [caller],
        "source": callee,
        "sourceDisplayName": display_name,
    }
    if caller.get("kind") == "phoneNumber":
        props["sourceCallerIdNumber"] = {"value": caller["phoneNumber"]["value"]}
    return props


# --- callbacks (CloudEvents) ---------------------------------------------------------------


def cloud_event(name: str, ids: CallIds, data: Json, now: datetime, event_id: str = "") -> Json:
    """One CloudEvent 1.0; ``data`` extras are merged over the fields every event carries."""
    body: Json = {
        "callConnectionId": ids.call_connection_id,
        "serverCallId": ids.server_call_id,
        "correlationId": ids.correlation_id,
        "resultInformation": {"code": 200, "subCode": 0, "message": "Success."},
        "version": "2026-03-12",
        "publicEventType": EVENT_NAMESPACE + name,
    }
    body.update(data)
    return {
        "id": event_id or str(uuid.uuid4()),
        "source": f"calling/callConnections/{ids.call_connection_id}",
        "type": EVENT_NAMESPACE + name,
        "data": body,
        "time": iso_time(now),
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": f"calling/callConnections/{ids.call_connection_id}",
    }


def result_information(code: int, sub_code: int, message: str) -> Json:
    return {"resultInformation": {"code": code, "subCode": sub_code, "message": message}}


def participants_data(participants: list[Json], sequence_number: int) -> Json:
    return {
        "sequenceNumber": sequence_number,
        "participants": [
            {"identifier": p, "isMuted": False, "isOnHold": False} for p in participants
        ],
    }


def media_streaming_update(status: str, details: str) -> Json:
    return {
        "mediaStreamingUpdate": {
            "contentType": "Audio",
            "mediaStreamingStatus": status,
            "mediaStreamingStatusDetails": details,
        }
    }


def transcription_update(status: str, details: str) -> Json:
    return {
        "transcriptionUpdate": {
            "transcriptionStatus": status,
            "transcriptionStatusDetails": details,
        }
    }


# --- media WebSocket (stand-in -> gateway) -------------------------------------------------


def audio_metadata(subscription_id: str, sample_rate: int, frame_bytes: int) -> Json:
    return {
        "kind": "AudioMetadata",
        "audioMetadata": {
            "subscriptionId": subscription_id,
            "encoding": "PCM",
            "sampleRate": sample_rate,
            "channels": 1,
            "length": frame_bytes,
        },
    }


def audio_data(pcm: bytes, timestamp: str, participant_raw_id: str | None, silent: bool) -> Json:
    data: Json = {
        "timestamp": timestamp,
        "data": base64.b64encode(pcm).decode("ascii"),
        "silent": silent,
    }
    if participant_raw_id is not None:
        data["participantRawID"] = participant_raw_id  # capital ID, as ACS spells it
    return {"kind": "AudioData", "audioData": data}


def dtmf_data(tone: str) -> Json:
    return {"kind": "DtmfData", "dtmfData": {"data": tone}}


# --- transcription WebSocket ---------------------------------------------------------------


def transcription_metadata(
    subscription_id: str, locale: str, call_connection_id: str, correlation_id: str
) -> Json:
    return {
        "kind": "TranscriptionMetadata",
        "transcriptionMetadata": {
            "subscriptionId": subscription_id,
            "locale": locale,
            "callConnectionId": call_connection_id,
            "correlationId": correlation_id,
        },
    }


def seconds_to_ticks(seconds: float) -> int:
    return round(seconds * TICKS_PER_SECOND)


def transcription_data(
    text: str,
    offset_s: float,
    duration_s: float,
    participant_raw_id: str,
    final: bool,
    confidence: float = 0.92,
) -> Json:
    """A result whose words share the line's duration evenly (ticks are 100 ns)."""
    words = text.split()
    per_word = duration_s / max(len(words), 1)
    return {
        "kind": "TranscriptionData",
        "transcriptionData": {
            "text": text,
            "format": "display",
            "confidence": confidence,
            "offset": seconds_to_ticks(offset_s),
            "duration": seconds_to_ticks(duration_s),
            "words": [
                {
                    "text": word.strip(".,!?;:").lower(),
                    "offset": seconds_to_ticks(offset_s + i * per_word),
                    "duration": seconds_to_ticks(per_word),
                }
                for i, word in enumerate(words)
            ],
            "participantRawID": participant_raw_id,
            "resultStatus": "Final" if final else "Intermediate",
        },
    }


# --- outbound media (gateway -> stand-in), both casings ------------------------------------


class MalformedOutbound(ValueError):
    """An outbound media message the stand-in cannot interpret; ``reason`` is a short code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OutboundAudio:
    pcm: bytes


@dataclass(frozen=True, slots=True)
class OutboundStop:
    pass


def _field(obj: Json, name: str) -> Any:
    """Case-insensitive key lookup: ``Kind``/``kind``, ``AudioData``/``audioData``."""
    lowered = name.lower()
    for key, value in obj.items():
        if key.lower() == lowered:
            return value
    return None


def parse_outbound(message: str | bytes) -> OutboundAudio | OutboundStop:
    """PascalCase and camelCase outbound messages alike; anything else is malformed."""
    if isinstance(message, bytes):
        raise MalformedOutbound("binary_frame")
    try:
        obj = json.loads(message)
    except ValueError:
        raise MalformedOutbound("bad_json") from None
    if not isinstance(obj, dict):
        raise MalformedOutbound("not_object")
    kind = _field(obj, "kind")
    if not isinstance(kind, str):
        raise MalformedOutbound("missing_kind")
    if kind.lower() == "stopaudio":
        return OutboundStop()
    if kind.lower() != "audiodata":
        raise MalformedOutbound("unknown_kind")
    payload = _field(obj, "audioData")
    encoded = _field(payload, "data") if isinstance(payload, dict) else None
    if not isinstance(encoded, str):
        raise MalformedOutbound("missing_data")
    try:
        pcm = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedOutbound("bad_base64") from None
    if len(pcm) % 2:
        raise MalformedOutbound("odd_length")
    return OutboundAudio(pcm)


def outbound_audio(pcm: bytes, pascal_case: bool = True) -> str:
    """What a gateway sends (used by tests and fakes to exercise both casings)."""
    data = base64.b64encode(pcm).decode("ascii")
    if pascal_case:
        return json.dumps({"Kind": "AudioData", "AudioData": {"Data": data}, "StopAudio": None})
    return json.dumps({"kind": "audioData", "audioData": {"data": data}})


def outbound_stop(pascal_case: bool = True) -> str:
    if pascal_case:
        return json.dumps({"Kind": "StopAudio", "AudioData": None, "StopAudio": {}})
    return json.dumps({"kind": "stopAudio", "stopAudio": {}})


# --- what the app asks of ACS (REST request bodies) ----------------------------------------


class BadRequest(ValueError):
    """A REST body the real service would refuse with 400."""


@dataclass(frozen=True, slots=True)
class MediaOptions:
    transport_url: str
    audio_format: str  # pcm16KMono | pcm24KMono
    channel_type: str  # mixed | unmixed
    start: bool
    bidirectional: bool
    dtmf: bool


@dataclass(frozen=True, slots=True)
class TranscriptionOptions:
    transport_url: str
    locale: str
    start: bool
    intermediate: bool


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    incoming_call_context: str
    callback_uri: str
    operation_context: str | None
    media: MediaOptions | None
    transcription: TranscriptionOptions | None


def _ws_url(options: Json, what: str) -> str:
    url = options.get("transportUrl")
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        raise BadRequest(f"{what}.transportUrl must be a ws:// or wss:// URL")
    return url


def parse_answer_request(body: Json) -> AnswerRequest:
    context = body.get("incomingCallContext")
    callback = body.get("callbackUri")
    if not isinstance(context, str) or not context:
        raise BadRequest("incomingCallContext is required")
    if not isinstance(callback, str) or not callback.startswith(("http://", "https://")):
        raise BadRequest("callbackUri must be an http(s) URL")
    media = transcription = None
    m = body.get("mediaStreamingOptions")
    if isinstance(m, dict):
        media = MediaOptions(
            transport_url=_ws_url(m, "mediaStreamingOptions"),
            audio_format=str(m.get("audioFormat") or "pcm16KMono"),
            channel_type=str(m.get("audioChannelType") or "mixed").lower(),
            start=bool(m.get("startMediaStreaming", False)),
            bidirectional=bool(m.get("enableBidirectional", False)),
            dtmf=bool(m.get("enableDtmfTones", False)),
        )
    t = body.get("transcriptionOptions")
    if isinstance(t, dict):
        transcription = TranscriptionOptions(
            transport_url=_ws_url(t, "transcriptionOptions"),
            locale=str(t.get("locale") or "en-US"),
            start=bool(t.get("startTranscription", False)),
            intermediate=bool(t.get("enableIntermediateResults", False)),
        )
    operation_context = body.get("operationContext")
    return AnswerRequest(
        incoming_call_context=context,
        callback_uri=callback,
        operation_context=operation_context if isinstance(operation_context, str) else None,
        media=media,
        transcription=transcription,
    )


@dataclass(frozen=True, slots=True)
class PlayRequest:
    texts: list[str]  # what will be heard; files and SSML are summarised as text
    operation_context: str | None
    operation_callback_uri: str | None


def parse_play_request(body: Json) -> PlayRequest:
    sources = body.get("playSources")
    if not isinstance(sources, list) or not sources:
        raise BadRequest("playSources must be a non-empty list")
    texts = []
    for source in sources:
        kind = source.get("kind") if isinstance(source, dict) else None
        if kind == "text" and isinstance(source.get("text"), dict):
            texts.append(str(source["text"].get("text", "")))
        elif kind == "ssml" and isinstance(source.get("ssml"), dict):
            texts.append(re.sub(r"<[^>]+>", " ", str(source["ssml"].get("ssmlText", ""))).strip())
        elif kind == "file" and isinstance(source.get("file"), dict):
            texts.append(f"[file {source['file'].get('uri', '')}]")
        else:
            raise BadRequest(f"unsupported play source {kind!r}")
    context = body.get("operationContext")
    callback = body.get("operationCallbackUri")
    return PlayRequest(
        texts=texts,
        operation_context=context if isinstance(context, str) else None,
        operation_callback_uri=callback if isinstance(callback, str) else None,
    )


REJECT_REASONS = ("none", "busy", "forbidden")  # CallRejectReason; absent means "none"


def parse_reject_request(body: Json) -> str:
    """The reject request's reason (lower case); its ``incomingCallContext`` is required."""
    context = body.get("incomingCallContext")
    if not isinstance(context, str) or not context:
        raise BadRequest("incomingCallContext is required")
    reason = body.get("callRejectReason") or "none"
    if not isinstance(reason, str) or reason.lower() not in REJECT_REASONS:
        raise BadRequest(f"callRejectReason must be one of {', '.join(REJECT_REASONS)}")
    return reason.lower()
