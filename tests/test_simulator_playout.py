"""The caller's loudspeaker queue: frame-sized play-out and StopAudio's flush."""

from __future__ import annotations

from simulator.playout import Playout


def test_plays_in_order_across_chunk_boundaries() -> None:
    playout = Playout()
    playout.enqueue(b"abc")
    playout.enqueue(b"defgh")
    assert playout.play(4) == b"abcd"
    assert playout.pending_bytes == 4
    assert playout.play(10) == b"efgh"
    assert playout.play(4) == b""
    assert bytes(playout.heard) == b"abcdefgh" and playout.heard_bytes == 8


def test_clear_drops_unplayed_audio_only() -> None:
    playout = Playout()
    playout.enqueue(b"x" * 100)
    playout.play(30)
    assert playout.clear() == 70
    assert playout.pending_bytes == 0 and playout.cleared_bytes == 70 and playout.clears == 1
    playout.enqueue(b"y" * 10)
    assert playout.play_all() == b"y" * 10
    assert playout.heard_bytes == 40


def test_without_recording_only_counts() -> None:
    playout = Playout(record=False)
    playout.enqueue(b"z" * 10)
    playout.play_all()
    assert playout.heard == bytearray() and playout.heard_bytes == 10
