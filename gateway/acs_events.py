"""ACS inbound HTTP payloads (Event Grid webhook, Call Automation callbacks) as typed models.

Pure parsing: bytes in, models out, :class:`BadPayload` on a malformed body. No I/O here.
A batch's malformed or unhandled events are left out and reported, not the batch refused.
Every id and stored field is bounded at sizes real ACS uses (ACS_PROTOCOL.md), in UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar, get_args

import orjson

T = TypeVar("T")

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
INCOMING_CALL_EVENT = "Microsoft.Communication.IncomingCall"
PARTICIPANTS_UPDATED_EVENT = "Microsoft.Communication.ParticipantsUpdated"
CALLBACK_TYPE_PREFIX = "Microsoft.Communication."
MAX_BODY_BYTES = 1 << 20
# Event Grid delivers up to 5,000 events a batch (maxEventsPerBatch) and never retries a 400, so a
# lower cap loses whole batches. Call Automation's batch size is undocumented: the same cap. The
# 1 MB body limit bounds the work either way.
MAX_EVENTS_PER_REQUEST: Final[int] = 5_000
MAX_ID_BYTES: Final[int] = 128  # event ids, callConnectionId, correlationId: GUID-like
MAX_RAW_ID_BYTES: Final[int] = 256  # "8:acs:<guid>_<guid>", "4:+14255550123"
MAX_SERVER_CALL_ID_BYTES: Final[int] = 1024  # base64 of a URL
MAX_NAME_BYTES: Final[int] = 128  # event types, identifier kinds
MAX_DISPLAY_NAME_BYTES: Final[int] = 256
MAX_CALL_CONTEXT_BYTES: Final[int] = 32 * 1024  # "can be several kilobytes"
MAX_CUSTOM_CONTEXT_BYTES: Final[int] = 8 * 1024  # serialized

# Every reason a refusal or a skipped event can carry: the gateway counts them as metric labels,
# so the set is closed. ``unknown_type`` and ``missing_callConnectionId`` only ever skip an event.
Reason = Literal[
    "too_large",
    "invalid_json",
    "not_an_array",
    "too_many_events",
    "bad_event",
    "missing_data",
    "unknown_type",
    "missing_validationCode",
    "missing_incomingCallContext",
    "missing_type",
    "missing_id",
    "missing_callConnectionId",
    "bad_identifier",
    "not_a_string",
    "oversized_id",
    "oversized_field",
]
REASONS: Final[frozenset[str]] = frozenset(get_args(Reason))


class BadPayload(ValueError):
    """The body is not a payload ACS sends. ``reason`` is a short code safe to log and count."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


# The kind an identifier without ``kind`` has, as the Call Automation SDK reads it: first from the
# typed member it carries (named like its kind), else from its rawId's prefix.
TYPED_MEMBERS: Final[tuple[str, ...]] = (
    "phoneNumber",
    "communicationUser",
    "microsoftTeamsUser",
    "microsoftTeamsApp",
    "teamsExtensionUser",
)
RAW_ID_KINDS: Final[tuple[tuple[str, str], ...]] = (
    ("4:", "phoneNumber"),
    ("8:acs:", "communicationUser"),  # a Teams extension user's too: looked up alike
    ("8:dod-acs:", "communicationUser"),
    ("8:gcch-acs:", "communicationUser"),
    ("8:spool:", "communicationUser"),
    ("8:teamsvisitor:", "microsoftTeamsUser"),
    ("8:orgid:", "microsoftTeamsUser"),
    ("8:dod:", "microsoftTeamsUser"),
    ("8:gcch:", "microsoftTeamsUser"),
    ("28:orgid:", "microsoftTeamsApp"),
    ("28:dod:", "microsoftTeamsApp"),
    ("28:gcch:", "microsoftTeamsApp"),
)


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
    """One webhook request: either a validation handshake or a batch of incoming calls.

    ``ignored`` counts well-formed events of other types; ``skipped`` holds the reason of each
    malformed event left out of a batch that had usable ones.
    """

    validation_code: str | None
    incoming_calls: list[IncomingCall]
    ignored: int
    skipped: tuple[Reason, ...] = ()


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


@dataclass(frozen=True, slots=True)
class CallbackPost:
    """One callback request: the events to route, and the reason each other event was skipped
    (a type or an event not about a call, ignored; or malformed, in a batch with usable ones)."""

    events: list[CallbackEvent]
    skipped: tuple[Reason, ...] = ()


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


