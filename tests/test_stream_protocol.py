"""The stream protocol's pure part: framing, the incremental FrameParser, the hello."""

import pytest

from actors.stream_protocol import (
    BadFrame,
    Frame,
    FrameKind,
    FrameParser,
    FrameTooLarge,
    encode_control,
    encode_frame,
    encode_hello,
    parse_hello,
)


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
