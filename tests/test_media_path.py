"""MediaPath, the per-frame path of a call, as a plain object: no Ray, no Redis, no sockets."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import orjson
import pytest

from actors.acs_media import TranscriptionData
from actors.config import CallActorConfig
from actors.media_path import BACKLOG_MAX_S, BARGE_IN_FRAMES, FRAME_S, MediaPath
from actors.metrics import LiveMetrics
from actors.stream_server import ServerConnection
from storage.settings import Settings

CALLER = "4:+14255550123"
FRAME = 640  # 20 ms at 16 kHz


class FakeConnection:
    """What the media path uses of a ServerConnection: its stream and ``send_acs``."""

    def __init__(self, stream: str, *, alive: bool = True) -> None:
        self.stream = stream
        self.alive = alive
        self.sent: list[dict[str, Any]] = []

    async def send_acs(self, text: str) -> bool:
        if self.alive:
            self.sent.append(orjson.loads(text))
        return self.alive


class FakeSpeaker:
    def __init__(self, speaking: bool = True) -> None:
        self.speaking = speaking
        self.stops = 0

    async def stop(self) -> None:
        self.stops += 1
        self.speaking = False


class Harness:
    """A media path with recording callbacks, and its own clock for the messages' arrival."""

    def __init__(self, **changes: Any) -> None:
        config = CallActorConfig.from_settings(Settings(), redis_url="redis://unused", **changes)
        self.finals: list[TranscriptionData] = []
        self.session_changes = 0
        self.now = 1000.0
        self.media = MediaPath(
            config,
            LiveMetrics(),
            on_final=self._on_final,
            on_session_change=self._changed,
            clock=lambda: self.now,
        )

    async def _on_final(self, msg: TranscriptionData) -> None:
        self.finals.append(msg)

    def _changed(self) -> None:
        self.session_changes += 1

    def feed(
        self, *docs: dict[str, Any], conn: FakeConnection | None = None, pace: float = FRAME_S
    ) -> None:
        """Each message arrives ``pace`` seconds after the previous one: by default as ACS sends
        frames live; 0 is a backlog delivered at once."""
        for doc in docs:
            self.now += pace
            self.media.on_message(cast(ServerConnection, conn), orjson.dumps(doc))

    def open(self, stream: str, *, alive: bool = True) -> FakeConnection:
        conn = FakeConnection(stream, alive=alive)
        self.media.on_open(cast(ServerConnection, conn))
        return conn


