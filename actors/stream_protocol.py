"""The gateway <-> call actor stream protocol: framing (4-byte big-endian length, 1 type byte,
payload), the token handshake's messages, and the bind a warm-pool spare takes its call with.
Pure: the actor's end is actors/stream_server.py, the gateway's actors/stream_client.py.

ACS payloads pass through as bytes, never parsed or logged (they carry caller audio and speech);
a framing violation closes only the offending connection, the call and its other connections go
on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import orjson

MAX_FRAME_BYTES: Final[int] = 256 * 1024
HEADER = struct.Struct(">I")
STREAMS: Final[frozenset[str]] = frozenset({"media", "transcription"})
MAX_CONNECTIONS: Final[int] = 8  # per call actor endpoint
# Kernel buffering each way of a stream connection (the gateway's send buffer, the actor's
# receive buffer): about 4 s of 16 kHz media frames wait in the kernel for an actor that
# stopped reading; the gateway sees the rest (``backlog_bytes``) and bounds it (stream_bridge).
SOCKET_BUFFER_BYTES: Final[int] = 64 * 1024
# The gateway's writes wait (drain) only past this: under it, the bridge decides what to drop.
WRITE_HIGH_WATER_BYTES: Final[int] = 1024 * 1024


class FrameKind(IntEnum):
    ACS = 0x01
    CONTROL = 0x02


# Looked up per frame: a dict, not an enum call.
_KINDS: Final[dict[int, FrameKind]] = {kind.value: kind for kind in FrameKind}


class ProtocolViolation(Exception):
    """The byte stream breaks the framing; the connection must be closed. ``reason`` is loggable."""

    reason = "protocol"


class FrameTooLarge(ProtocolViolation):
    reason = "oversized_frame"


class BadFrame(ProtocolViolation):
    reason = "bad_frame"


class HandshakeRefused(Exception):
    """The actor refused the hello (``code``: bad_token, bad_call, bad_hello, ...)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    payload: bytes

    def text(self) -> str:
        return self.payload.decode("utf-8")

    def control(self) -> dict[str, Any]:
        """The payload of a CONTROL frame as a dict, or BadFrame."""
        try:
            doc = orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            raise BadFrame("control frame is not JSON") from None
        if not isinstance(doc, dict):
            raise BadFrame("control frame is not an object")
        return doc


@dataclass(frozen=True, slots=True)
class Hello:
    token: str
    stream: str
    call_id: str


@dataclass(frozen=True, slots=True)
class BindRequest:
    """A spare's first and only frame on a bind connection: take this call (actors/pool.py)."""

    token: str
    call_id: str
    incoming: dict[str, Any]


def encode_frame(kind: FrameKind | int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload) + 1) + bytes((int(kind),)) + payload


def encode_control(message: dict[str, Any]) -> bytes:
    return encode_frame(FrameKind.CONTROL, orjson.dumps(message))


def encode_hello(token: str, call_id: str, stream: str) -> bytes:
    return encode_control({"op": "hello", "token": token, "stream": stream, "call_id": call_id})


def encode_bind(token: str, call_id: str, incoming: dict[str, Any]) -> bytes:
    return encode_control({"op": "bind", "token": token, "call_id": call_id, "incoming": incoming})


def parse_bind(doc: dict[str, Any]) -> BindRequest:
    """A bind request's fields (the frame's ``op`` is "bind"), or BadFrame."""
    token, call_id, incoming = doc.get("token"), doc.get("call_id"), doc.get("incoming")
    if not isinstance(token, str) or not isinstance(call_id, str) or not isinstance(incoming, dict):
        raise BadFrame("malformed bind")
    return BindRequest(token=token, call_id=call_id, incoming=incoming)


def parse_hello(frame: Frame) -> Hello:
    """The gateway's first frame, or BadFrame if it is not a well-formed hello."""
    if frame.kind is not FrameKind.CONTROL:
        raise BadFrame("first frame must be a hello")
    doc = frame.control()
    fields = [doc.get(k) for k in ("token", "stream", "call_id")]
    if doc.get("op") != "hello" or not all(isinstance(f, str) for f in fields):
        raise BadFrame("malformed hello")
    token, stream, call_id = fields
    if stream not in STREAMS:
        raise BadFrame("unknown stream")
    return Hello(token=str(token), stream=str(stream), call_id=str(call_id))


class FrameParser:
    """Incremental framing: bytes as they arrive in, whole frames out (pure).

    Raises FrameTooLarge or BadFrame; after that the stream cannot be resynchronised and the
    connection must be closed.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_frame_bytes = max_frame_bytes

    @property
    def partial(self) -> bool:
        """Bytes of an incomplete frame are waiting for the rest."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if self._buffer:  # the rest of a frame cut short by the last read
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        frames: list[Frame] = []
        start, size = 0, len(data)
        while size - start >= HEADER.size:
            (length,) = HEADER.unpack_from(data, start)
            if length > self._max_frame_bytes:
                raise FrameTooLarge(f"frame of {length} bytes exceeds {self._max_frame_bytes}")
            if length == 0:
                raise BadFrame("empty frame")
            end = start + HEADER.size + length
            if end > size:
                break
            kind = _KINDS.get(data[start + HEADER.size])
            if kind is None:
                raise BadFrame(f"unknown frame type {data[start + HEADER.size]:#x}")
            frames.append(Frame(kind, data[start + HEADER.size + 1 : end]))
            start = end
        if start < size:
            self._buffer += data[start:]
        return frames
