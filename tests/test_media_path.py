"""MediaPath, the per-frame path of a call, as a plain object: no Ray, no Redis, no sockets."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import orjson

from actors.acs_media import TranscriptionData
from actors.config import CallActorConfig
from actors.media_path import BARGE_IN_FRAMES, MediaPath
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
    """A media path with recording callbacks."""

    def __init__(self, **changes: Any) -> None:
        config = CallActorConfig.from_settings(Settings(), redis_url="redis://unused", **changes)
        self.finals: list[TranscriptionData] = []
        self.session_changes = 0
        self.media = MediaPath(
            config, LiveMetrics(), on_final=self._on_final, on_session_change=self._changed
        )

    async def _on_final(self, msg: TranscriptionData) -> None:
        self.finals.append(msg)

    def _changed(self) -> None:
        self.session_changes += 1

    def feed(self, *docs: dict[str, Any], conn: FakeConnection | None = None) -> None:
        for doc in docs:
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


def test_words_said_before_the_reply_began_do_not_interrupt_it() -> None:
    """Chaos finding: a call answered while its actor started slowly delivers the caller's line
    in a burst with its final transcript; the reply starts before the burst's last frames."""
    path = Harness()
    path.media.speaker = cast(Any, FakeSpeaker())
    path.media.outbound.enqueue(b"\x00" * FRAME * 10)
    said = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    path.feed(*[audio(2000, timestamp=said)] * (2 * BARGE_IN_FRAMES))
    assert path.media.metrics.barge_ins == 0 and len(path.media.outbound) == 10


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
