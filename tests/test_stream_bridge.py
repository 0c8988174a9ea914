"""StreamBridge: one ACS WebSocket (a test double) bridged to a real StreamServer on loopback."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from starlette.websockets import WebSocket

from actors.call_state import CallEnded
from actors.stream_server import StreamServer
from gateway.metrics import GatewayMetrics
from gateway.stream_bridge import ActorUnavailable, StreamBridge
from storage.affinity import Endpoint
from tests.helpers import Recorder, eventually

NORMAL_CLOSURE = 1000
TRY_AGAIN_LATER = 1013
STREAM = "media"


class FakeWebSocket:
    """The ASGI WebSocket as StreamBridge uses it: receive(), send_text(), close()."""

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[str] = []
        self.closed: list[int] = []

    # what ACS sends
    def text(self, *texts: str) -> None:
        for text in texts:
            self.inbound.put_nowait({"type": "websocket.receive", "text": text})

    def binary(self, data: bytes) -> None:
        self.inbound.put_nowait({"type": "websocket.receive", "bytes": data})

    def disconnect(self, code: int = NORMAL_CLOSURE) -> None:
        self.inbound.put_nowait({"type": "websocket.disconnect", "code": code})

    def drained(self) -> bool:
        """The bridge has taken (and, with no await in between, handled) every message."""
        return self.inbound.empty()

    # the interface StreamBridge calls
    async def receive(self) -> dict[str, Any]:
        return await self.inbound.get()

    async def send_text(self, data: str) -> None:
        if self.closed:
            raise RuntimeError('Cannot call "send" once a close message has been sent.')
        self.sent.append(data)

    async def close(self, code: int = NORMAL_CLOSURE, reason: str | None = None) -> None:
        self.closed.append(code)


class LaneWebSocket(FakeWebSocket):
    """A FakeWebSocket with the direct lane (gateway/websocket_protocol.py DirectText): a text
    goes to ``text_sink`` when it takes it and nothing waits in ``inbound``, as the protocol
    decides; ``send_text_now`` sends while ``writable``."""

    def __init__(self) -> None:
        super().__init__()
        self.text_sink: Callable[[bytes], bool] | None = None
        self.writable = True
        self.taken = 0
        self.sent_now = 0

    def text(self, *texts: str) -> None:
        for text in texts:
            sink = self.text_sink
            if sink is not None and self.inbound.empty() and sink(text.encode()):
                self.taken += 1
            else:
                super().text(text)

    def send_text_now(self, payload: bytes) -> bool:
        if not self.writable or self.closed:
            return False
        self.sent.append(payload.decode())
        self.sent_now += 1
        return True


class Resolver:
    """The bridge's resolver: returns ``endpoint``; can be held (``hold``) or end the call."""

    def __init__(self, endpoint: Endpoint | None) -> None:
        self.endpoint = endpoint
        self.calls: list[bool] = []  # the ``refresh`` flag of each call
        self.ended = False
        self._gate = asyncio.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def __call__(self, call_id: str, refresh: bool) -> Endpoint | None:
        self.calls.append(refresh)
        await self._gate.wait()
        if self.ended:
            raise CallEnded(call_id)
        return self.endpoint


class Actor:
    """The actor side: a real StreamServer with a recording handler."""

    def __init__(self, call_id: str, epoch: int) -> None:
        self.handler = Recorder()
        self.handler.epoch = epoch
        self.token = uuid.uuid4().hex
        self.server = StreamServer(self.handler, call_id=call_id, token=self.token)
        self.epoch = epoch
        self.endpoint: Endpoint | None = None

    async def start(self) -> Actor:
        port = await self.server.start()
        self.endpoint = Endpoint("127.0.0.1", port, self.token, self.epoch)
        return self

    def texts(self) -> list[str]:
        return [payload.decode() for _, payload in self.handler.messages]


def counter(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"rtvoice_gateway_{name}_total", labels)
    return value or 0.0


@pytest.fixture
def call_id() -> str:
    return f"call-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics("gw-test")


@pytest.fixture
async def actors(call_id: str) -> AsyncIterator[list[Actor]]:
    """Two actor endpoints for the call: the first one and the one that replaces it."""
    started = [await Actor(call_id, epoch).start() for epoch in (1, 2)]
    yield started
    for actor in started:
        await actor.server.close()


