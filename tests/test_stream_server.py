import asyncio

import pytest

from actors.stream_protocol import FrameKind, HandshakeRefused, encode_frame, open_stream
from actors.stream_server import ServerConnection, StreamServer


class Recorder:
    epoch = 7

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.refused: list[str] = []
        self.open: list[ServerConnection] = []

    def on_open(self, conn: ServerConnection) -> None:
        self.open.append(conn)

    def on_message(self, conn: ServerConnection, payload: bytes) -> None:
        self.messages.append((conn.stream, payload))

    def on_close(self, conn: ServerConnection) -> None:
        self.open.remove(conn)

    def on_refused(self, reason: str) -> None:
        self.refused.append(reason)


async def until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_handshake_messages_and_outbound() -> None:
    handler = Recorder()
    server = StreamServer(handler, call_id="c1", token="secret", max_frame_bytes=1024)
    port = await server.start()
    try:
        conn = await open_stream("127.0.0.1", port, "secret", "c1", "media")
        assert conn.epoch == 7
        for i in range(3):
            await conn.send_acs(f"m{i}")
        await until(lambda: len(handler.messages) == 3)
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
        await until(lambda: not handler.open)
        assert handler.refused == ["bad_token", "bad_call", "oversized_frame"]
        again = await open_stream("127.0.0.1", port, "secret", "c1", "transcription")
        await again.send_acs("still here")
        await until(lambda: handler.messages[-1] == ("transcription", b"still here"))
        await again.close()
    finally:
        await server.close()


async def test_garbage_hello_is_refused() -> None:
    handler = Recorder()
    server = StreamServer(handler, call_id="c1", token="t", handshake_timeout_s=0.5)
    port = await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_frame(FrameKind.ACS, b"{}"))
        await writer.drain()
        assert await reader.read() != b""  # the error frame, then EOF
        _, silent = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: "handshake_timeout" in handler.refused)
        silent.close()
        assert handler.refused[0] == "bad_hello"
    finally:
        await server.close()
