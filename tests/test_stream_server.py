"""The actor's end (StreamServer), driven by the gateway's (open_stream, bind_spare) and by raw
sockets: the handshake, refusals, frames to the handler, a violation closing only its
connection, and a spare's bind."""

import asyncio

import pytest

from actors.stream_client import bind_spare, open_stream
from actors.stream_protocol import FrameKind, HandshakeRefused, encode_control, encode_frame
from actors.stream_server import StreamServer
from tests.helpers import Recorder, eventually, serving


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


async def test_the_end_of_a_call_can_wait_for_a_first_connection_then_for_none() -> None:
    """What a restarted actor's end of call waits on (actors/call_actor.py _drain_streams)."""
    server = StreamServer(Recorder(), call_id="c1", token="t")
    port = await server.start()
    try:
        reached = asyncio.create_task(server.wait_reached())
        with pytest.raises(HandshakeRefused):  # a refused hello is no connection
            await open_stream("127.0.0.1", port, "wrong", "c1", "media")
        await asyncio.sleep(0.05)
        assert not reached.done()
        conn = await open_stream("127.0.0.1", port, "t", "c1", "media")
        await asyncio.wait_for(reached, 5)
        idle = asyncio.create_task(server.wait_idle())
        await asyncio.sleep(0.05)
        assert not idle.done()
        await conn.close()
        await asyncio.wait_for(idle, 5)
        await asyncio.wait_for(server.wait_reached(), 1)  # once reached, it stays reached
    finally:
        await server.close()


class Spare:
    """A spare's binder: what it was asked to bind, and how it answers."""

    def __init__(self, answer: int | Exception = 3) -> None:
        self.answer = answer
        self.binds: list[tuple[str, dict[str, object]]] = []

    async def __call__(self, call_id: str, incoming: dict[str, object]) -> int:
        self.binds.append((call_id, incoming))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_a_spare_takes_its_call_with_a_bind_and_nothing_else_rides_on_it() -> None:
    spare, handler = Spare(), Recorder()
    async with serving(handler, call_id="", token="secret", binder=spare) as port:
        epoch = await bind_spare("127.0.0.1", port, "secret", "c1", {"caller_id": "+1555"})
        assert epoch == 3 and spare.binds == [("c1", {"caller_id": "+1555"})]
        assert handler.open == []  # a bind connection is no stream

        with pytest.raises(HandshakeRefused) as info:
            await bind_spare("127.0.0.1", port, "guess", "c9", {})
        assert info.value.code == "bad_token" and len(spare.binds) == 1


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (HandshakeRefused("call_ended"), "call_ended"),
        (RuntimeError("redis gone"), "bind_failed"),
    ],
)
async def test_a_bind_the_actor_refuses_says_why(answer: Exception, code: str) -> None:
    handler = Recorder()
    async with serving(handler, call_id="", token="t", binder=Spare(answer)) as port:
        with pytest.raises(HandshakeRefused) as info:
            await bind_spare("127.0.0.1", port, "t", "c1", {})
    assert info.value.code == code and handler.refused == [code]


async def test_an_endpoint_that_takes_no_bind_and_a_malformed_bind_are_refused() -> None:
    handler = Recorder()
    async with serving(handler, call_id="c1", token="t") as port:  # no binder: not a spare
        with pytest.raises(HandshakeRefused) as info:
            await bind_spare("127.0.0.1", port, "t", "c1", {})
        assert info.value.code == "not_spare"
    spare = Spare()
    async with serving(handler, call_id="", token="t", binder=spare) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_control({"op": "bind", "token": "t", "call_id": "c1", "incoming": 1}))
        await eventually(lambda: handler.refused[-1:] == ["bad_hello"])
        writer.close()
    assert spare.binds == []
