"""Property tests over every parser that faces the outside.

Whatever arrives, a parser returns a value or raises its module's documented refusal type, whose
reason is one of the module's enumerated codes: the gateway and the actor count refusals under
that reason as a metric label, so the set of labels must stay closed.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import acs_media, stream_protocol
from actors.stream_protocol import Frame, FrameKind, ProtocolViolation
from gateway import acs_events
from gateway.acs_events import BadPayload, parse_callbacks, parse_event_grid
from storage.settings import ENV_PREFIX, ConfigError, Settings, load_settings

PROPERTY = settings(max_examples=200, deadline=None)

# -- strategies -----------------------------------------------------------------------------------

# orjson neither reads nor writes lone surrogates, so JSON text leaves them out.
_json_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_long_text = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["a", "é", "😀", "\x00", "\n", "\u202e"]),
    st.integers(min_value=100, max_value=40_000),
)
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _json_text
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_json_text, inner, max_size=3),
    max_leaves=8,
)
_DELETE = object()


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every member of ``doc`` (dict keys, list indexes), nested members included."""
    members: list[tuple[Any, ...]] = []
    children = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, child in children:
        members.append((*prefix, key))
        members.extend(_paths(child, (*prefix, key)))
    return members


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is _DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@st.composite
def near_valid(draw: st.DrawFn, samples: list[dict[str, Any]]) -> Any:
    """A real message with a few members replaced by other JSON (any type), long text or nothing."""
    doc = copy.deepcopy(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        _replace(doc, path, draw(st.just(_DELETE) | _json_values | _long_text))
    return doc


@st.composite
def damaged(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` cut short or with random bytes spliced in."""
    at = draw(st.integers(min_value=0, max_value=len(body)))
    if draw(st.booleans()):
        return body[:at]
    return body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]


@st.composite
def wire(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> bytes:
    """Mostly ``docs`` as JSON; also damaged JSON and arbitrary bytes."""
    shape = draw(st.integers(min_value=0, max_value=5))
    if shape == 5:
        return draw(st.binary(max_size=512))
    body = orjson.dumps(draw(docs))
    return draw(damaged(body)) if shape == 4 else body


def _bodies(samples: list[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Request bodies: arrays of near-valid events, a bare event, any JSON."""
    events = near_valid(samples)
    return wire(st.lists(events, min_size=1, max_size=3) | events | _json_values)


# -- real samples (ACS_PROTOCOL.md) ---------------------------------------------------------------

PHONE = {"kind": "phoneNumber", "rawId": "4:+14255550123", "phoneNumber": {"value": "+14255550123"}}
ACS_USER = {
    "kind": "communicationUser",
    "rawId": "8:acs:1e5e54e0-7d3c-4c8d-a9e5-52b1f6e1d3a2_00000020-1b2c-3d4e-5f60-718293a4b5c6",
    "communicationUser": {"id": "8:acs:1e5e54e0-7d3c-4c8d-a9e5-52b1f6e1d3a2_00000020"},
}
EVENT_GRID_SAMPLES: list[dict[str, Any]] = [
    {
        "id": "v",
        "eventType": acs_events.VALIDATION_EVENT,
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
    },
    {
        "id": "e1",
        "eventType": acs_events.INCOMING_CALL_EVENT,
        "data": {
            "to": PHONE,
            "from": ACS_USER,
            "serverCallId": "aHR0cHM6Ly9hcGkuZmxpZ2h0cHJveHkuc2t5cGUuY29t",
            "callerDisplayName": "Ada",
            "incomingCallContext": "eyJhbGciOiJub25lIn0.eyJjYyI6IkgyNHNJQUFBIn0.",
            "correlationId": "c3a8e1f0-8a8a-4b4b-9c9c-0d0d0d0d0d0d",
            "customContext": {"voipHeaders": {"x-tenant": "contoso"}},
        },
    },
]
_CALL: dict[str, Any] = {
    "callConnectionId": "421f0b00-9b1c-4e9f-a1b0-5c2d3e4f5a6b",
    "serverCallId": "aHR0cHM",
}
_CALLBACK_DATA: list[tuple[str, dict[str, Any]]] = [
    ("CallConnected", {"resultInformation": {"code": 200, "subCode": 0, "message": ""}}),
    ("CallDisconnected", {}),
    (
        "ParticipantsUpdated",
        {
            "sequenceNumber": 2,
            "participants": [{"identifier": PHONE, "isMuted": False, "isOnHold": False}, ACS_USER],
        },
    ),
    (
        "PlayFailed",
        {"failedPlaySourceIndex": 0, "resultInformation": {"code": 400, "subCode": 8535}},
    ),
    ("MediaStreamingStarted", {"mediaStreamingUpdate": {"contentType": "Audio"}}),
    ("RecordingStateChanged", {"recordingId": "rec-1", "state": "active"}),
]
CALLBACK_SAMPLES: list[dict[str, Any]] = [
    {
        "id": f"ev-{name}",
        "source": "calling/callConnections/421f0b00-9b1c-4e9f-a1b0-5c2d3e4f5a6b",
        "type": f"Microsoft.Communication.{name}",
        "specversion": "1.0",
        "time": "2024-11-15T19:16:12.9250000+00:00",
        "data": _CALL | {"correlationId": "r-1"} | data,
    }
    for name, data in _CALLBACK_DATA
]
MEDIA_SAMPLES: list[dict[str, Any]] = [
    {
        "kind": "AudioMetadata",
        "audioMetadata": {
            "subscriptionId": "s",
            "encoding": "PCM",
            "sampleRate": 16000,
            "channels": 1,
            "length": 640,
        },
    },
    {
        "kind": "AudioData",
        "audioData": {
            "timestamp": "2024-11-15T19:16:12.925Z",
            "participantRawID": "4:+14255550123",
            "data": "AAAAAA==",
            "silent": False,
        },
    },
    {"kind": "AudioData", "audioData": {"data": "", "silent": True}},
    {"kind": "DtmfData", "dtmfData": {"data": "3"}},
    {
        "kind": "TranscriptionMetadata",
        "transcriptionMetadata": {
            "subscriptionId": "s",
            "locale": "en-US",
            "callConnectionId": "c",
            "correlationId": "r",
        },
    },
    {
        "kind": "TranscriptionData",
        "transcriptionData": {
            "text": "Hello everyone.",
            "format": "display",
            "confidence": 0.92,
            "offset": 212483227,
            "duration": 9600000,
            "words": [{"text": "hello", "offset": 212483227, "duration": 2800000}],
            "participantRawID": "4:+14255550123",
            "resultStatus": "Final",
        },
    },
    {"Kind": "AudioData", "AudioData": {"Data": "AAAA"}, "StopAudio": None},
]
HELLO_SAMPLES: list[dict[str, Any]] = [
    {"op": "hello", "token": "t0k3n", "stream": stream, "call_id": "c1"}
    for stream in sorted(stream_protocol.STREAMS)
]


# -- gateway: Event Grid webhook and Call Automation callbacks -------------------------------------


def _within(value: str, max_bytes: int) -> bool:
    return isinstance(value, str) and len(value.encode()) <= max_bytes


def _bounded_identifier(ident: acs_events.Identifier) -> bool:
    return (
        _within(ident.raw_id, acs_events.MAX_RAW_ID_BYTES)
        and ident.raw_id.isprintable()
        and _within(ident.kind, acs_events.MAX_NAME_BYTES)
    )


def _bounded_call(call: acs_events.IncomingCall) -> bool:
    return (
        _within(call.incoming_call_context, acs_events.MAX_CALL_CONTEXT_BYTES)
        and _bounded_identifier(call.caller)
        and _bounded_identifier(call.callee)
        and _within(call.server_call_id, acs_events.MAX_SERVER_CALL_ID_BYTES)
        and _within(call.correlation_id, acs_events.MAX_ID_BYTES)
        and _within(call.caller_display_name, acs_events.MAX_DISPLAY_NAME_BYTES)
        and len(orjson.dumps(call.custom_context)) <= acs_events.MAX_CUSTOM_CONTEXT_BYTES
    )


@PROPERTY
@given(_bodies(EVENT_GRID_SAMPLES))
def test_event_grid_refuses_with_a_known_reason_or_returns_bounded_calls(body: bytes) -> None:
    try:
        post = parse_event_grid(body)
    except BadPayload as exc:
        assert exc.reason in acs_events.REASONS
        return
    if post.validation_code is not None:
        assert _within(post.validation_code, acs_events.MAX_ID_BYTES)
    assert all(_bounded_call(call) for call in post.incoming_calls)


@PROPERTY
@given(_bodies(CALLBACK_SAMPLES))
def test_callbacks_refuse_with_a_known_reason_or_return_bounded_events(body: bytes) -> None:
    try:
        events = parse_callbacks(body).events
    except BadPayload as exc:
        assert exc.reason in acs_events.REASONS
        return
    for event in events:
        assert event.id and _within(event.id, acs_events.MAX_ID_BYTES)
        assert event.call_connection_id
        assert _within(event.call_connection_id, acs_events.MAX_ID_BYTES)
        assert event.type.startswith(acs_events.CALLBACK_TYPE_PREFIX)


@PROPERTY
@given(st.lists(near_valid(CALLBACK_SAMPLES[:1]), min_size=1, max_size=3))
def test_callbacks_accept_any_event_type_under_the_prefix(events: list[dict[str, Any]]) -> None:
    # Unknown event types must be acknowledged, never refused (ACS_PROTOCOL.md).
    for n, event in enumerate(events):
        event.update(id=f"ev-{n}", type=f"Microsoft.Communication.Future{n}", data=dict(_CALL))
    assert [e.name for e in parse_callbacks(orjson.dumps(events)).events] == [
        f"Future{n}" for n in range(len(events))
    ]


# -- actor: ACS media and transcription WebSocket messages ----------------------------------------

_media_docs = near_valid(MEDIA_SAMPLES) | _json_values
_media_raw = (
    wire(_media_docs)
    | _media_docs.map(lambda doc: orjson.dumps(doc).decode())  # WebSocket text arrives as str
    | st.text(max_size=64)  # lone surrogates included: a str the socket layer could hand over
)


@PROPERTY
@given(_media_raw, st.sampled_from([None, 640, 960]))
def test_media_messages_refuse_with_a_known_reason(
    raw: str | bytes, frame_bytes: int | None
) -> None:
    try:
        acs_media.parse_message(raw, frame_bytes=frame_bytes)
    except acs_media.InvalidMessage as exc:
        assert exc.reason in acs_media.REASONS


# -- gateway <-> actor stream framing -------------------------------------------------------------


def _subclasses(cls: type[ProtocolViolation]) -> set[type[ProtocolViolation]]:
    return {cls}.union(*(_subclasses(sub) for sub in cls.__subclasses__()))


# stream_protocol has no REASONS constant; its violation classes are the closed set of reasons.
PROTOCOL_REASONS = frozenset(cls.reason for cls in _subclasses(ProtocolViolation))

_kind_bytes = st.sampled_from([k.value for k in FrameKind]) | st.integers(0, 255)
_frames = st.builds(
    lambda kind, payload: stream_protocol.HEADER.pack(len(payload) + 1) + bytes([kind]) + payload,
    _kind_bytes,
    st.binary(max_size=80) | near_valid(HELLO_SAMPLES).map(orjson.dumps),
)
_streams = st.lists(_frames, max_size=4).map(b"".join) | st.binary(max_size=256)
_streams = _streams | _streams.flatmap(damaged)


def _read_all(data: bytes, cuts: list[int], max_frame_bytes: int) -> list[Frame]:
    """Frames parsed from a stream that delivers ``data`` in pieces."""
    parser = stream_protocol.FrameParser(max_frame_bytes)
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    return [f for start, end in itertools.pairwise(bounds) for f in parser.feed(data[start:end])]


@PROPERTY
@given(_streams, st.lists(st.integers(0, 300), max_size=4), st.integers(1, 128))
def test_frame_parser_yields_bounded_frames_or_a_known_violation(
    data: bytes, cuts: list[int], max_frame_bytes: int
) -> None:
    try:
        frames = _read_all(data, cuts, max_frame_bytes)
    except ProtocolViolation as exc:
        assert exc.reason in PROTOCOL_REASONS
        return
    assert all(len(frame.payload) < max_frame_bytes for frame in frames)


_payloads = (
    near_valid(HELLO_SAMPLES).map(orjson.dumps)
    | _json_values.map(orjson.dumps)
    | st.binary(max_size=128)
)


@PROPERTY
@given(st.sampled_from(list(FrameKind)), _payloads)
def test_hello_and_control_refuse_with_a_known_violation(kind: FrameKind, payload: bytes) -> None:
    frame = Frame(kind, payload)
    try:
        assert isinstance(frame.control(), dict)
    except ProtocolViolation as exc:
        assert exc.reason in PROTOCOL_REASONS
    try:
        hello = stream_protocol.parse_hello(frame)
    except ProtocolViolation as exc:
        assert exc.reason in PROTOCOL_REASONS
        return
    assert hello.stream in stream_protocol.STREAMS
    assert all(isinstance(v, str) for v in (hello.token, hello.call_id))


# -- storage: RTVOICE_* settings ------------------------------------------------------------------

_SECRET = "S3CR3T-"  # marks secret values, which must never appear in a ConfigError
_names = st.sampled_from(sorted(Settings.model_fields)).map(lambda f: ENV_PREFIX + f.upper())
_values = st.sampled_from(
    ["", " ", "0", "-1", "1", "65536", "1e309", "nan", "inf", "true", "no", "pcm24KMono",
     "unmixed", "http://h/", "ftp://h", "a:b", "a b", "None"]
) | st.text(max_size=16)  # fmt: skip


SECRET_KEYS = frozenset(
    ENV_PREFIX + name.upper()
    for name, info in Settings.model_fields.items()
    if "SecretStr" in str(info.annotation)
)


@PROPERTY
@given(
    st.dictionaries(
        _names | st.text(max_size=12).map(lambda s: ENV_PREFIX + s), _values, max_size=8
    ),
    st.dictionaries(st.text(max_size=12), st.text(max_size=8), max_size=3),
)
def test_settings_load_or_refuse_without_leaking_secrets(
    rtvoice: dict[str, str], other: dict[str, str]
) -> None:
    environ = other | rtvoice
    for key in SECRET_KEYS & environ.keys():
        environ[key] = _SECRET + environ[key]
    try:
        load_settings(environ)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("invalid configuration: ")
        assert _SECRET not in message
