"""One ACS WebSocket bridged to its call actor's stream endpoint, frame by frame, both ways.

Holds only sockets and a bounded buffer of messages that arrive while the actor is being
re-resolved (after a restart); overflow drops the oldest and counts it. Never touches Redis
per frame: the endpoint is resolved once per (re)connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.stream_protocol import FrameKind, HandshakeRefused, StreamConnection, open_stream
from gateway import status
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    token: str
    epoch: int


# resolve(call_id, refresh) -> the actor's current endpoint, None while it is not (yet) reachable;
# raises CallEnded once the call is over.
Resolver = Callable[[str, bool], Awaitable[Endpoint | None]]


class ActorUnavailable(Exception):
    """The call's actor could not be reached within the reconnect deadline."""


class CallEnded(Exception):
    """The call is over (or was never known): the socket should close normally."""


class StreamBridge:
    def __init__(
        self,
        websocket: WebSocket,
        call_id: str,
        stream: str,
        resolve: Resolver,
        metrics: GatewayMetrics,
        *,
        replay_limit: int = 250,
        max_message_bytes: int = 64 * 1024,
        reconnect_deadline_s: float = 30.0,
    ) -> None:
        self.websocket = websocket
        self.call_id = call_id
        self.stream = stream
        self._resolve = resolve
        self._metrics = metrics
        # Label lookups resolved once, not per frame.
        self._frames_in = metrics.frames.labels(stream=stream, direction="in")
        self._frames_out = metrics.frames.labels(stream=stream, direction="out")
        self._pending: deque[str] = deque(maxlen=replay_limit)
        self._max_message_bytes = max_message_bytes
        self._deadline_s = reconnect_deadline_s
        self._conn: StreamConnection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._outbound: asyncio.Task[None] | None = None
        self.forwarded = 0

    async def connect(self, refresh: bool = False) -> None:
        """Resolve the actor and connect, retrying with backoff until the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline_s
        delay = 0.05
        while True:
            endpoint = await self._resolve(self.call_id, refresh)
            if endpoint is not None:
                try:
                    self._conn = await open_stream(
                        endpoint.host, endpoint.port, endpoint.token, self.call_id, self.stream
                    )
                    break
                except (OSError, TimeoutError, HandshakeRefused) as exc:
                    log.info("stream connect to actor failed: %s", type(exc).__name__)
            if loop.time() + delay > deadline:
                raise ActorUnavailable("actor unreachable")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            refresh = True
        # Replay what arrived while disconnected, oldest first.
        while self._pending:
            await self._conn.send_acs(self._pending.popleft())
        self._outbound = asyncio.create_task(self._pump_outbound(self._conn))

    async def run(self) -> int:
        """Forward until ACS closes the socket; returns the close code the gateway should use."""
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return status.WS_NORMAL_CLOSURE
                text = message.get("text")
                if text is None:
                    self._metrics.refuse(self.stream, "binary_frame")
                    continue
                if len(text) > self._max_message_bytes:
                    self._metrics.refuse(self.stream, "oversized")
                    continue
                await self._forward(text)
        except WebSocketDisconnect:
            return status.WS_NORMAL_CLOSURE
        except CallEnded:
            return status.WS_NORMAL_CLOSURE
        except ActorUnavailable:
            return status.WS_TRY_AGAIN_LATER
        finally:
            await self.close()

    async def _forward(self, text: str) -> None:
        if self._reconnecting is not None:
            if self._reconnecting.done():
                self._reconnecting.result()  # raises ActorUnavailable if it gave up
                self._reconnecting = None
            else:
                self._buffer(text)
                return
        conn = self._conn
        if conn is None:
            self._buffer(text)
            return
        try:
            await conn.send_acs(text)
            self.forwarded += 1
            self._frames_in.inc()
        except (ConnectionError, OSError):
            self._buffer(text)
            self._start_reconnect()

    def _buffer(self, text: str) -> None:
        if len(self._pending) == self._pending.maxlen:
            self._metrics.frames_dropped.labels(stream=self.stream).inc()
        self._pending.append(text)

    def _start_reconnect(self) -> None:
        if self._reconnecting is not None and not self._reconnecting.done():
            return
        self._metrics.reconnects.labels(stream=self.stream).inc()
        self._conn = None
        self._reconnecting = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self.connect(refresh=True)
        except (CallEnded, ActorUnavailable) as exc:
            ended = isinstance(exc, CallEnded)
            code = status.WS_NORMAL_CLOSURE if ended else status.WS_TRY_AGAIN_LATER
            with contextlib.suppress(RuntimeError, ConnectionError):
                await self.websocket.close(code)
            raise

    async def _pump_outbound(self, conn: StreamConnection) -> None:
        """Actor -> ACS: outbound audio and StopAudio, sent as text on the same WebSocket."""
        while True:
            frame = await conn.recv()
            if frame is None:
                break
            if frame.kind is not FrameKind.ACS:
                continue
            try:
                await self.websocket.send_text(frame.text())
            except (RuntimeError, WebSocketDisconnect, ConnectionError):
                return  # ACS side closed; run() ends the bridge
            self._frames_out.inc()
        if conn is self._conn:  # the actor went away under us: reconnect to its successor
            self._start_reconnect()

    async def close(self) -> None:
        for task in (self._reconnecting, self._outbound):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