@dataclass(frozen=True, slots=True)
class _Field:
    """A string member of an event: its key, its size cap and how a refusal reads."""

    key: str
    max_bytes: int
    oversized: Reason
    missing: Reason | None = None  # None: optional, "" when absent


_VALIDATION_CODE = _Field("validationCode", MAX_ID_BYTES, "oversized_id", "missing_validationCode")
_CALL_CONTEXT = _Field(
    "incomingCallContext", MAX_CALL_CONTEXT_BYTES, "oversized_field", "missing_incomingCallContext"
)
_SERVER_CALL_ID = _Field("serverCallId", MAX_SERVER_CALL_ID_BYTES, "oversized_id")
_CORRELATION_ID = _Field("correlationId", MAX_ID_BYTES, "oversized_id")
_DISPLAY_NAME = _Field("callerDisplayName", MAX_DISPLAY_NAME_BYTES, "oversized_field")
_EVENT_ID = _Field("id", MAX_ID_BYTES, "oversized_id", "missing_id")
_EVENT_TYPE = _Field("type", MAX_NAME_BYTES, "oversized_field", "missing_type")
_CALL_CONNECTION_ID = _Field("callConnectionId", MAX_ID_BYTES, "oversized_id")  # absent: skipped


def _str(obj: dict[str, Any], spec: _Field) -> str:
    value = obj.get(spec.key)
    if value is None or value == "":
        if spec.missing is not None:
            raise BadPayload(spec.missing)
        return ""
    if not isinstance(value, str):
        raise BadPayload("not_a_string")
    if len(value.encode()) > spec.max_bytes:
        raise BadPayload(spec.oversized)
    return value


def _raw_id(value: Any) -> str:
    """A rawId the runtime may key state by: a printable string of bounded size."""
    if not isinstance(value, str):
        raise BadPayload("bad_identifier")
    if len(value.encode()) > MAX_RAW_ID_BYTES:
        raise BadPayload("oversized_id")
    if not value.isprintable():  # control, format (bidi) and separator characters
        raise BadPayload("bad_identifier")
    return value


def _typed_member(obj: dict[str, Any]) -> tuple[str, str]:
    """(rawId, kind) from the typed member older payloads carry instead of ``rawId``."""
    phone = obj.get("phoneNumber")
    user = obj.get("communicationUser")
    if isinstance(phone, dict) and isinstance(phone.get("value"), str) and phone["value"]:
        return "4:" + phone["value"], "phoneNumber"
    if isinstance(user, dict) and isinstance(user.get("id"), str) and user["id"]:
        return user["id"], "communicationUser"
    raise BadPayload("bad_identifier")


def _inferred_kind(obj: dict[str, Any], raw_id: str) -> str:
    """The kind of an identifier sent without one, so a caller's profile lookup still hits."""
    for member in TYPED_MEMBERS:
        if isinstance(obj.get(member), dict):
            return member
    for prefix, kind in RAW_ID_KINDS:
        if raw_id.startswith(prefix):
            return kind
    return "unknown"


def parse_identifier(obj: Any) -> Identifier:
    if not isinstance(obj, dict):
        raise BadPayload("bad_identifier")
    raw_id = obj.get("rawId")
    kind = obj.get("kind")
    if raw_id is None or raw_id == "":
        raw_id, kind = _typed_member(obj)
    if isinstance(kind, str) and len(kind.encode()) > MAX_NAME_BYTES:
        raise BadPayload("oversized_field")
    raw_id = _raw_id(raw_id)
    if not isinstance(kind, str) or kind == "":
        kind = _inferred_kind(obj, raw_id)
    return Identifier(kind=kind, raw_id=raw_id)


def _custom_context(data: dict[str, Any]) -> dict[str, Any]:
    custom = data.get("customContext")
    if not isinstance(custom, dict):
        return {}
    try:
        size = len(orjson.dumps(custom))
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: no real context is
        raise BadPayload("oversized_field") from None
    if size > MAX_CUSTOM_CONTEXT_BYTES:
        raise BadPayload("oversized_field")
    return custom


def _incoming_call(data: dict[str, Any]) -> IncomingCall:
    return IncomingCall(
        incoming_call_context=_str(data, _CALL_CONTEXT),
        caller=parse_identifier(data.get("from")),
        callee=parse_identifier(data.get("to")),
        server_call_id=_str(data, _SERVER_CALL_ID),
        correlation_id=_str(data, _CORRELATION_ID),
        caller_display_name=_str(data, _DISPLAY_NAME),
        custom_context=_custom_context(data),
    )


