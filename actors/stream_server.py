"""A call actor's stream endpoint: asyncio TCP server, token handshake, per-connection frame loop.

Hands every ACS message to its handler as bytes and never parses or logs payloads itself. A
framing violation closes only the offending connection; the call and other connections go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Protocol

from actors.stream_protocol import (
    MAX_FRAME_BYTES,
    FrameKind,
    ProtocolViolation,
    encode_control,
    encode_frame,
    parse_hello,
    read_frame,
)

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8


class ServerConnection:
    """The actor's end of one gateway connection, for one stream of one call."""

    def __init__(self, stream: str, writer: asyncio.StreamWriter) -> None:
        self.stream = stream
        self._writer = writer

    @property
    def open(self) -> bool:
        return not self._writer.is_closing()

    async def send_acs(self, text: str) -> bool:
        """Write one outbound ACS message; False if the connection is gone."""
        if self._writer.is_closing():
            return False
        try:
            self._writer.write(encode_frame(FrameKind.ACS, text.encode("utf-8")))
            await self._writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    def close(self) -> None:
        self._writer.close()


class StreamHandler(Protocol):
    @property
    def epoch(self) -> int: ...

    def on_open(self, conn: ServerConnection) -> None: ...

    def on_message(self, conn: ServerConnection, payload: bytes) -> None: ...

    def on_close(self, conn: ServerConnection) -> None: ...

    def on_refused(self, reason: str) -> None: ...


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
        self._handler = handler
        self.call_id = call_id
        self._token = token
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[ServerConnection] = set()

    async def start(self) -> int:
        """Listen; returns the bound port (an ephemeral one when ``port`` was 0)."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refuse(self, writer: asyncio.StreamWriter, code: str) -> None:
        self._handler.on_refused(code)
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(encode_control({"op": "error", "code": code}))
            await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                first = await asyncio.wait_for(
                    read_frame(reader, self.max_frame_bytes), self.handshake_timeout_s
                )
                if first is None:
                    writer.close()
                    return
                hello = parse_hello(first)
            except TimeoutError:
                await self._refuse(writer, "handshake_timeout")
                return
            except ProtocolViolation:
                await self._refuse(writer, "bad_hello")
                return
            if not hmac.compare_digest(hello.token.encode(), self._token.encode()):
                await self._refuse(writer, "bad_token")
                return
            if hello.call_id != self.call_id:
                await self._refuse(writer, "bad_call")
                return
            if len(self.connections) >= self.max_connections:
                await self._refuse(writer, "busy")
                return
            writer.write(encode_control({"op": "ready", "epoch": self._handler.epoch}))
            await writer.drain()
            conn = ServerConnection(hello.stream, writer)
            self.connections.add(conn)
            self._handler.on_open(conn)
            try:
                await self._loop(reader, conn)
            finally:
                self.connections.discard(conn)
                conn.close()
                self._handler.on_close(conn)
        except (ConnectionError, OSError):
            writer.close()

    async def _loop(self, reader: asyncio.StreamReader, conn: ServerConnection) -> None:
        while True:
            try:
                frame = await read_frame(reader, self.max_frame_bytes)
            except ProtocolViolation as exc:
                # The stream cannot be resynchronised after a bad length: drop this connection.
                self._handler.on_refused(exc.reason)
                return
            if frame is None:
                return
            if frame.kind is FrameKind.ACS:
                self._handler.on_message(conn, frame.payload)
