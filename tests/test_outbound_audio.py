import asyncio

import pytest

from actors.outbound_audio import OutboundQueue, Pacer, PacingClock, slice_frames


def test_slice_keeps_trailing_partial_frame_padded() -> None:
    frames = slice_frames(b"\x01" * 1000, 640)
    assert [len(f) for f in frames] == [640, 640]
    assert frames[1] == b"\x01" * 360 + bytes(280)
    assert slice_frames(b"", 640) == []
    with pytest.raises(ValueError):
        slice_frames(b"x", 3)


def test_queue_bound_drops_oldest_and_counts() -> None:
    q = OutboundQueue(frame_bytes=4, max_frames=3)
    q.enqueue(b"\x01" * 8)
    q.enqueue(b"\x02" * 8)
    assert len(q) == 3 and q.dropped == 1
    assert q.pop() == b"\x01" * 4
    q.enqueue(b"\x03" * 40)  # longer than the queue: only its newest frames survive
    assert len(q) == 3 and [q.pop() for _ in range(3)] == [b"\x03" * 4] * 3
    assert q.pop() is None
    q.enqueue(b"\x04" * 8)
    assert q.clear() == 2 and len(q) == 0


def test_pacing_clock() -> None:
    clock = PacingClock(frame_seconds=0.02)
    assert clock.delay(100.0) == 0.0
    assert clock.sent(100.0) is False
    assert clock.delay(100.005) == pytest.approx(0.015)
    assert clock.sent(100.02) is False
    assert clock.sent(100.5) is True  # far behind: late, and the grid restarts
    assert clock.delay(100.5) == pytest.approx(0.02)


async def test_pacer_sends_everything_in_order() -> None:
    q = OutboundQueue(frame_bytes=2, max_frames=100)
    got: list[bytes] = []

    async def send(frame: bytes) -> bool:
        got.append(frame)
        return True

    pacer = Pacer(q, send)
    task = asyncio.create_task(pacer.run())
    q.enqueue(b"".join(i.to_bytes(2, "little") for i in range(10)))
    async with asyncio.timeout(10):
        while len(got) < 10:
            await asyncio.sleep(0.01)
    task.cancel()
    assert got == [i.to_bytes(2, "little") for i in range(10)]
    assert pacer.frames_sent == 10
