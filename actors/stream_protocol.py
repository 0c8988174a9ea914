"""The gateway <-> call actor stream protocol, both ends: framing (4-byte big-endian length,
1 type byte, payload), the token handshake, the actor's server and the gateway's client.

Framing and handshake messages are pure; ``StreamServer`` (the call actor's endpoint) and
``open_stream`` (the gateway's connection to it) are the only I/O. ACS payloads pass through as
bytes, never parsed or logged (they carry caller audio and speech); a framing violation closes
only the offending connection, the call and its other connections go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, Protocol, cast

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
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        start, size = 0, len(buffer)
        while size - start >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, start)
            if length > self._max_frame_bytes:
                raise FrameTooLarge(f"frame of {length} bytes exceeds {self._max_frame_bytes}")
            if length == 0:
                raise BadFrame("empty frame")
            end = start + HEADER.size + length
            if end > size:
                break
            try:
                kind = FrameKind(buffer[start + HEADER.size])
            except ValueError:
                raise BadFrame(f"unknown frame type {buffer[start + HEADER.size]:#x}") from None
            frames.append(Frame(kind, bytes(buffer[start + HEADER.size + 1 : end])))
            start = end
        del buffer[:start]
        return frames


# The call actor's end: an asyncio TCP server, the token handshake, frames handed to the
# handler from the connection's read callback (no task woken per frame).


class ServerConnection:
    """The actor's end of one gateway connection, for one stream of one call."""

    def __init__(self, stream: str, link: _ServerLink) -> None:
        self.stream = stream
        self._link = link

    @property
    def open(self) -> bool:
        return not self._link.transport.is_closing()

    async def send_acs(self, text: str) -> bool:
        """Write one outbound ACS message; False if the connection is gone."""
        link = self._link
        if link.transport.is_closing():
            return False
        link.transport.write(encode_frame(FrameKind.ACS, text.encode("utf-8")))
        await link.writable.wait()
        return not link.lost.done()

    def close(self) -> None:
        self._link.transport.close()


class StreamHandler(Protocol):
    @property
    def epoch(self) -> int: ...

    def on_open(self, conn: ServerConnection) -> None: ...

    def on_message(self, conn: ServerConnection, payload: bytes) -> None: ...

    def on_close(self, conn: ServerConnection) -> None: ...

    def on_refused(self, reason: str) -> None: ...


