"""The gateway's end of the stream protocol: ``open_stream`` connects to a call actor's endpoint
and completes the handshake; the ``StreamConnection`` it returns forwards ACS messages and hands
the actor's outbound frames on from the read callback (``on_acs``) or to ``recv``.
``bind_spare`` hands a warm-pool spare its call over one short connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from actors.stream_link import FlowControlledLink
from actors.stream_protocol import (
    MAX_FRAME_BYTES,
    SOCKET_BUFFER_BYTES,
    STREAMS,
    WRITE_HIGH_WATER_BYTES,
    Frame,
    FrameKind,
    FrameParser,
    HandshakeRefused,
    ProtocolViolation,
    encode_bind,
    encode_frame,
    encode_hello,
)


class _ActorLink(FlowControlledLink):
    """The gateway's transport protocol on one actor connection: frames parsed as they arrive."""

    def __init__(self, max_frame_bytes: int) -> None:
        super().__init__()
        self.parser = FrameParser(max_frame_bytes)
        self.frames: deque[Frame] = deque()
        self.transport: asyncio.Transport | None = None
        # Takes an outbound ACS payload at once; False leaves it to ``recv`` (in order).
        self.on_acs: Callable[[bytes], bool] | None = None
        self.ended = False  # EOF, a framing violation, or the connection lost
        self._waiter: asyncio.Future[None] | None = None

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
        super().connection_lost(exc)

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
        """As ``drained``, raising ConnectionResetError once the connection is lost (an EOF
        alone still lets the gateway write)."""
        if not await self.drained():
            raise ConnectionResetError("connection lost")


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
    link, answer = await _exchange(
        host, port, encode_hello(token, call_id, stream), "ready", timeout, max_frame_bytes
    )
    epoch = answer.get("epoch")
    return StreamConnection(link, epoch=epoch if isinstance(epoch, int) else 0)


async def bind_spare(
    host: str,
    port: int,
    token: str,
    call_id: str,
    incoming: dict[str, Any],
    *,
    timeout: float = 5.0,
) -> int:
    """Bind the spare listening at ``host:port`` to ``call_id``; returns the call's epoch once
    the actor holds the call. Raises as ``open_stream`` (HandshakeRefused "call_ended": the
    call is over)."""
    link, answer = await _exchange(
        host, port, encode_bind(token, call_id, incoming), "bound", timeout, MAX_FRAME_BYTES
    )
    assert link.transport is not None
    link.transport.close()
    epoch = answer.get("epoch")
    if not isinstance(epoch, int):
        raise HandshakeRefused("bad_reply")
    return epoch


async def _exchange(
    host: str, port: int, first: bytes, expect: str, timeout: float, max_frame_bytes: int
) -> tuple[_ActorLink, dict[str, Any]]:
    """Connect, send the first frame and read the actor's answer, which must be ``expect``."""
    loop = asyncio.get_running_loop()
    transport, link = await asyncio.wait_for(
        loop.create_connection(lambda: _ActorLink(max_frame_bytes), host, port), timeout
    )
    try:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        transport.write(first)
        frame = await asyncio.wait_for(link.next_frame(), timeout)
        if frame is None:
            raise HandshakeRefused("closed")
        answer = frame.control()
        if answer.get("op") != expect:
            raise HandshakeRefused(str(answer.get("code", "refused")))
        return link, answer
    except BaseException:
        transport.close()
        raise