@asynccontextmanager
async def running(bridge: StreamBridge) -> AsyncIterator[asyncio.Task[int]]:
    """Connect and run the bridge; on exit ACS disconnects if the bridge is still running."""
    await bridge.connect()
    task = asyncio.create_task(bridge.run())
    try:
        yield task
    finally:
        if not task.done():
            cast(FakeWebSocket, bridge.websocket).disconnect()
        await asyncio.wait_for(task, 10)


def make_bridge(
    ws: FakeWebSocket,
    call_id: str,
    resolver: Resolver,
    metrics: GatewayMetrics,
    **options: Any,
) -> StreamBridge:
    return StreamBridge(cast(WebSocket, ws), call_id, STREAM, resolver, metrics, **options)


async def go_away_and_hold(actor: Actor, resolver: Resolver, successor: Actor) -> None:
    """The actor's endpoint closes mid-stream; the bridge asks again and waits in the resolver."""
    resolver.endpoint = successor.endpoint
    resolver.hold()
    asked = len(resolver.calls)
    await actor.server.close()
    await eventually(lambda: len(resolver.calls) > asked, 10)
    assert resolver.calls[-1] is True  # the re-resolution bypasses the router's cache


async def test_frames_are_forwarded_in_order_and_outbound_sent_back(
    call_id: str, metrics: GatewayMetrics, actors: list[Actor]
) -> None:
    actor = actors[0]
    ws, resolver = FakeWebSocket(), Resolver(actor.endpoint)
    bridge = make_bridge(ws, call_id, resolver, metrics)
    frames = [f'{{"kind":"AudioData","seq":{i}}}' for i in range(200)]
    async with running(bridge) as task:
        assert resolver.calls == [False]
        ws.text(*frames)
        await eventually(lambda: len(actor.handler.messages) == len(frames), 10)
        assert actor.texts() == frames
        assert {stream for stream, _ in actor.handler.messages} == {STREAM}

        conn = actor.handler.open[0]
        for i in range(3):
            assert await conn.send_acs(f'{{"kind":"AudioData","out":{i}}}')
        await eventually(lambda: len(ws.sent) == 3, 10)
        assert ws.sent == [f'{{"kind":"AudioData","out":{i}}}' for i in range(3)]
        ws.disconnect()
        assert await task == NORMAL_CLOSURE
    assert bridge.forwarded == len(frames)
    assert counter(metrics, "frames", stream=STREAM, direction="in") == len(frames)
    assert counter(metrics, "frames", stream=STREAM, direction="out") == 3
    await eventually(lambda: not actor.handler.open, 10)  # the bridge closed its connection
    assert ws.closed == []  # the gateway, not the bridge, closes a socket ACS closed


async def test_a_message_read_before_the_bridge_reaches_the_actor_first(
    call_id: str, metrics: GatewayMetrics, actors: list[Actor]
) -> None:
    """The gateway reads a header-less transcription socket's first message to learn its call
    (gateway/app.py stream_call_id): the actor gets that message before any other."""
    actor = actors[0]
    ws, resolver = FakeWebSocket(), Resolver(actor.endpoint)
    first = '{"kind":"TranscriptionMetadata","seq":0}'
    bridge = make_bridge(ws, call_id, resolver, metrics, first=first)
    async with running(bridge) as task:
        ws.text('{"kind":"TranscriptionData","seq":1}')
        await eventually(lambda: len(actor.handler.messages) == 2, 10)
        assert actor.texts() == [first, '{"kind":"TranscriptionData","seq":1}']
        ws.disconnect()
        assert await task == NORMAL_CLOSURE


async def test_actor_going_away_reconnects_and_replays_buffered_frames(
    call_id: str, metrics: GatewayMetrics, actors: list[Actor]
) -> None:
    first, second = actors
    ws, resolver = FakeWebSocket(), Resolver(first.endpoint)
    bridge = make_bridge(ws, call_id, resolver, metrics)
    async with running(bridge):
        ws.text(*(f"f{i}" for i in range(5)))
        await eventually(lambda: len(first.handler.messages) == 5, 10)

        await go_away_and_hold(first, resolver, second)
        ws.text(*(f"f{i}" for i in range(5, 10)))  # arrive while the actor is re-resolved
        await eventually(ws.drained, 10)
        assert second.handler.messages == []
        resolver.release()

        await eventually(lambda: len(second.handler.messages) == 5, 10)
        assert second.texts() == [f"f{i}" for i in range(5, 10)]  # replayed, oldest first
        ws.text("f10")
        await eventually(lambda: len(second.handler.messages) == 6, 10)
        assert second.texts()[-1] == "f10"

        assert await second.handler.open[0].send_acs("from the successor")
        await eventually(lambda: ws.sent == ["from the successor"], 10)
    assert first.texts() == [f"f{i}" for i in range(5)]
    assert counter(metrics, "actor_reconnects", stream=STREAM) == 1
    assert counter(metrics, "frames_dropped", stream=STREAM) == 0
    assert ws.closed == []


