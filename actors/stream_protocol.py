"""Gateway <-> call actor stream framing: 4-byte big-endian length, 1 type byte, payload.

Framing and handshake messages are pure; the client helpers at the end (``open_stream``) are the
only I/O here. Payloads are never logged (they carry caller audio and speech).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import orjson

MAX_FRAME_BYTES: Final[int] = 256 * 1024
HEADER = struct.Struct(">I")
STREAMS: Final[frozenset[str]] = frozenset({"media", "transcription"})


class FrameKind(IntEnum):
    ACS = 0x01
    CONTROL = 0x02


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


def encode_frame(kind: FrameKind | int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload) + 1) + bytes((int(kind),)) + payload


def encode_control(message: dict[str, Any]) -> bytes:
    return encode_frame(FrameKind.CONTROL, orjson.dumps(message))


def encode_hello(token: str, call_id: str, stream: str) -> bytes:
    return encode_control({"op": "hello", "token": token, "stream": stream, "call_id": call_id})


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


async def read_frame(
    reader: asyncio.StreamReader, max_frame_bytes: int = MAX_FRAME_BYTES
) -> Frame | None:
    """One frame from ``reader``; None on a clean EOF between frames."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise BadFrame("truncated header") from None
        return None
    (length,) = HEADER.unpack(header)
    if length > max_frame_bytes:
        raise FrameTooLarge(f"frame of {length} bytes exceeds {max_frame_bytes}")
    if length == 0:
        raise BadFrame("empty frame")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise BadFrame("truncated frame") from None
    try:
        kind = FrameKind(body[0])
    except ValueError:
        raise BadFrame(f"unknown frame type {body[0]:#x}") from None
    return Frame(kind, body[1:])


class StreamConnection:
    """The gateway's end of one (call, stream) connection to a call actor."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        epoch: int,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.epoch = epoch
        self.max_frame_bytes = max_frame_bytes

    async def send_acs(self, text: str | bytes) -> None:
        """Forward one raw ACS WebSocket text message to the actor."""
        payload = text.encode("utf-8") if isinstance(text, str) else text
        self._writer.write(encode_frame(FrameKind.ACS, payload))
        await self._writer.drain()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (already framed); for tools and protocol tests."""
        self._writer.write(data)
        await self._writer.drain()

    async def recv(self) -> Frame | None:
        """The next frame from the actor (outbound ACS audio or CONTROL); None at EOF."""
        try:
            return await read_frame(self._reader, self.max_frame_bytes)
        except (ConnectionError, BadFrame):
            return None

    async def close(self, linger_s: float = 1.0) -> None:
        """Half-close, then let the actor close its side (at most ``linger_s``).

        Closing outright while the actor's outbound audio sits unread here would make the
        kernel reset the connection, and the actor would lose inbound frames it had not read.
        """
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            if self._writer.can_write_eof():
                self._writer.write_eof()
            async with asyncio.timeout(linger_s):
                while await self._reader.read(64 * 1024):
                    pass  # the actor's last outbound audio: nobody is listening any more
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):  # the peer already went away
            await self._writer.wait_closed()

    async def __aenter__(self) -> StreamConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_stream(
    host: str,
    port: int,
    token: str,
    call_id: str,
    stream: str,
    *,
    timeout: float = 5.0,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> StreamConnection:
    """Connect to a call actor's stream endpoint and complete the handshake.

    Raises HandshakeRefused with the actor's error code, ConnectionError/OSError if unreachable,
    TimeoutError if the actor does not answer within ``timeout``.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {sorted(STREAMS)}")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(encode_hello(token, call_id, stream))
        await writer.drain()
        frame = await asyncio.wait_for(read_frame(reader, max_frame_bytes), timeout)
        if frame is None:
            raise HandshakeRefused("closed")
        answer = frame.control()
        if answer.get("op") != "ready":
            raise HandshakeRefused(str(answer.get("code", "refused")))
        epoch = answer.get("epoch")
        return StreamConnection(
            reader,
            writer,
            epoch=epoch if isinstance(epoch, int) else 0,
            max_frame_bytes=max_frame_bytes,
        )
    except BaseException:
        writer.close()
        raise