def _each_event(body: bytes, parse: Callable[[Any], T]) -> tuple[list[T], list[Reason]]:
    """Each event of a JSON array body parsed on its own, and the reason of each malformed."""
    parsed: list[T] = []
    malformed: list[Reason] = []
    for event in _load_array(body):
        try:
            parsed.append(parse(event))
        except BadPayload as exc:
            malformed.append(exc.reason)
    return parsed, malformed


def _refuse_unless_usable(malformed: list[Reason], usable: int) -> None:
    """Refuse a batch with nothing usable in it, for its first malformed event's reason.

    A batch with usable events (handled or ignored) is acknowledged: Event Grid never retries a
    400, so refusing it would lose its good events along with the bad."""
    if malformed and not usable:
        raise BadPayload(malformed[0])


def _grid_event_type(event: dict[str, Any]) -> Any:
    """``eventType`` in the Event Grid schema, ``type`` in the CloudEvents 1.0 one."""
    event_type = event.get("eventType")
    return event.get("type") if event_type is None else event_type


def _grid_event(event: Any) -> IncomingCall | str | None:
    """One Event Grid event: an incoming call, a validation code, or None for another type."""
    if not isinstance(event, dict):
        raise BadPayload("bad_event")
    data = event.get("data")
    if not isinstance(data, dict):
        raise BadPayload("missing_data")
    event_type = _grid_event_type(event)
    if event_type == VALIDATION_EVENT:
        return _str(data, _VALIDATION_CODE)
    if event_type == INCOMING_CALL_EVENT:
        return _incoming_call(data)
    return None


def parse_event_grid(body: bytes) -> EventGridPost:
    """Parse an Event Grid webhook body (Event Grid or CloudEvents 1.0 schema, JSON array)."""
    parsed, malformed = _each_event(body, _grid_event)
    for item in parsed:
        if isinstance(item, str):  # the handshake: it is the request's whole purpose
            return EventGridPost(item, [], 0, tuple(malformed))
    calls = [item for item in parsed if isinstance(item, IncomingCall)]
    _refuse_unless_usable(malformed, usable=len(parsed))
    return EventGridPost(None, calls, len(parsed) - len(calls), tuple(malformed))


def _check_participants(data: dict[str, Any]) -> None:
    """The call's actor keeps each participant's rawId: bound them like the caller's.

    Entries without a rawId stay accepted: the actor skips them.
    """
    entries = data.get("participants")
    if not isinstance(entries, list):
        return
    for entry in entries:
        ident = entry.get("identifier", entry) if isinstance(entry, dict) else None
        raw = ident.get("rawId") if isinstance(ident, dict) else None
        if raw is not None and raw != "":
            _raw_id(raw)


def _callback(event: Any) -> CallbackEvent | Reason:
    """One callback event, or why it is skipped: ACS may send types and events we do not handle,
    and they must be acknowledged (ACS_PROTOCOL.md). Malformed fields we use raise."""
    if not isinstance(event, dict):
        raise BadPayload("bad_event")
    event_type = _str(event, _EVENT_TYPE)
    if not event_type.startswith(CALLBACK_TYPE_PREFIX):
        return "unknown_type"
    data = event.get("data")
    if not isinstance(data, dict):
        raise BadPayload("missing_data")
    call_connection_id = _str(data, _CALL_CONNECTION_ID)
    if not call_connection_id:  # about no call: nothing to route it to
        return "missing_callConnectionId"
    event_id = _str(event, _EVENT_ID)
    _str(data, _SERVER_CALL_ID)  # carried to the actor: bounded like the IncomingCall's
    _str(data, _CORRELATION_ID)
    if event_type == PARTICIPANTS_UPDATED_EVENT:
        _check_participants(data)
    return CallbackEvent(
        id=event_id, type=event_type, call_connection_id=call_connection_id, data=data
    )


def parse_callbacks(body: bytes) -> CallbackPost:
    """Parse a Call Automation callback body (JSON array of CloudEvents 1.0)."""
    parsed, malformed = _each_event(body, _callback)
    events = [item for item in parsed if isinstance(item, CallbackEvent)]
    ignored = [item for item in parsed if not isinstance(item, CallbackEvent)]
    _refuse_unless_usable(malformed, usable=len(parsed))
    return CallbackPost(events, tuple(ignored + malformed))