class _ServerLink(asyncio.Protocol):
    """One gateway connection on the actor's endpoint: the hello first, then ACS frames."""

    def __init__(self, server: StreamServer) -> None:
        self._server = server
        self._parser = FrameParser(server.max_frame_bytes)
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.conn: ServerConnection | None = None  # set once the hello is accepted
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self._timer = loop.call_later(server.handshake_timeout_s, self._refuse, "handshake_timeout")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server.links.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._parser.feed(data)
        except ProtocolViolation as exc:
            self._violation(exc.reason)
            return
        handler = self._server.handler
        for frame in frames:
            if self.transport.is_closing():
                return
            if self.conn is None:
                self._hello(frame)
            elif frame.kind is FrameKind.ACS:
                handler.on_message(self.conn, frame.payload)

    def _hello(self, frame: Frame) -> None:
        server = self._server
        self._timer.cancel()
        try:
            hello = parse_hello(frame)
        except ProtocolViolation:
            self._refuse("bad_hello")
            return
        if not hmac.compare_digest(hello.token.encode(), server.token.encode()):
            self._refuse("bad_token")
        elif hello.call_id != server.call_id:
            self._refuse("bad_call")
        elif len(server.connections) >= server.max_connections:
            self._refuse("busy")
        else:
            self.transport.write(encode_control({"op": "ready", "epoch": server.handler.epoch}))
            self.conn = ServerConnection(hello.stream, self)
            server.opened(self.conn)

    def _violation(self, reason: str) -> None:
        # The stream cannot be resynchronised after a bad length: drop this connection.
        if self.conn is None:
            self._refuse("bad_hello")
        else:
            self._server.handler.on_refused(reason)
            self.transport.close()

    def _refuse(self, code: str) -> None:
        self._server.handler.on_refused(code)
        if not self.transport.is_closing():
            self.transport.write(encode_control({"op": "error", "code": code}))
            self.transport.close()  # after the error frame is written

    def eof_received(self) -> bool:
        if self._parser.partial:
            self._violation(BadFrame.reason)  # a frame cut short
        return False  # the gateway is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self.writable.set()
        self._server.links.discard(self)
        if self.conn is not None:
            self._server.closed(self.conn)
        self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class StreamServer:
    def __init__(
        self,
        handler: StreamHandler,
        *,
        call_id: str,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        handshake_timeout_s: float = 5.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.handler = handler
        self.call_id = call_id
        self.token = token
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self.links: set[_ServerLink] = set()
        self.connections: set[ServerConnection] = set()
        self._idle = asyncio.Event()  # set while no gateway connection is open
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until no gateway connection is open (the end of call reads on until then)."""
        await self._idle.wait()

    async def start(self) -> int:
        """Listen; returns the bound port (an ephemeral one when ``port`` was 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerLink(self), self.host, self.port)
        for sock in self._server.sockets:  # accepted connections inherit it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def opened(self, conn: ServerConnection) -> None:
        self.connections.add(conn)
        self._idle.clear()
        self.handler.on_open(conn)

    def closed(self, conn: ServerConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._idle.set()
        self.handler.on_close(conn)

    async def close(self) -> None:
        """Stop listening and close every connection; returns once each is gone (on_close)."""
        if self._server is not None:
            self._server.close()
        links = list(self.links)
        for link in links:
            link.transport.close()
        if links:
            await asyncio.wait([link.lost for link in links], timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None


# The gateway's end: a transport protocol, so a frame can be handed on from the event loop's
# read callback (``on_acs``) without waking a task per frame.


class _ActorLink(asyncio.Protocol):
    """The gateway's transport protocol on one actor connection: frames parsed as they arrive."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.parser = FrameParser(max_frame_bytes)
        self.frames: deque[Frame] = deque()
        self.transport: asyncio.Transport | None = None
        # Takes an outbound ACS payload at once; False leaves it to ``recv`` (in order).
        self.on_acs: Callable[[bytes], bool] | None = None
        self.ended = False  # EOF, a framing violation, or the connection lost
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.parser.feed(data)
        except ProtocolViolation:
            frames = []
            self._end()
            if self.transport is not None:
                self.transport.abort()
        on_acs = self.on_acs
        for frame in frames:
            # Handed on only while nothing waits in ``frames``: outbound audio stays in order.
            if (
                on_acs is None
                or self.frames
                or frame.kind is not FrameKind.ACS
                or not on_acs(frame.payload)
            ):
                self.frames.append(frame)
        if self.frames:
            self._wake()

    def eof_received(self) -> bool:
        self._end()
        return True  # keep our side open: the gateway may still be writing

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self._writable.set()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_frame(self) -> Frame | None:
        while not self.frames:
            if self.ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.frames.popleft()

    async def drain(self) -> None:
        if self.ended and self.lost.done():
            raise ConnectionResetError("connection lost")
        await self._writable.wait()


class StreamConnection:
    """The gateway's end of one (call, stream) connection to a call actor."""

    def __init__(self, link: _ActorLink, *, epoch: int) -> None:
        assert link.transport is not None
        self._link = link
        self._transport = link.transport
        self.epoch = epoch

    @property
    def on_acs(self) -> Callable[[bytes], bool] | None:
        return self._link.on_acs

    @on_acs.setter
    def on_acs(self, take: Callable[[bytes], bool] | None) -> None:
        """Outbound ACS payloads go to ``take`` as they arrive while it returns True, and to
        ``recv`` otherwise (and for every payload behind one it left)."""
        self._link.on_acs = take

    def write_acs(self, payload: bytes) -> bool:
        """Forward one raw ACS message now, without waiting; False if the connection is gone."""
        if self._transport.is_closing():
            return False
        self._transport.write(encode_frame(FrameKind.ACS, payload))
        return True

    async def send_acs(self, text: str | bytes) -> None:
        """Forward one raw ACS WebSocket text message to the actor."""
        payload = text.encode("utf-8") if isinstance(text, str) else text
        await self.send_raw(encode_frame(FrameKind.ACS, payload))

    @property
    def backlog_bytes(self) -> int:
        """Bytes written here that the kernel could not take: the actor is not reading."""
        return self._transport.get_write_buffer_size()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (already framed); for tools and protocol tests."""
        if self._transport.is_closing():
            raise ConnectionResetError("connection closed")
        self._transport.write(data)
        await self._link.drain()

    async def recv(self) -> Frame | None:
        """The next frame from the actor (outbound ACS audio or CONTROL); None at EOF."""
        return await self._link.next_frame()

    async def close(self, linger_s: float = 1.0) -> None:
        """Half-close, then let the actor close its side (at most ``linger_s``).

        Closing outright while the actor's outbound audio sits unread here would make the
        kernel reset the connection, and the actor would lose inbound frames it had not read.
        """
        link = self._link
        link.on_acs = None
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            if self._transport.can_write_eof() and not self._transport.is_closing():
                self._transport.write_eof()
            async with asyncio.timeout(linger_s):
                while await link.next_frame() is not None:
                    pass  # the actor's last outbound audio: nobody is listening any more
        self._transport.close()
        await link.lost

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
    loop = asyncio.get_running_loop()
    transport, link = await asyncio.wait_for(
        loop.create_connection(lambda: _ActorLink(max_frame_bytes), host, port), timeout
    )
    try:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        transport.write(encode_hello(token, call_id, stream))
        frame = await asyncio.wait_for(link.next_frame(), timeout)
        if frame is None:
            raise HandshakeRefused("closed")
        answer = frame.control()
        if answer.get("op") != "ready":
            raise HandshakeRefused(str(answer.get("code", "refused")))
        epoch = answer.get("epoch")
        return StreamConnection(link, epoch=epoch if isinstance(epoch, int) else 0)
    except BaseException:
        transport.close()
        raise
