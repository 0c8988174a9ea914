"""The gateway's WebSocket protocol reads ahead of the app: no pause per message, yet a stalled
app still stops the reading at a bound, and nothing is lost or reordered. Its direct lane takes
text in the read callback and writes text back, and what it declines reaches the app in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from gateway.embedded_server import EmbeddedServer
from gateway.websocket_protocol import (
    MAX_QUEUED,
    DirectText,
    ReadAheadWebSocketProtocol,
    direct_text,
    text_frame,
)
from simulator.devstack.local_redis import free_port
from tests.helpers import eventually

MESSAGES = 200
# More than one read of the socket can carry (asyncio reads up to 256 KiB at a time).
MANY = 2000


class CountingProtocol(ReadAheadWebSocketProtocol):
    """Counts the times reading paused; keeps the live instances for the test to look at."""

    live: list[CountingProtocol] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.pauses = 0
        pause = transport.pause_reading

        def counted() -> None:
            self.pauses += 1
            pause()

        transport.pause_reading = counted
        CountingProtocol.live.append(self)


class Reader:
    """The app: reads ``expect`` messages once ``go`` is set; with ``lane``, the direct lane
    takes what it accepts first (into the same ``received``)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.expect = MESSAGES
        self.received: list[str] = []
        self.lane: tuple[DirectText, ...] = ()
        self.accept: Any = None  # payload -> bool, for the lane

    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        if self.accept is not None:
            lane = direct_text(websocket.scope)
            assert lane is not None
            self.lane = (lane,)
            lane.text_sink = self._take
        await self.go.wait()
        for _ in range(self.expect):
            self.received.append(await websocket.receive_text())
        await websocket.close()


    def _take(self, payload: bytes) -> bool:
        if not self.accept(payload):
            return False
        self.received.append(payload.decode())
        self.expect -= 1
        return True


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Reader]]:
    reader = Reader()
    app = Starlette(routes=[WebSocketRoute("/ws", reader.endpoint)])
    port = free_port()
    server = EmbeddedServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, ws=CountingProtocol, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started)
    CountingProtocol.live.clear()
    yield f"ws://127.0.0.1:{port}/ws", reader
    reader.go.set()  # a failed test must not leave the app stalled
    server.should_exit = True
    await task


def frames(n: int = MESSAGES) -> list[str]:
    return [f'{{"kind":"AudioData","n":{i},"pad":"{"x" * 600}"}}' for i in range(n)]


async def test_an_app_reading_promptly_never_pauses_the_socket(
    served: tuple[str, Reader],
) -> None:
    url, reader = served
    reader.go.set()
    async with connect(url) as ws:
        for frame in frames():
            await ws.send(frame)
            await asyncio.sleep(0.001)
        await eventually(lambda: len(reader.received) == MESSAGES)
    assert reader.received == frames()
    assert [p.pauses for p in CountingProtocol.live] == [0]


async def test_a_stalled_app_pauses_reading_at_the_bound_and_loses_nothing(
    served: tuple[str, Reader],
) -> None:
    url, reader = served
    reader.expect = MANY
    async with connect(url) as ws:
        sending = asyncio.create_task(_send_all(ws, frames(MANY)))
        (protocol,) = CountingProtocol.live
        await eventually(lambda: protocol.read_paused)
        await asyncio.sleep(0.2)  # the client sends on; the paused server reads nothing more
        # One read of the socket may carry messages past the bound; never all of them.
        assert MAX_QUEUED <= protocol.queue.qsize() < MANY
        reader.go.set()
        await eventually(lambda: len(reader.received) == MANY)
        await sending
    assert reader.received == frames(MANY)
    assert protocol.pauses >= 1 and not protocol.read_paused


async def _send_all(ws: Any, messages: list[str]) -> None:
    for message in messages:
        await ws.send(message)


def test_text_frame_lengths() -> None:
    assert text_frame(b"") == b"\x81\x00"
    assert text_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")


async def test_the_direct_lane_takes_text_and_what_it_declines_reaches_the_app_in_order(
    served: tuple[str, Reader],
) -> None:
    url, reader = served
    declined = {f for i, f in enumerate(frames()) if i % 50 in (10, 11, 30)}
    reader.accept = lambda payload: payload.decode() not in declined
    reader.go.set()
    async with connect(url) as ws:
        await _send_all(ws, frames())  # back to back: some arrive behind a declined one
        await eventually(lambda: len(reader.received) == MESSAGES)
        (lane,) = reader.lane
        assert lane.send_text_now(b'{"kind":"AudioData"}')
        assert await asyncio.wait_for(ws.recv(), 5) == '{"kind":"AudioData"}'
    assert reader.received == frames()
    assert not lane.send_text_now(b"{}")  # the socket is closed


async def test_invalid_utf8_is_left_to_uvicorn_which_closes_1007(
    served: tuple[str, Reader],
) -> None:
    url, reader = served
    reader.accept = lambda payload: True
    reader.go.set()
    async with connect(url) as ws:
        await ws.send(b"\xff\xfe", text=True)
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1007
    assert reader.received == []
