"""The stream protocol, both ends: framing, the hello, the actor's StreamServer and the gateway's
open_stream / StreamConnection."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.stream_protocol import (
    BadFrame,
    Frame,
    FrameKind,
    FrameParser,
    FrameTooLarge,
    HandshakeRefused,
    ServerConnection,
    StreamServer,
    encode_control,
    encode_frame,
    encode_hello,
    open_stream,
    parse_hello,
)
from tests.helpers import Recorder, eventually


@contextlib.asynccontextmanager
async def serving(handler: Any, **options: Any) -> AsyncIterator[int]:
    """A StreamServer for ``handler`` on a free loopback port; yields the port."""
    server = StreamServer(handler, **options)
    port = await server.start()
    try:
        yield port
    finally:
        await server.close()


def _read_all(data: bytes, max_frame_bytes: int = 1024, chunk: int = 7) -> list[Frame]:
    """Every frame of ``data``, arriving ``chunk`` bytes at a time, then EOF (BadFrame if the
    last frame was cut short, as the actor's endpoint reports it)."""
    parser = FrameParser(max_frame_bytes)
    frames = [f for i in range(0, len(data), chunk) for f in parser.feed(data[i : i + chunk])]
    if parser.partial:
        raise BadFrame("truncated")
    return frames


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_roundtrip_in_arbitrary_chunks(chunk: int) -> None:
    data = b"".join(encode_frame(FrameKind.ACS, f"msg{i}".encode()) for i in range(50))
    data += encode_control({"op": "ping"})
    frames = _read_all(data, chunk=chunk)
    assert [f.text() for f in frames[:-1]] == [f"msg{i}" for i in range(50)]
    assert frames[-1].kind is FrameKind.CONTROL and frames[-1].control() == {"op": "ping"}


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    with pytest.raises(FrameTooLarge):
        FrameParser(max_frame_bytes=100).feed((101).to_bytes(4, "big"))


def test_bad_frames() -> None:
    empty, unknown_kind = b"\x00\x00\x00\x00", b"\x00\x00\x00\x02\x09x"
    truncated_header, truncated_body = b"\x00\x00", b"\x00\x00\x00\x05\x01x"
    for bad in (empty, unknown_kind, truncated_header, truncated_body):
        with pytest.raises(BadFrame):
            _read_all(bad)
    with pytest.raises(BadFrame):
        Frame(FrameKind.CONTROL, b"not json").control()


def test_hello() -> None:
    [frame] = _read_all(encode_hello("tok", "call-1", "media"))
    hello = parse_hello(frame)
    assert (hello.token, hello.call_id, hello.stream) == ("tok", "call-1", "media")
    for bad in (
        encode_control({"op": "hello", "token": "t", "stream": "video", "call_id": "c"}),
        encode_control({"op": "ready"}),
        encode_frame(FrameKind.ACS, b"{}"),
    ):
        [frame] = _read_all(bad)
        with pytest.raises(BadFrame):
            parse_hello(frame)


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


async def test_handshake_messages_and_outbound() -> None:
    handler = Recorder()
    async with serving(handler, call_id="c1", token="secret", max_frame_bytes=1024) as port:
        conn = await open_stream("127.0.0.1", port, "secret", "c1", "media")
        assert conn.epoch == 7
        for i in range(3):
            await conn.send_acs(f"m{i}")
        await eventually(lambda: len(handler.messages) == 3)
        assert handler.messages == [("media", b"m0"), ("media", b"m1"), ("media", b"m2")]
        assert await handler.open[0].send_acs("out")
        frame = await conn.recv()
        assert frame is not None and frame.kind is FrameKind.ACS and frame.text() == "out"

        for token, call_id, code in (("nope", "c1", "bad_token"), ("secret", "c2", "bad_call")):
            with pytest.raises(HandshakeRefused) as info:
                await open_stream("127.0.0.1", port, token, call_id, "media")
            assert info.value.code == code

        await conn.send_raw(encode_frame(FrameKind.ACS, b"x" * 2000))  # over the frame limit
        assert await conn.recv() is None
        await eventually(lambda: not handler.open)
        assert handler.refused == ["bad_token", "bad_call", "oversized_frame"]
        again = await open_stream("127.0.0.1", port, "secret", "c1", "transcription")
        await again.send_acs("still here")
        await eventually(lambda: handler.messages[-1] == ("transcription", b"still here"))
        await again.close()


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


async def test_garbage_hello_is_refused() -> None:
    handler = Recorder()
    async with serving(handler, call_id="c1", token="t", handshake_timeout_s=0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_frame(FrameKind.ACS, b"{}"))
        await writer.drain()
        assert await reader.read() != b""  # the error frame, then EOF
        _, silent = await asyncio.open_connection("127.0.0.1", port)
        await eventually(lambda: "handshake_timeout" in handler.refused)
        silent.close()
        assert handler.refused[0] == "bad_hello"
