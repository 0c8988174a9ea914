"""The call actor's end of the stream protocol: a TCP endpoint, the token handshake, and frames
handed to the call's StreamHandler from the connection's read callback (no task woken per
frame). A warm-pool spare also takes its call here (a ``bind`` as a connection's first frame),
which costs the gateway and the actor a fraction of a Ray actor call."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from actors.stream_link import FlowControlledLink
from actors.stream_protocol import (
    MAX_CONNECTIONS,
    MAX_FRAME_BYTES,
    SOCKET_BUFFER_BYTES,
    BadFrame,
    BindRequest,
    Frame,
    FrameKind,
    FrameParser,
    HandshakeRefused,
    ProtocolViolation,
    encode_control,
    encode_frame,
    parse_bind,
    parse_hello,
)

log = logging.getLogger(__name__)

# Binds the spare to a call (call id, the answer's fields) and returns the call's epoch; raises
# HandshakeRefused with the code the gateway gets back.
Binder = Callable[[str, dict[str, Any]], Awaitable[int]]


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
        return await link.drained()

    def close(self) -> None:
        self._link.transport.close()


class StreamHandler(Protocol):
    @property
    def epoch(self) -> int: ...

    def on_open(self, conn: ServerConnection) -> None: ...

    def on_message(self, conn: ServerConnection, payload: bytes) -> None: ...

    def on_close(self, conn: ServerConnection) -> None: ...

    def on_refused(self, reason: str) -> None: ...


class _ServerLink(FlowControlledLink):
    """One gateway connection on the actor's endpoint: the hello first, then ACS frames."""

    def __init__(self, server: StreamServer) -> None:
        super().__init__()
        self._server = server
        self._parser = FrameParser(server.max_frame_bytes)
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.conn: ServerConnection | None = None  # set once the hello is accepted
        self._binding: asyncio.Task[None] | None = None  # a bind connection carries nothing else
        self._timer = asyncio.get_running_loop().call_later(
            server.handshake_timeout_s, self._refuse, "handshake_timeout"
        )

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
            if self.transport.is_closing() or self._binding is not None:
                return
            if self.conn is None:
                self._first(frame)
            elif frame.kind is FrameKind.ACS:
                handler.on_message(self.conn, frame.payload)

    def _first(self, frame: Frame) -> None:
        """The connection's first frame: a stream's hello, or a spare's bind."""
        server = self._server
        self._timer.cancel()
        try:
            doc = frame.control() if frame.kind is FrameKind.CONTROL else {}
            if doc.get("op") == "bind":
                self._bind(parse_bind(doc))
                return
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

    def _bind(self, request: BindRequest) -> None:
        server = self._server
        if server.binder is None:
            self._refuse("not_spare")
        elif not hmac.compare_digest(request.token.encode(), server.token.encode()):
            self._refuse("bad_token")
        else:
            self._binding = asyncio.get_running_loop().create_task(self._run_bind(request))

    async def _run_bind(self, request: BindRequest) -> None:
        """Not cancelled if the gateway goes: its fallback, a bind through Ray, finds the call
        already taken (binding is idempotent per call)."""
        assert self._server.binder is not None
        try:
            epoch = await self._server.binder(request.call_id, request.incoming)
        except HandshakeRefused as exc:
            self._refuse(exc.code)
            return
        except Exception as exc:
            log.warning("binding a spare failed: %s", type(exc).__name__)
            self._refuse("bind_failed")
            return
        if not self.transport.is_closing():
            self.transport.write(encode_control({"op": "bound", "epoch": epoch}))
            self.transport.close()

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
        self._server.links.discard(self)
        if self.conn is not None:
            self._server.closed(self.conn)
        super().connection_lost(exc)


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
        binder: Binder | None = None,
    ) -> None:
        self.handler = handler
        self.binder = binder  # None: no bind is taken here
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
        self._reached = asyncio.Event()  # set once a gateway connection has opened

    async def wait_idle(self) -> None:
        """Until no gateway connection is open (the end of call reads on until then)."""
        await self._idle.wait()

    async def wait_reached(self) -> None:
        """Until a gateway connection has opened here (at once if one ever has)."""
        await self._reached.wait()

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
        self._reached.set()
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
