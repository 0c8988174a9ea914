"""One ACS WebSocket bridged to its call actor's stream endpoint, frame by frame, both ways.

Holds only sockets and a bounded buffer of messages that arrive while the actor is being
re-resolved (after a restart); overflow drops the oldest and counts it. That buffer still goes
to the successor when ACS closes the socket meanwhile (the caller hung up). Media an actor that
stopped reading leaves queued past a bound is dropped and counted too. Never touches Redis
per frame: the endpoint is resolved once per (re)connection.

While the call is healthy (the actor connected and reading, nothing buffered, ACS reading),
frames cross in the sockets' read callbacks through the WebSocket's direct lane
(gateway/websocket_protocol.py), with no task woken per frame. Anything else (a reconnect, a
backlog, a message over the limit, ACS not reading) declines the lane, and the frame and those
behind it take the awaited path below, which decides as it always has.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from starlette import status
from starlette.websockets import WebSocket, WebSocketDisconnect
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_result,
    stop_before_delay,
    wait_exponential,
)

from actors.call_state import CallEnded
from actors.stream_client import StreamConnection, open_stream
from actors.stream_protocol import FrameKind, HandshakeRefused
from gateway.metrics import GatewayMetrics
from gateway.websocket_protocol import DirectText
from storage.affinity import Endpoint

log = logging.getLogger(__name__)

BACKLOG_POLL_S = 0.005  # how often a backlog over the limit is looked at while it drains

# resolve(call_id, refresh) -> the actor's current endpoint, None while it is not (yet) reachable;
# raises CallEnded once the call is over.
Resolver = Callable[[str, bool], Awaitable[Endpoint | None]]


class ActorUnavailable(Exception):
    """The call's actor could not be reached within the reconnect deadline."""


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
        # ~2 s of 16 kHz media queued for a stalled actor (after ~4 s in the kernel); under
        # the stream's write high-water mark, so sending media never blocks reading ACS.
        backlog_limit: int = 128 * 1024,
        # How long a backlog over the limit may take to drain before the actor counts as
        # stalled: an actor briefly behind (a burst, a busy CPU) loses nothing.
        stall_s: float = 1.0,
        direct: DirectText | None = None,  # the WebSocket's direct lane, when it has one
        first: str | None = None,  # a message already read from ACS: the actor gets it first
    ) -> None:
        self.websocket = websocket
        self.call_id = call_id
        self.stream = stream
        self._resolve = resolve
        self._metrics = metrics
        # Label lookups resolved once, not per frame.
        self._frames_in = metrics.frames.labels(stream=stream, direction="in")
        self._frames_out = metrics.frames.labels(stream=stream, direction="out")
        self._pending: deque[str] = deque(() if first is None else (first,), maxlen=replay_limit)
        self._max_message_bytes = max_message_bytes
        self._deadline_s = reconnect_deadline_s
        self._backlog_limit = backlog_limit
        self._stall_s = stall_s
        self._stalled = False  # the actor did not drain its backlog in time; media is dropped
        self._conn: StreamConnection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._outbound: asyncio.Task[None] | None = None
        self._direct = direct
        self._forwarding = False  # run() is handling a message: the lane must not overtake it
        self._sending = False  # the outbound pump is sending a frame: likewise
        self.forwarded = 0

    async def connect(self, refresh: bool = False) -> None:
        """Resolve the actor and connect, retrying with backoff until the deadline.

        Waits 0.05 s, 0.1 s, ... up to 1 s between attempts, and gives up (ActorUnavailable)
        rather than sleep past the deadline; CallEnded from the resolver ends it at once.
        """
        attempts = itertools.count()

        async def attempt() -> StreamConnection | None:
            # Every retry re-reads the endpoint: the one cached may be a dead actor's.
            return await self._open(refresh or next(attempts) > 0)

        retrying = AsyncRetrying(
            retry=retry_if_result(lambda conn: conn is None),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            stop=stop_before_delay(self._deadline_s),
        )
        try:
            conn: StreamConnection = await retrying(attempt)  # None is retried, never returned
        except RetryError:
            raise ActorUnavailable("actor unreachable") from None
        self._conn = conn
        # Replay what arrived while disconnected, oldest first.
        while self._pending:
            await conn.send_acs(self._pending.popleft())
        self._outbound = asyncio.create_task(self._pump_outbound(conn))
        if self._direct is not None:
            conn.on_acs = self._send_direct
            self._direct.text_sink = self._take_direct

    async def _open(self, refresh: bool) -> StreamConnection | None:
        """One attempt: the connection, or None if the actor is not reachable (yet)."""
        endpoint = await self._resolve(self.call_id, refresh)
        if endpoint is None:
            return None
        try:
            return await open_stream(
                endpoint.host, endpoint.port, endpoint.token, self.call_id, self.stream
            )
        except (OSError, TimeoutError, HandshakeRefused) as exc:
            log.info("stream connect to actor failed: %s", type(exc).__name__)
            return None

    async def run(self) -> int:
        """Forward until ACS closes the socket; returns the close code the gateway should use."""
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    await self._deliver_pending()
                    return status.WS_1000_NORMAL_CLOSURE
                text = message.get("text")
                if text is None:
                    self._metrics.refuse(self.stream, "binary_frame")
                    continue
                if len(text) > self._max_message_bytes:
                    self._metrics.refuse(self.stream, "oversized")
                    continue
                self._forwarding = True
                try:
                    await self._forward(text)
                finally:
                    self._forwarding = False
        except WebSocketDisconnect:
            await self._deliver_pending()
            return status.WS_1000_NORMAL_CLOSURE
        except CallEnded:
            return status.WS_1000_NORMAL_CLOSURE
        except ActorUnavailable:
            return status.WS_1013_TRY_AGAIN_LATER
        finally:
            await self.close()

    async def _deliver_pending(self) -> None:
        """ACS closed the socket (the caller hung up) while the actor was away: what ACS sent
        meanwhile still goes to the successor, which the reconnect replays it to. The
        reconnect's own deadline bounds the wait; a call already over takes nothing."""
        reconnecting = self._reconnecting
        if reconnecting is None or not self._pending:
            return
        # What ends it: the call over, the actor unreachable, or closing the socket ACS closed.
        with contextlib.suppress(CallEnded, ActorUnavailable, WebSocketDisconnect):
            await reconnecting

    def _take_direct(self, payload: bytes) -> bool:
        """ACS -> actor in the read callback, when nothing is waiting and the actor keeps up."""
        conn = self._conn
        if (
            conn is None
            or self._forwarding
            or self._reconnecting is not None
            or self._pending
            or len(payload) > self._max_message_bytes
            or (self.stream == "media" and conn.backlog_bytes > self._backlog_limit)
            or not conn.write_acs(payload)
        ):
            return False
        self._stalled = False
        self.forwarded += 1
        self._frames_in.inc()
        return True

    def _send_direct(self, payload: bytes) -> bool:
        """Actor -> ACS in the read callback, when ACS is reading."""
        if self._sending or self._direct is None or not self._direct.send_text_now(payload):
            return False
        self._frames_out.inc()
        return True

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
            if self.stream == "media" and not await self._backlog_drains(conn):
                # The actor stopped reading: drop (counted) rather than queue stale audio or
                # stop reading ACS. Transcription is never dropped: it carries the turns.
                self._metrics.frames_dropped.labels(stream=self.stream).inc()
                return
            await conn.send_acs(text)
            self.forwarded += 1
            self._frames_in.inc()
        except (ConnectionError, OSError):
            self._buffer(text)
            self._start_reconnect()

    async def _backlog_drains(self, conn: StreamConnection) -> bool:
        """True when the actor takes media in time: its backlog is under the limit, or falls
        under it within ``stall_s``. While it is stalled, False at once, frame after frame."""
        if conn.backlog_bytes <= self._backlog_limit:
            self._stalled = False
            return True
        if self._stalled:
            return False
        deadline = time.monotonic() + self._stall_s
        while conn.backlog_bytes > self._backlog_limit:
            if time.monotonic() >= deadline:
                self._stalled = True
                return False
            await asyncio.sleep(BACKLOG_POLL_S)
        return True

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
            code = status.WS_1000_NORMAL_CLOSURE if ended else status.WS_1013_TRY_AGAIN_LATER
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
            self._sending = True
            try:
                await self.websocket.send_text(frame.text())
            except (RuntimeError, WebSocketDisconnect, ConnectionError):
                return  # ACS side closed; run() ends the bridge
            finally:
                self._sending = False
            self._frames_out.inc()
        if conn is self._conn:  # the actor went away under us: reconnect to its successor
            self._start_reconnect()

    async def close(self) -> None:
        if self._direct is not None:
            self._direct.text_sink = None
        for task in (self._reconnecting, self._outbound):
            if task is None:
                continue
            task.cancel()  # no-op when done; awaiting also retrieves a failed task's exception
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
