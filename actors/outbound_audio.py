"""Outbound audio: utterances sliced into 20 ms frames, a bounded queue, and a real-time pacer.

Slicing and the pacing clock are pure; ``Pacer.run`` is the only awaitable. The queue never
grows past its bound: overflow drops the oldest frames and counts them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

FRAME_SECONDS = 0.02


def slice_frames(pcm: bytes, frame_bytes: int) -> list[bytes]:
    """Split PCM into whole frames; a trailing partial frame is kept, padded with silence."""
    if frame_bytes <= 0 or frame_bytes % 2:
        raise ValueError("frame_bytes must be a positive even number")
    frames = [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]
    if frames and len(frames[-1]) < frame_bytes:
        frames[-1] = frames[-1] + bytes(frame_bytes - len(frames[-1]))
    return frames


class OutboundQueue:
    """Frames waiting to be sent to ACS, oldest first, at most ``max_frames``."""

    def __init__(self, frame_bytes: int, max_frames: int) -> None:
        self.frame_bytes = frame_bytes
        self.max_frames = max_frames
        self._frames: deque[bytes] = deque()
        self.dropped = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def enqueue(self, pcm: bytes) -> int:
        """Queue an utterance; returns the number of frames queued."""
        frames = slice_frames(pcm, self.frame_bytes)
        overflow = len(self._frames) + len(frames) - self.max_frames
        if overflow > 0:
            dropped_old = min(overflow, len(self._frames))
            for _ in range(dropped_old):
                self._frames.popleft()
            # An utterance longer than the whole queue keeps only its newest frames.
            frames = frames[overflow - dropped_old :]
            self.dropped += overflow
        self._frames.extend(frames)
        if self._frames:
            self._ready.set()
        return len(frames)

    def pop(self) -> bytes | None:
        frame = self._frames.popleft() if self._frames else None
        if not self._frames:
            self._ready.clear()  # the pacer must block, not spin, once the queue is empty
        return frame

    def clear(self) -> int:
        """Discard everything queued (StopAudio / barge-in); returns the frames discarded."""
        n = len(self._frames)
        self._frames.clear()
        self._ready.clear()
        return n

    async def wait_ready(self) -> None:
        await self._ready.wait()


@dataclass
class PacingClock:
    """Deadlines of successive frames at real time; a gap longer than a frame restarts the grid."""

    frame_seconds: float = FRAME_SECONDS
    next_due: float | None = None

    def start(self, now: float) -> None:
        self.next_due = now

    def delay(self, now: float) -> float:
        """Seconds to wait before the next frame is due (0 when already due)."""
        if self.next_due is None:
            self.next_due = now
        return max(0.0, self.next_due - now)

    def sent(self, now: float) -> bool:
        """Advance by one frame after a send at ``now``; True if that frame went out late."""
        assert self.next_due is not None
        late = now - self.next_due > self.frame_seconds
        # A late frame restarts the grid rather than bursting to catch up.
        self.next_due = (now if late else self.next_due) + self.frame_seconds
        return late

    def idle(self) -> None:
        self.next_due = None


Send = Callable[[bytes], Awaitable[bool]]


class Pacer:
    """Sends queued frames at real time through ``send`` (returns False if nobody listens)."""

    def __init__(self, queue: OutboundQueue, send: Send) -> None:
        self.queue = queue
        self._send = send
        self.clock = PacingClock()
        self.frames_sent = 0
        self.frames_late = 0

    async def run(self) -> None:
        while True:
            if not len(self.queue):
                self.clock.idle()
                await self.queue.wait_ready()
                continue
            delay = self.clock.delay(time.monotonic())
            if delay:
                await asyncio.sleep(delay)
            frame = self.queue.pop()
            if frame is None:  # cleared while we slept (barge-in)
                continue
            if await self._send(frame):  # a frame nobody took is counted by ``send``
                self.frames_sent += 1
            if self.clock.sent(time.monotonic()):
                self.frames_late += 1