def audio(level: int, *, silent: bool = False, timestamp: str = "") -> dict[str, Any]:
    pcm = np.full(FRAME // 2, level, dtype="<i2").tobytes()
    body = {
        "timestamp": timestamp,
        "participantRawID": CALLER,
        "data": base64.b64encode(pcm).decode(),
        "silent": silent,
    }
    return {"kind": "AudioData", "audioData": body}


def transcription(text: str, *, final: bool = True) -> dict[str, Any]:
    body = {
        "text": text,
        "participantRawID": CALLER,
        "resultStatus": "Final" if final else "Intermediate",
    }
    return {"kind": "TranscriptionData", "transcriptionData": body}


async def settled(media: MediaPath) -> None:
    """Let the tasks the media path spawned run to their end."""
    while media.tasks:
        await asyncio.gather(*media.tasks)


def test_inbound_audio_lands_in_the_participant_ring_in_order() -> None:
    path = Harness()
    path.feed(*(audio(i) for i in range(5)))
    ring = np.frombuffer(path.media.rings.snapshot_bytes(CALLER), dtype="<i2")
    assert list(ring[:: FRAME // 2]) == [0, 1, 2, 3, 4]
    assert path.media.metrics.frames_in == 5


def test_frames_captured_before_the_endpoint_was_ready_are_backlog() -> None:
    path = Harness()
    path.media.ready_at = time.time()
    before = datetime.fromtimestamp(path.media.ready_at - 1.0, UTC).isoformat()
    path.feed(audio(1, timestamp=before))
    snap = path.media.metrics.snapshot()
    assert snap["backlog_frames"] == 1 and snap["frame_latency_ms_p99"] is None


async def test_loud_caller_frames_during_playback_barge_in() -> None:
    path = Harness()
    media_conn = path.open("media")
    speaker = FakeSpeaker()
    path.media.speaker = cast(Any, speaker)
    path.media.outbound.enqueue(b"\x00" * FRAME * 10)
    path.feed(*[audio(2000)] * (BARGE_IN_FRAMES - 1), audio(2000, silent=True))  # interrupted
    path.feed(*[audio(10)] * BARGE_IN_FRAMES)  # quiet: background noise
    assert path.media.metrics.barge_ins == 0 and len(path.media.outbound) == 10
    path.feed(*[audio(2000)] * BARGE_IN_FRAMES)
    assert path.media.metrics.barge_ins == 1 and len(path.media.outbound) == 0
    await settled(path.media)
    assert speaker.stops == 1
    assert [doc["Kind"] for doc in media_conn.sent] == ["StopAudio"]


def stamp(offset_s: float = 0.0) -> str:
    """An ACS capture timestamp, ``offset_s`` from our clock."""
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat()


async def listen_then_talk_over(
    path: Harness, timestamp: Callable[[], str], *, quiet_frames: int
) -> None:
    """At real time, while the reply plays: the caller listens (no barge-in), then talks loud
    enough for long enough (the reply stops)."""
    path.feed(*[audio(10, timestamp=timestamp())] * quiet_frames)
    assert path.media.metrics.barge_ins == 0
    path.feed(*[audio(2000, timestamp=timestamp())] * BARGE_IN_FRAMES)
    assert path.media.metrics.barge_ins == 1 and len(path.media.outbound) == 0
    await settled(path.media)


async def test_words_said_before_the_reply_began_do_not_interrupt_it() -> None:
    """Chaos finding: a call answered while its actor started slowly delivers the caller's line
    in a burst with its final transcript; the reply starts before the burst's last frames.

    Told by arrival alone: the burst's timestamps look live (as with an ACS clock ahead of ours).
    """
    path = Harness()
    speaker = FakeSpeaker(speaking=False)
    path.media.speaker = cast(Any, speaker)
    path.feed(*[audio(2000, timestamp=stamp())] * 40, pace=0.0)  # 0.8 s of the caller's line
    speaker.speaking = True  # the reply starts
    path.media.outbound.enqueue(b"\x00" * FRAME * 10)
    path.feed(*[audio(2000, timestamp=stamp())] * 10, pace=0.0)  # the rest of the burst
    assert path.media.metrics.barge_ins == 0 and len(path.media.outbound) == 10
    # Then the stream is live again: the caller listens, then talks over the reply.
    await listen_then_talk_over(path, stamp, quiet_frames=50)


def test_frames_that_arrived_before_the_reply_began_do_not_count() -> None:
    path = Harness()
    speaker = FakeSpeaker(speaking=False)
    path.media.speaker = cast(Any, speaker)
    path.feed(*[audio(2000)] * (BARGE_IN_FRAMES - 1))
    speaker.speaking = True
    path.feed(audio(2000))
    assert path.media.metrics.barge_ins == 0  # the count starts with the reply


@pytest.mark.parametrize(
    "timestamp",
    [
        lambda: stamp(-2.0),  # ACS's clock 2 s behind ours
        lambda: stamp(+2.0),  # ... or ahead: a latency below 0, a bad timestamp
        lambda: "2024-11-15T19:16:12.925Z",  # recorded traffic, replayed
        lambda: "",  # none
        lambda: "not a time",
    ],
    ids=["behind", "ahead", "recorded", "none", "unparsable"],
)
async def test_acs_clock_does_not_decide_barge_in(timestamp: Callable[[], str]) -> None:
    path = Harness()
    path.media.speaker = cast(Any, FakeSpeaker())
    path.media.outbound.enqueue(b"\x00" * FRAME * 10)
    await listen_then_talk_over(path, timestamp, quiet_frames=5)  # while the reply plays


def test_the_acs_timestamp_still_measures_latency() -> None:
    path = Harness()
    path.media.ready_at = time.time() - 60.0
    path.feed(*[audio(10, timestamp=stamp(-2.0))] * 5)
    path.feed(*[audio(10, timestamp="2024-11-15T19:16:12.925Z")] * 3)
    snap = path.media.metrics.snapshot()
    assert 1900.0 < snap["frame_latency_ms_p50"] < 2500.0
    assert snap["bad_timestamps"] == 3


async def test_after_a_backlog_loud_frames_barge_in_within_its_cap() -> None:
    path = Harness()
    speaker = FakeSpeaker(speaking=False)
    path.media.speaker = cast(Any, speaker)
    path.feed(*[audio(2000)] * 200, pace=0.0)  # 5 s held behind a stalled actor, all loud
    speaker.speaking = True  # the reply to it starts before its last second arrives
    path.media.outbound.enqueue(b"\x00" * FRAME * 10)
    path.feed(*[audio(2000)] * 50, pace=0.0)
    assert path.media.metrics.barge_ins == 0
    live = 0
    while not path.media.metrics.barge_ins:
        path.feed(audio(2000))
        live += 1
    assert live <= round(BACKLOG_MAX_S / FRAME_S) + BARGE_IN_FRAMES
    await settled(path.media)


async def test_live_frames_delivered_in_pairs_barge_in() -> None:
    path = Harness()
    path.media.speaker = cast(Any, FakeSpeaker())
    for _ in range(25):  # jitter: two frames at a time, every 40 ms
        path.feed(audio(10), pace=2 * FRAME_S)
        path.feed(audio(10), pace=0.0)
    path.feed(audio(2000), pace=2 * FRAME_S)
    path.feed(audio(2000), pace=0.0)
    path.feed(audio(2000), pace=2 * FRAME_S)
    assert path.media.metrics.barge_ins == 1
    await settled(path.media)


async def test_caller_words_during_playback_barge_in_and_only_final_ones_are_handed_over() -> None:
    path = Harness()
    speaker = FakeSpeaker()
    path.media.speaker = cast(Any, speaker)
    path.feed(transcription("wait", final=False))
    assert path.media.metrics.barge_ins == 1
    await settled(path.media)  # the speaker has stopped
    path.feed(transcription("   "), transcription("first"), transcription("second"))
    await settled(path.media)
    assert [msg.text for msg in path.finals] == ["first", "second"]
    assert path.media.metrics.barge_ins == 1 and speaker.stops == 1


def test_dtmf_and_transcription_metadata_change_the_session() -> None:
    path = Harness(max_dtmf_tones=2)
    meta = {"kind": "TranscriptionMetadata", "transcriptionMetadata": {"locale": "en-US"}}
    path.feed(*({"kind": "DtmfData", "dtmfData": {"data": tone}} for tone in "123"), meta)
    assert path.media.dtmf == ["1", "2"]
    assert path.session_changes == 3  # two tones and the metadata; the third tone was refused
    assert path.media.metrics.invalid_messages == {"dtmf_limit": 1}


async def test_outbound_frames_go_to_the_newest_media_connection() -> None:
    path = Harness()
    assert not await path.media.send_outbound(b"\x01" * FRAME)  # nobody listens yet
    older, transcription_conn = path.open("media"), path.open("transcription")
    newer = path.open("media")
    assert await path.media.send_outbound(b"\x01" * FRAME)
    assert len(newer.sent) == 1 and not older.sent and not transcription_conn.sent
    assert newer.sent[0]["Kind"] == "AudioData"
    assert base64.b64decode(newer.sent[0]["AudioData"]["Data"]) == b"\x01" * FRAME
    path.media.on_close(cast(ServerConnection, newer))
    assert await path.media.send_outbound(b"\x02" * FRAME) and len(older.sent) == 1
    older.alive = False
    assert not await path.media.send_outbound(b"\x03" * FRAME)
    assert path.media.metrics.frames_dropped == 2
    assert path.media.metrics.connections == 3


def test_refusals_and_bad_messages_are_counted_and_touch_the_call() -> None:
    path = Harness()
    path.media.last_activity = 0.0
    path.media.on_message(cast(ServerConnection, None), b"{not json")
    path.media.on_refused("bad_token")
    assert path.media.last_activity > 0.0
    assert path.media.metrics.invalid_messages == {"invalid_json": 1}
    assert path.media.metrics.protocol_errors == {"bad_token": 1}
