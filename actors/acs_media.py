"""ACS media and transcription WebSocket messages: parse inbound text, build outbound text.

Pure: no I/O. Errors are typed reason codes and never carry the payload (audio and speech are PII).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

MAX_MESSAGE_BYTES: Final[int] = 64 * 1024
# Longer than any real utterance; what goes past it would only inflate the turn, the reply and
# its synthesis.
MAX_TRANSCRIPT_CHARS: Final[int] = 2000
# A DtmfData carries one tone: a key, or a Call Automation tone name (any case, as its enum).
DTMF_KEYS: Final[frozenset[str]] = frozenset("0123456789*#ABCD")
DTMF_TONE_NAMES: Final[frozenset[str]] = frozenset(
    {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    | {"a", "b", "c", "d", "pound", "asterisk"}
)
MAX_DTMF_CHARS: Final[int] = 16
MAX_PARTICIPANT_CHARS: Final[int] = 256  # `8:acs:<guid>_<guid>` is about 90
REASONS: Final[frozenset[str]] = frozenset(
    {
        "invalid_json",
        "unknown_kind",
        "bad_base64",
        "bad_frame_length",
        "bad_metadata",
        "bad_dtmf",
        "bad_participant",
        "oversized",
        "missing_field",
    }
)


class InvalidMessage(ValueError):
    """An inbound message ACS would not send. ``reason`` is one of REASONS, safe to log."""

    def __init__(self, reason: str) -> None:
        assert reason in REASONS, reason
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AudioMetadata:
    subscription_id: str
    encoding: str
    sample_rate: int
    channels: int
    length: int


@dataclass(frozen=True, slots=True)
class AudioData:
    timestamp: str
    participant: str | None
    pcm: bytes
    silent: bool


@dataclass(frozen=True, slots=True)
class DtmfData:
    data: str


@dataclass(frozen=True, slots=True)
class TranscriptionMetadata:
    subscription_id: str
    locale: str
    call_connection_id: str
    correlation_id: str


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    offset: int
    duration: int


@dataclass(frozen=True, slots=True)
class TranscriptionData:
    text: str
    final: bool
    confidence: float | None
    participant: str | None
    offset: int | None = None
    duration: int | None = None
    format: str = "display"
    words: tuple[Word, ...] = field(default_factory=tuple)
    truncated: bool = False  # ``text`` was cut to MAX_TRANSCRIPT_CHARS


AcsMessage = AudioMetadata | AudioData | DtmfData | TranscriptionMetadata | TranscriptionData


def _fold(obj: dict[str, Any]) -> dict[str, Any]:
    """Keys lower-cased: ACS, its samples and SDKs disagree on casing (participantRawID/Id)."""
    return {k.lower(): v for k, v in obj.items() if isinstance(k, str)}


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    body = doc.get(name.lower())
    if not isinstance(body, dict):
        raise InvalidMessage("missing_field")
    return _fold(body)


def _str(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key)
    if isinstance(value, str):
        return value
    if default is not None and value is None:
        return default
    raise InvalidMessage("missing_field")


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) and value else None


def _participant(body: dict[str, Any]) -> str | None:
    """``participantRawID``: it keys a ring buffer and turns, so its size is bounded."""
    value = _opt_str(body, "participantrawid")
    if value is not None and (len(value) > MAX_PARTICIPANT_CHARS or not value.isprintable()):
        raise InvalidMessage("bad_participant")
    return value


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_URL_SAFE: Final[bytes] = bytes.maketrans(b"-_", b"+/")


def _decode_lenient(data: str) -> bytes:
    """The base64 variants the strict decode refuses: unpadded, broken into lines, URL-safe.

    Only for data the strict decode refused (the per-frame path decodes standard base64 once).
    """
    if not data.isascii():
        raise InvalidMessage("bad_base64") from None  # not the strict decode's error as context
    # bytes.split() splits on ASCII whitespace only; translate maps the URL-safe alphabet.
    raw = b"".join(data.encode("ascii").split()).translate(_URL_SAFE)
    try:
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidMessage("bad_base64") from None


def _decode_pcm(data: str, silent: bool, frame_bytes: int | None) -> bytes:
    if not data and silent and frame_bytes:
        return bytes(frame_bytes)  # a silent frame may come without samples
    try:
        pcm = binascii.a2b_base64(data, strict_mode=True)  # validates, in C
    except (binascii.Error, ValueError):
        pcm = _decode_lenient(data)
    if not pcm or len(pcm) % 2 or (frame_bytes is not None and len(pcm) != frame_bytes):
        raise InvalidMessage("bad_frame_length")
    return pcm


def _audio(doc: dict[str, Any], frame_bytes: int | None) -> AudioData:
    body = _section(doc, "audioData")
    silent = body.get("silent") is True
    return AudioData(
        timestamp=_str(body, "timestamp", ""),
        participant=_participant(body),
        pcm=_decode_pcm(_str(body, "data", ""), silent, frame_bytes),
        silent=silent,
    )


def _metadata(
    doc: dict[str, Any], frame_bytes: int | None, sample_rate: int | None
) -> AudioMetadata:
    body = _section(doc, "audioMetadata")
    meta = AudioMetadata(
        subscription_id=_str(body, "subscriptionid", ""),
        encoding=_str(body, "encoding", "PCM"),
        sample_rate=_opt_int(body, "samplerate") or 0,
        channels=_opt_int(body, "channels") or 1,
        length=_opt_int(body, "length") or 0,
    )
    if not _matches_format(meta, frame_bytes, sample_rate):
        raise InvalidMessage("bad_metadata")
    return meta


def _matches_format(meta: AudioMetadata, frame_bytes: int | None, sample_rate: int | None) -> bool:
    """The format negotiated at answer time fixes the frame; a stream may not redeclare it."""
    return (
        meta.encoding.upper() == "PCM"
        and meta.channels == 1
        and (frame_bytes is None or meta.length == frame_bytes)
        and (sample_rate is None or meta.sample_rate == sample_rate)
    )


def _dtmf(doc: dict[str, Any]) -> DtmfData:
    tone = _str(_section(doc, "dtmfData"), "data")
    # Length first: lower-casing would copy a string of any size.
    if len(tone) > MAX_DTMF_CHARS or not (tone in DTMF_KEYS or tone.lower() in DTMF_TONE_NAMES):
        raise InvalidMessage("bad_dtmf")
    return DtmfData(data=tone)


def _transcription(doc: dict[str, Any]) -> TranscriptionData:
    body = _section(doc, "transcriptionData")
    confidence = body.get("confidence")
    words = body.get("words")
    parsed_words: list[Word] = []
    if isinstance(words, list):
        for w in words:
            if isinstance(w, dict):
                fw = _fold(w)
                parsed_words.append(
                    Word(
                        text=_opt_str(fw, "text") or "",
                        offset=_opt_int(fw, "offset") or 0,
                        duration=_opt_int(fw, "duration") or 0,
                    )
                )
    status = _str(body, "resultstatus", "Final")
    text = _str(body, "text")
    return TranscriptionData(
        text=text[:MAX_TRANSCRIPT_CHARS],
        final=status.lower() == "final",
        confidence=float(confidence) if isinstance(confidence, int | float) else None,
        participant=_participant(body),
        offset=_opt_int(body, "offset"),
        duration=_opt_int(body, "duration"),
        format=_str(body, "format", "display"),
        words=tuple(parsed_words),
        truncated=len(text) > MAX_TRANSCRIPT_CHARS,
    )


def _transcription_metadata(doc: dict[str, Any]) -> TranscriptionMetadata:
    body = _section(doc, "transcriptionMetadata")
    return TranscriptionMetadata(
        subscription_id=_str(body, "subscriptionid", ""),
        locale=_str(body, "locale", ""),
        call_connection_id=_str(body, "callconnectionid", ""),
        correlation_id=_str(body, "correlationid", ""),
    )


def parse_message(
    raw: str | bytes,
    *,
    frame_bytes: int | None = None,
    sample_rate: int | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> AcsMessage:
    """Parse one inbound ACS media or transcription WebSocket message.

    ``frame_bytes``: the exact PCM length an AudioData frame must have, and the ``length`` an
    AudioMetadata must declare (None: any even length). ``sample_rate``: the ``sampleRate`` an
    AudioMetadata must declare (None: any).
    """
    if len(raw) > max_bytes:
        raise InvalidMessage("oversized")
    try:
        loaded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidMessage("invalid_json") from None
    if not isinstance(loaded, dict):
        raise InvalidMessage("invalid_json")
    doc = _fold(loaded)
    kind = doc.get("kind")
    if not isinstance(kind, str):
        raise InvalidMessage("missing_field")
    match kind.lower():
        case "audiodata":
            return _audio(doc, frame_bytes)
        case "audiometadata":
            return _metadata(doc, frame_bytes, sample_rate)
        case "dtmfdata":
            return _dtmf(doc)
        case "transcriptiondata":
            return _transcription(doc)
        case "transcriptionmetadata":
            return _transcription_metadata(doc)
    raise InvalidMessage("unknown_kind")


def outbound_audio(pcm: bytes) -> str:
    """One outbound AudioData message (the PascalCase form of the ACS docs)."""
    data = base64.b64encode(pcm).decode("ascii")
    message = {"Kind": "AudioData", "AudioData": {"Data": data}, "StopAudio": None}
    return orjson.dumps(message).decode()


def stop_audio() -> str:
    """StopAudio: ACS flushes the audio it has queued for playback (barge-in)."""
    return orjson.dumps({"Kind": "StopAudio", "AudioData": None, "StopAudio": {}}).decode()
