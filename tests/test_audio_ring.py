import numpy as np
import pytest

from actors.audio_ring import MIXED, AudioRing, ParticipantRings


def pcm(values: range) -> bytes:
    return np.array(list(values), dtype="<i2").tobytes()


def test_in_order_until_full_then_overwrite_oldest() -> None:
    ring = AudioRing(10)
    assert ring.write(pcm(range(4))) == 0
    assert ring.write(pcm(range(4, 8))) == 0
    assert list(ring.snapshot()) == list(range(8))
    assert ring.write(pcm(range(8, 13))) == 3
    assert list(ring.snapshot()) == list(range(3, 13))
    assert len(ring) == 10 and ring.overwritten == 3
    for start in range(13, 60, 7):  # many wraps
        ring.write(pcm(range(start, start + 7)))
    assert list(ring.snapshot()) == list(range(52, 62))


def test_write_longer_than_capacity_keeps_newest() -> None:
    ring = AudioRing(5)
    ring.write(pcm(range(3)))
    assert ring.write(pcm(range(100, 112))) == 10
    assert ring.to_bytes() == pcm(range(107, 112))


def test_participants_are_bounded_and_separate() -> None:
    rings = ParticipantRings(capacity=8, max_participants=2)
    rings.write("a", pcm(range(2)))
    rings.write("b", pcm(range(10, 12)))
    assert rings.write("c", pcm(range(2))) == -1
    assert rings.snapshot_bytes("b") == pcm(range(10, 12))
    assert rings.snapshot_bytes("zzz") == b""
    mixed = ParticipantRings(capacity=8)
    mixed.write(None, pcm(range(3)))
    assert mixed.participants() == [MIXED]
    assert mixed.snapshot_bytes() == pcm(range(3))


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AudioRing(0)
