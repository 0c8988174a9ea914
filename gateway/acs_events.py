"""ACS inbound HTTP payloads (Event Grid webhook, Call Automation callbacks) as typed models.

Pure parsing: bytes in, models out, :class:`BadPayload` on anything malformed. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
INCOMING_CALL_EVENT = "Microsoft.Communication.IncomingCall"
CALLBACK_TYPE_PREFIX = "Microsoft.Communication."
MAX_BODY_BYTES = 1 << 20
MAX_EVENTS_PER_REQUEST = 100


class BadPayload(ValueError):
    """The body is not a payload ACS sends. ``reason`` is a short code safe to log and count."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identifier:
    """An ACS communication identifier reduced to what the runtime needs."""

    kind: str
    raw_id: str

    @property
    def lookup_id(self) -> str:
        """The id profiles are keyed by: the E.164 number, or the ACS user id."""
        if self.kind == "phoneNumber" and self.raw_id.startswith("4:"):
            return self.raw_id[2:]
        return self.raw_id


@dataclass(frozen=True, slots=True)
class IncomingCall:
    incoming_call_context: str
    caller: Identifier
    callee: Identifier
    server_call_id: str
    correlation_id: str
    caller_display_name: str = ""
    custom_context: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "caller": {"kind": self.caller.kind, "raw_id": self.caller.raw_id},
            "callee": {"kind": self.callee.kind, "raw_id": self.callee.raw_id},
            "caller_id": self.caller.lookup_id,
            "server_call_id": self.server_call_id,
            "correlation_id": self.correlation_id,
            "caller_display_name": self.caller_display_name,
        }


@dataclass(frozen=True, slots=True)
class EventGridPost:
    """One webhook request: either a validation handshake or a batch of incoming calls."""

    validation_code: str | None
    incoming_calls: list[IncomingCall]
    ignored: int


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """One Call Automation CloudEvent."""

    id: str
    type: str
    call_connection_id: str
    data: dict[str, Any]

    @property
    def name(self) -> str:
        """``CallConnected`` for ``Microsoft.Communication.CallConnected``."""
        return self.type.removeprefix(CALLBACK_TYPE_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.name, "data": self.data}


def _load_array(body: bytes) -> list[Any]:
    if len(body) > MAX_BODY_BYTES:
        raise BadPayload("too_large")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadPayload("invalid_json") from None
    if isinstance(doc, dict):  # tolerate a single event sent bare
        doc = [doc]
    if not isinstance(doc, list):
        raise BadPayload("not_an_array")
    if len(doc) > MAX_EVENTS_PER_REQUEST:
        raise BadPayload("too_many_events")
    return doc


def _str(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if isinstance(value, str) and value:
        return value
    if required:
        raise BadPayload(f"missing_{key}")
    return ""


def parse_identifier(obj: Any) -> Identifier:
    if not isinstance(obj, dict):
        raise BadPayload("bad_identifier")
    raw_id = obj.get("rawId")
    kind = obj.get("kind")
    if not isinstance(raw_id, str) or not raw_id:
        # Older payloads carry only the typed member.
        phone = obj.get("phoneNumber")
        user = obj.get("communicationUser")
        if isinstance(phone, dict) and isinstance(phone.get("value"), str):
            raw_id, kind = "4:" + phone["value"], "phoneNumber"
        elif isinstance(user, dict) and isinstance(user.get("id"), str):
            raw_id, kind = user["id"], "communicationUser"
        else:
            raise BadPayload("bad_identifier")
    return Identifier(kind=kind if isinstance(kind, str) else "unknown", raw_id=raw_id)


def parse_event_grid(body: bytes) -> EventGridPost:
    """Parse an Event Grid webhook body (Event Grid schema, JSON array)."""
    events = _load_array(body)
    calls: list[IncomingCall] = []
    ignored = 0
    for event in events:
        if not isinstance(event, dict):
            raise BadPayload("bad_event")
        event_type = event.get("eventType")
        data = event.get("data")
        if not isinstance(data, dict):
            raise BadPayload("missing_data")
        if event_type == VALIDATION_EVENT:
            return EventGridPost(_str(data, "validationCode"), [], 0)
        if event_type != INCOMING_CALL_EVENT:
            ignored += 1
            continue
        custom = data.get("customContext")
        calls.append(
            IncomingCall(
                incoming_call_context=_str(data, "incomingCallContext"),
                caller=parse_identifier(data.get("from")),
                callee=parse_identifier(data.get("to")),
                server_call_id=_str(data, "serverCallId", required=False),
                correlation_id=_str(data, "correlationId", required=False),
                caller_display_name=_str(data, "callerDisplayName", required=False),
                custom_context=custom if isinstance(custom, dict) else {},
            )
        )
    return EventGridPost(None, calls, ignored)


def parse_callbacks(body: bytes) -> list[CallbackEvent]:
    """Parse a Call Automation callback body (JSON array of CloudEvents 1.0)."""
    out: list[CallbackEvent] = []
    for event in _load_array(body):
        if not isinstance(event, dict):
            raise BadPayload("bad_event")
        data = event.get("data")
        if not isinstance(data, dict):
            raise BadPayload("missing_data")
        event_type = _str(event, "type")
        if not event_type.startswith(CALLBACK_TYPE_PREFIX):
            raise BadPayload("unknown_type")
        out.append(
            CallbackEvent(
                id=_str(event, "id"),
                type=event_type,
                call_connection_id=_str(data, "callConnectionId"),
                data=data,
            )
        )
    return out
