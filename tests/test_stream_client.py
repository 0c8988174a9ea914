"""The gateway's end (open_stream, StreamConnection) against a real StreamServer: refusals,
a close that loses none of the actor's frames, outbound frames to on_acs or recv in order."""

import asyncio
import time

import pytest

from actors.stream_client import open_stream
from actors.stream_protocol import HandshakeRefused, encode_control
from actors.stream_server import ServerConnection
from tests.helpers import Recorder, eventually, serving


async def test_open_stream_refused_with_the_actor_code() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(encode_control({"op": "error", "code": "bad_token"}))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(HandshakeRefused) as info:
            await open_stream("127.0.0.1", port, "x", "c", "media")
        assert info.value.code == "bad_token"
        with pytest.raises(ValueError):
            await open_stream("127.0.0.1", port, "x", "c", "video")


async def test_close_delivers_every_frame_while_outbound_audio_is_unread() -> None:
    """Closing with the actor's audio unread must not reset the connection: the actor, still
    talking, would fail its next write and drop the frames it had not read yet."""
    received: list[bytes] = []
    sends: list[asyncio.Task[bool]] = []

    class BusyActor:
        epoch = 1

        def on_open(self, conn: ServerConnection) -> None:
            sends.extend(asyncio.create_task(conn.send_acs("a" * 4000)) for _ in range(250))

        def on_message(self, conn: ServerConnection, payload: bytes) -> None:
            if not received:
                time.sleep(0.3)  # the actor is behind: frames pile up in its socket buffer
            if len(received) % 50 == 0:  # and it keeps talking while it catches up
                sends.append(asyncio.create_task(conn.send_acs("a" * 4000)))
            received.append(payload)

        def on_close(self, conn: ServerConnection) -> None:
            pass

        def on_refused(self, reason: str) -> None:
            pass

    async with serving(BusyActor(), call_id="c1", token="t") as port:
        try:
            conn = await open_stream("127.0.0.1", port, "t", "c1", "media")
            await asyncio.sleep(0.1)  # the actor's outbound audio arrives and stays unread
            for i in range(500):
                await conn.send_acs(f"frame-{i:04d}" + "x" * 1700)
            await conn.close()
            async with asyncio.timeout(10):
                while len(received) < 500:
                    await asyncio.sleep(0.01)
            assert [r[:10] for r in received] == [f"frame-{i:04d}".encode() for i in range(500)]
        finally:
            await asyncio.gather(*sends, return_exceptions=True)


# The actor's end (StreamServer) with the gateway's (open_stream).


async def test_outbound_frames_go_to_on_acs_and_stay_in_order_when_it_declines() -> None:
    handler = Recorder()
    async with serving(handler, call_id="c1", token="t") as port:
        conn = await open_stream("127.0.0.1", port, "t", "c1", "media")
        taken: list[bytes] = []
        declined: list[bytes] = []

        def take(payload: bytes) -> bool:
            if payload == b"b0":  # e.g. ACS not writable: left to recv
                declined.append(payload)
                return False
            taken.append(payload)
            return True

        conn.on_acs = take
        actor = handler.open[0]
        for text in ("a0", "a1", "b0", "b1", "b2"):
            assert await actor.send_acs(text)
        await eventually(lambda: len(taken) == 2 and len(declined) == 1)
        await asyncio.sleep(0.1)  # b1 and b2 arrive behind b0: recv has them, not on_acs
        received = [await conn.recv() for _ in range(3)]
        assert [f.text() for f in received if f is not None] == ["b0", "b1", "b2"]
        assert await actor.send_acs("c0")  # nothing waits any more: on_acs again
        await eventually(lambda: taken == [b"a0", b"a1", b"c0"])
        await conn.close()


async def test_sending_to_an_actor_that_went_away_raises_connection_error() -> None:
    """The bridge buffers and reconnects on ConnectionError: a lost connection must raise it,
    never swallow frames as if they were sent."""
    handler = Recorder()
    async with serving(handler, call_id="c1", token="t") as port:
        conn = await open_stream("127.0.0.1", port, "t", "c1", "media")
    assert await conn.recv() is None  # the actor's endpoint closed
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(5):
            while True:  # the first write may still be taken before the peer's reset
                await conn.send_acs("frame")
                await asyncio.sleep(0.01)
    await conn.close()
