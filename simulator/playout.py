"""The caller's loudspeaker: a byte queue of outbound audio played out 20 ms at a time.

Pure bookkeeping (no clock, no socket): the media client decides when a frame's time has come.
``StopAudio`` maps to ``clear()``, which drops whatever has not been played yet.
"""

from __future__ import annotations

from collections import deque


class Playout:
    def __init__(self, record: bool = True) -> None:
        self._queue: deque[bytes] = deque()
        self._pending = 0
        self.record = record
        self.heard = bytearray()  # everything played out, in order (when recording)
        self.heard_bytes = 0
        self.cleared_bytes = 0
        self.clears = 0

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def enqueue(self, pcm: bytes) -> None:
        if pcm:
            self._queue.append(pcm)
            self._pending += len(pcm)

    def clear(self) -> int:
        """Barge-in: drop the unplayed audio; returns how many bytes were dropped."""
        dropped = self._pending
        self._queue.clear()
        self._pending = 0
        self.cleared_bytes += dropped
        self.clears += 1
        return dropped

    def play(self, n_bytes: int) -> bytes:
        """Play up to ``n_bytes`` from the head of the queue (less when the queue runs dry)."""
        out = bytearray()
        while self._queue and len(out) < n_bytes:
            head = self._queue[0]
            take = n_bytes - len(out)
            if len(head) <= take:
                out += self._queue.popleft()
            else:
                out += head[:take]
                self._queue[0] = head[take:]
        self._pending -= len(out)
        self.heard_bytes += len(out)
        if self.record:
            self.heard += out
        return bytes(out)

    def play_all(self) -> bytes:
        return self.play(self._pending)