async def test_acs_hanging_up_while_the_actor_restarts_still_delivers_what_it_sent(
    call_id: str, metrics: GatewayMetrics, actors: list[Actor]
) -> None:
    """The caller's last words arrive while the actor is away, then ACS closes the socket
    (the caller hung up): they still reach the successor, so its transcript has them."""
    first, second = actors
    ws, resolver = FakeWebSocket(), Resolver(first.endpoint)
    bridge = make_bridge(ws, call_id, resolver, metrics)
    async with running(bridge) as task:
        await go_away_and_hold(first, resolver, second)
        ws.text("last words", "said while the actor restarts")
        ws.disconnect()
        await eventually(ws.drained, 10)
        resolver.release()
        assert await asyncio.wait_for(task, 10) == NORMAL_CLOSURE
    assert second.texts() == ["last words", "said while the actor restarts"]
    await eventually(lambda: not second.handler.open, 10)  # then closed, as for any hang-up
    assert counter(metrics, "frames_dropped", stream=STREAM) == 0


async def test_replay_buffer_overflow_drops_the_oldest_and_counts_them(
    call_id: str, metrics: GatewayMetrics, actors: list[Actor]
) -> None:
    first, second = actors
    ws, resolver = FakeWebSocket(), Resolver(first.endpoint)
    bridge = make_bridge(ws, call_id, resolver, metrics, replay_limit=3)
    async with running(bridge):
        ws.text("before")
        await eventually(lambda: len(first.handler.messages) == 1, 10)

        await go_away_and_hold(first, resolver, second)
        ws.text(*(f"b{i}" for i in range(8)))
        await eventually(ws.drained, 10)
        assert counter(metrics, "frames_dropped", stream=STREAM) == 5
        resolver.release()

        await eventually(lambda: len(second.handler.messages) == 3, 10)
        assert second.texts() == ["b5", "b6", "b7"]  # the newest three, in order
        ws.text("after")
        await eventually(lambda: second.texts()[-1:] == ["after"], 10)
    assert counter(metrics, "frames_dropped", stream=STREAM) == 5


async def test_binary_and_oversized_messages_are_refused_and_counted(
    call_id: str, metrics: GatewayMetrics, actors: list[Actor]
) -> None:
    actor = actors[0]
    ws, resolver = FakeWebSocket(), Resolver(actor.endpoint)
    bridge = make_bridge(ws, call_id, resolver, metrics, max_message_bytes=100)
    async with running(bridge):
        ws.text("ok-1")
        ws.binary(b"\x00\x01" * 10)
        ws.text("x" * 101)
        ws.text("y" * 100)  # exactly the limit: accepted
        ws.binary(b"")
        ws.text("ok-2")
        await eventually(lambda: len(actor.handler.messages) == 3, 10)
        await eventually(ws.drained, 10)
    assert actor.texts() == ["ok-1", "y" * 100, "ok-2"]
    assert bridge.forwarded == 3
    assert counter(metrics, "refused", input=STREAM, reason="binary_frame") == 2
    assert counter(metrics, "refused", input=STREAM, reason="oversized") == 1


async def test_call_ended_at_connect_raises(call_id: str, metrics: GatewayMetrics) -> None:
    resolver = Resolver(None)
    resolver.ended = True
    bridge = make_bridge(FakeWebSocket(), call_id, resolver, metrics)
    with pytest.raises(CallEnded):
        await bridge.connect()


async def test_call_ended_while_reconnecting_closes_normally(
    call_id: str, metrics: GatewayMetrics, actors: list[Actor]
) -> None:
    first, second = actors
    ws, resolver = FakeWebSocket(), Resolver(first.endpoint)
    bridge = make_bridge(ws, call_id, resolver, metrics)
    async with running(bridge) as task:
        ws.text("hello")
        await eventually(lambda: len(first.handler.messages) == 1, 10)
        await go_away_and_hold(first, resolver, second)
        resolver.ended = True
        resolver.release()
        await eventually(lambda: ws.closed, 10)
        ws.text("in flight")  # sent by ACS before it saw the close frame
        assert await asyncio.wait_for(task, 10) == NORMAL_CLOSURE
    assert ws.closed == [NORMAL_CLOSURE]
    assert second.handler.messages == []


