"""Inbound audio ring buffers: fixed-size numpy int16 rings, one per participant, overwrite-oldest.

Memory is allocated once per participant and never grows; nothing here does I/O.
"""

from __future__ import annotations

import numpy as np

MIXED = "mixed"  # the participant key of mixed (one-stream) audio


class AudioRing:
    """The last ``capacity`` samples written, oldest overwritten first."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._start = 0  # index of the oldest sample
        self._size = 0
        self.overwritten = 0  # samples lost to overwrite since creation

    @property
    def capacity(self) -> int:
        return int(self._buf.shape[0])

    def __len__(self) -> int:
        return self._size

    def write(self, pcm: bytes) -> int:
        """Append little-endian int16 PCM; returns how many old samples were overwritten."""
        samples = np.frombuffer(pcm, dtype="<i2")
        cap = self.capacity
        n = int(samples.shape[0])
        if n >= cap:  # only the newest ``cap`` samples can survive
            lost = self._size + n - cap
            self._buf[:] = samples[n - cap :]
            self._start, self._size = 0, cap
            self.overwritten += lost
            return lost
        lost = max(0, self._size + n - cap)
        end = (self._start + self._size) % cap
        first = min(n, cap - end)
        self._buf[end : end + first] = samples[:first]
        self._buf[: n - first] = samples[first:]
        if lost:
            self._start = (self._start + lost) % cap
        self._size = min(cap, self._size + n)
        self.overwritten += lost
        return lost

    def snapshot(self) -> np.ndarray:
        """A copy of the buffered samples, oldest first."""
        return np.roll(self._buf, -self._start)[: self._size].copy()

    def to_bytes(self) -> bytes:
        return self.snapshot().astype("<i2").tobytes()

    def clear(self) -> None:
        self._start = self._size = 0


class ParticipantRings:
    """One ring per participant (unmixed audio) or one under ``MIXED``; bounded in count."""

    def __init__(self, capacity: int, max_participants: int = 16) -> None:
        self.capacity = capacity
        self.max_participants = max_participants
        self._rings: dict[str, AudioRing] = {}

    def ring(self, participant: str | None) -> AudioRing | None:
        """The ring of ``participant`` (created on first use), or None when the bound is hit."""
        key = participant or MIXED
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) >= self.max_participants:
                return None
            ring = self._rings[key] = AudioRing(self.capacity)
        return ring

    def write(self, participant: str | None, pcm: bytes) -> int:
        """Store a frame; returns samples overwritten, or -1 if the frame had no ring (dropped)."""
        ring = self.ring(participant)
        return -1 if ring is None else ring.write(pcm)

    def snapshot_bytes(self, participant: str | None = None) -> bytes:
        """Buffered audio of one participant; without one, the only ring (or MIXED)."""
        if participant is None and len(self._rings) == 1:
            return next(iter(self._rings.values())).to_bytes()
        ring = self._rings.get(participant or MIXED)
        return ring.to_bytes() if ring else b""

    def participants(self) -> list[str]:
        return list(self._rings)
