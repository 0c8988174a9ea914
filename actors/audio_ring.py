"""Inbound audio ring buffers: fixed-size int16 rings, one per participant, overwrite-oldest.

Memory is allocated once per participant and never grows; nothing here does I/O. Plain
``bytearray`` storage: the per-frame path needs no numpy (about 5.6 MB less private memory in
every call actor, README "Performance").
"""

from __future__ import annotations

import sys
from array import array

MIXED = "mixed"  # the participant key of mixed (one-stream) audio
SAMPLE_BYTES = 2  # little-endian int16


def pcm16_samples(pcm: bytes) -> array[int]:
    """The samples of little-endian int16 PCM (a trailing odd byte is ignored)."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % SAMPLE_BYTES])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


class AudioRing:
    """The last ``capacity`` samples written, oldest overwritten first."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        self._buf = bytearray(capacity * SAMPLE_BYTES)
        self._start = 0  # index of the oldest sample
        self._size = 0
        self.overwritten = 0  # samples lost to overwrite since creation

    @property
    def capacity(self) -> int:
        return len(self._buf) // SAMPLE_BYTES

    def __len__(self) -> int:
        return self._size

    def write(self, pcm: bytes) -> int:
        """Append little-endian int16 PCM; returns how many old samples were overwritten."""
        cap = self.capacity
        n = len(pcm) // SAMPLE_BYTES
        data = memoryview(pcm)[: n * SAMPLE_BYTES]
        if n >= cap:  # only the newest ``cap`` samples can survive
            lost = self._size + n - cap
            self._buf[:] = data[(n - cap) * SAMPLE_BYTES :]
            self._start, self._size = 0, cap
            self.overwritten += lost
            return lost
        lost = max(0, self._size + n - cap)
        end = (self._start + self._size) % cap
        first = min(n, cap - end)
        self._buf[end * SAMPLE_BYTES : (end + first) * SAMPLE_BYTES] = data[: first * SAMPLE_BYTES]
        self._buf[: (n - first) * SAMPLE_BYTES] = data[first * SAMPLE_BYTES :]
        if lost:
            self._start = (self._start + lost) % cap
        self._size = min(cap, self._size + n)
        self.overwritten += lost
        return lost

    def to_bytes(self) -> bytes:
        """The buffered samples as little-endian int16 PCM, oldest first."""
        cap, start = self.capacity, self._start
        end = start + self._size
        if end <= cap:
            return bytes(self._buf[start * SAMPLE_BYTES : end * SAMPLE_BYTES])
        return bytes(self._buf[start * SAMPLE_BYTES :]) + bytes(
            self._buf[: (end - cap) * SAMPLE_BYTES]
        )

    def snapshot(self) -> array[int]:
        """A copy of the buffered samples, oldest first."""
        return pcm16_samples(self.to_bytes())

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