async def test_actor_unreachable_past_the_deadline_closes_try_again_later(
    call_id: str, metrics: GatewayMetrics, actors: list[Actor]
) -> None:
    first = actors[0]
    ws, resolver = FakeWebSocket(), Resolver(first.endpoint)
    bridge = make_bridge(ws, call_id, resolver, metrics, reconnect_deadline_s=0.3)
    async with running(bridge) as task:
        resolver.endpoint = None  # not reachable again
        await first.server.close()
        await eventually(lambda: ws.closed, 10)
        ws.text("in flight")
        assert await asyncio.wait_for(task, 10) == TRY_AGAIN_LATER
    assert ws.closed == [TRY_AGAIN_LATER]
    assert resolver.calls[0] is False and all(resolver.calls[1:]) and len(resolver.calls) > 2

    never = make_bridge(FakeWebSocket(), call_id, Resolver(None), metrics, reconnect_deadline_s=0.2)
    with pytest.raises(ActorUnavailable):
        await never.connect()


class Backlog:
    """A stream connection's write backlog as the bridge reads it, one value per look."""

    def __init__(self, *sizes: int) -> None:
        self.sizes = list(sizes)
        self.looks = 0

    @property
    def backlog_bytes(self) -> int:
        self.looks += 1
        return self.sizes.pop(0) if len(self.sizes) > 1 else self.sizes[0]


async def test_media_behind_for_less_than_the_stall_time_is_forwarded_not_dropped(
    call_id: str, metrics: GatewayMetrics
) -> None:
    bridge = StreamBridge(
        FakeWebSocket(), call_id, STREAM, Resolver(None), metrics, backlog_limit=100, stall_s=5.0
    )
    burst = Backlog(500, 400, 300, 50)  # a fast sender: the actor catches up
    assert await bridge._backlog_drains(cast(Any, burst))
    assert burst.looks == 4


async def test_a_stalled_actors_media_is_dropped_at_once_until_it_reads_again(
    call_id: str, metrics: GatewayMetrics
) -> None:
    bridge = StreamBridge(
        FakeWebSocket(), call_id, STREAM, Resolver(None), metrics, backlog_limit=100, stall_s=0.05
    )
    stalled = Backlog(500)
    assert not await bridge._backlog_drains(cast(Any, stalled))  # after waiting stall_s
    looks = stalled.looks
    assert not await bridge._backlog_drains(cast(Any, stalled))  # no second wait
    assert stalled.looks == looks + 1
    assert await bridge._backlog_drains(cast(Any, Backlog(0)))  # reading again


async def test_the_direct_lane_carries_both_ways_and_is_declined_while_the_actor_is_away(
    call_id: str, metrics: GatewayMetrics, actors: list[Actor]
) -> None:
    first, second = actors
    ws, resolver = LaneWebSocket(), Resolver(first.endpoint)
    bridge = make_bridge(ws, call_id, resolver, metrics, direct=ws)
    async with running(bridge):
        ws.text("f0", "f1")
        await eventually(lambda: first.texts() == ["f0", "f1"], 10)
        assert ws.taken == 2
        actor_end = first.handler.open[0]
        assert await actor_end.send_acs("out0")
        await eventually(lambda: ws.sent == ["out0"], 10)
        ws.writable = False  # ACS is not reading: the awaited send takes it, in order
        assert await actor_end.send_acs("out1")
        await eventually(lambda: ws.sent == ["out0", "out1"], 10)
        assert ws.sent_now == 1
        ws.writable = True

        await go_away_and_hold(first, resolver, second)
        ws.text("f2", "f3")  # declined: buffered for the successor
        await eventually(ws.drained, 10)
        resolver.release()
        await eventually(lambda: second.texts() == ["f2", "f3"], 10)
        ws.text("f4", "f5", "f6")
        await eventually(lambda: second.texts() == ["f2", "f3", "f4", "f5", "f6"], 10)
        ws.text("f7")  # the reconnect is over: the lane again
        await eventually(lambda: second.texts()[-1:] == ["f7"], 10)
        assert ws.taken == 3
    assert counter(metrics, "frames", stream=STREAM, direction="out") == 2
    assert ws.text_sink is None  # the bridge let go of the lane when it ended
