"""Security review [5/11]: hostile media input must not break a call's persistence, memory or
metrics. The actor runs in-process here (no Ray), on a real Redis and the embedded archive."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import numpy as np
import orjson
import pytest

from actors.acs_media import MAX_TRANSCRIPT_CHARS
from actors.call_actor import CallActor
from actors.config import CallActorConfig
from actors.stream_server import ServerConnection
from storage.settings import Settings
from storage.sqlite_archive import SqliteArchive
from tests.helpers import eventually

CALLER = "4:+14255550123"


def audio_msg(n: int, *, timestamp: str = "", participant: str = CALLER, size: int = 640) -> str:
    pcm = np.full(size // 2, n, dtype="<i2").tobytes()
    body = {
        "timestamp": timestamp,
        "participantRawID": participant,
        "data": base64.b64encode(pcm).decode(),
        "silent": False,
    }
    return orjson.dumps({"kind": "AudioData", "audioData": body}).decode()


def metadata_msg(sample_rate: int, length: int) -> str:
    body = {
        "subscriptionId": "s",
        "encoding": "PCM",
        "sampleRate": sample_rate,
        "channels": 1,
        "length": length,
    }
    return orjson.dumps({"kind": "AudioMetadata", "audioMetadata": body}).decode()


def dtmf_msg(data: str) -> str:
    return orjson.dumps({"kind": "DtmfData", "dtmfData": {"data": data}}).decode()


def transcript_msg(text: str) -> str:
    body = {"text": text, "participantRawID": CALLER, "resultStatus": "Final"}
    return orjson.dumps({"kind": "TranscriptionData", "transcriptionData": body}).decode()


def feed(actor: CallActor, *messages: str) -> None:
    """As the stream server does: one inbound ACS message at a time to the actor's media path (the
    connection is unused)."""
    for raw in messages:
        actor.media.on_message(cast(ServerConnection, None), raw.encode())


@pytest.fixture
def config(actor_config: Callable[..., CallActorConfig]) -> CallActorConfig:
    return actor_config(
        call_idle_timeout_s=60.0,
        checkpoint_interval_s=0.1,
        heartbeat_interval_s=0.2,
    )


@pytest.fixture
async def actor(config: CallActorConfig) -> AsyncIterator[CallActor]:
    call = CallActor(f"call-{uuid.uuid4().hex[:12]}", config)
    await call.activate({"caller_id": CALLER[2:], "caller_display_name": "Ada L"})
    await call.info()  # settles the activation now: its session write lands before the test's
    yield call
    if not call.finished.is_set():
        await call.shutdown("test")


def bare_actor(**changes: Any) -> CallActor:
    """An actor never activated: enough for the per-message path, which touches no storage."""
    return CallActor(
        "call-bare",
        CallActorConfig.from_settings(Settings(), redis_url="redis://unused", **changes),
    )


def loops_alive(actor: CallActor) -> bool:
    return all(not task.done() for task in actor._loops)


async def assert_ended_cleanly(
    actor: CallActor, redis_mgr: Any, config: CallActorConfig
) -> dict[str, Any]:
    """Shut the call down; it must archive, summarise, mark its session ended, free its lease."""
    await actor.shutdown("test")
    assert actor.finished.is_set()
    session = await redis_mgr.load_call_session(actor.call_id)
    assert session is not None and session["actor"]["ended"] is True
    assert await redis_mgr.get_affinity(actor.call_id) is None
    summary = await redis_mgr.get_call_summary(actor.call_id)
    assert summary is not None and summary["archived_to"] == "archive"
    archive = SqliteArchive(config.storage.archive_path)
    try:
        doc = await archive.get_transcript(actor.call_id)
    finally:
        await archive.close()
    assert doc is not None and doc["end_reason"] == "test"
    return doc


# -- 1. oversized DTMF and persistence --------------------------------------------------------


def test_dtmf_must_be_one_tone_and_is_bounded_per_call() -> None:
    call = bare_actor(max_dtmf_tones=4)
    feed(call, *[dtmf_msg("1" * 60_000)] * 20)  # the attack: twenty 60 KB "tones"
    feed(call, dtmf_msg("12"), dtmf_msg("x"), dtmf_msg(""), dtmf_msg("pound pound"))
    feed(call, dtmf_msg("5"), dtmf_msg("#"), dtmf_msg("pound"), dtmf_msg("Asterisk"))
    feed(call, dtmf_msg("9"))  # one tone too many
    assert call.media.dtmf == ["5", "#", "pound", "Asterisk"]
    assert call.metrics.snapshot()["invalid_messages"] == {"bad_dtmf": 24, "dtmf_limit": 1}


async def test_dtmf_flood_leaves_persistence_and_the_end_of_call_intact(
    actor: CallActor, redis_mgr: Any, config: CallActorConfig
) -> None:
    feed(actor, *[dtmf_msg("1" * 60_000)] * 20, dtmf_msg("7"))
    await eventually(lambda: _stored_dtmf(redis_mgr, actor.call_id, ["7"]))
    assert actor.metrics.invalid_messages["bad_dtmf"] == 20
    assert loops_alive(actor)
    doc = await assert_ended_cleanly(actor, redis_mgr, config)
    assert doc["metadata"]["dtmf"] == ["7"]


async def _stored_dtmf(redis_mgr: Any, call_id: str, tones: list[str]) -> bool:
    session = await redis_mgr.load_call_session(call_id)
    return session is not None and session["actor"]["dtmf"] == tones


async def test_a_calls_opening_events_leave_the_newest_session_stored(
    actor: CallActor, redis_mgr: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ACS delivers a call's opening events together, and each changes the call session. Here
    # the first write is the slowest, as on a busy Redis: writes in flight together could land
    # out of order and leave the older session stored.
    store = actor._redis.store_call_session  # type: ignore[union-attr]
    delays = iter([0.2])

    async def first_write_slow(call_id: str, session: dict[str, Any]) -> None:
        await asyncio.sleep(next(delays, 0.0))
        await store(call_id, session)

    monkeypatch.setattr(actor._redis, "store_call_session", first_write_slow)
    caller = {"identifier": {"rawId": CALLER}, "isMuted": False}
    opening = [
        {"id": "e1", "type": "Microsoft.Communication.CallConnected", "data": {}},
        {
            "id": "e2",
            "type": "Microsoft.Communication.ParticipantsUpdated",
            "data": {"sequenceNumber": 1, "participants": [caller]},
        },
    ]
    await asyncio.gather(*(actor.handle_event(e) for e in opening))
    state = (await redis_mgr.load_call_session(actor.call_id))["actor"]["state"]
    assert state["status"] == "connected"
    assert [p["raw_id"] for p in state["participants"]] == [CALLER]
    assert not actor._session_dirty


async def test_a_session_too_large_to_store_still_ends_archives_and_releases(
    actor: CallActor, redis_mgr: Any, config: CallActorConfig
) -> None:
    # Past the call session's 1 MiB limit by any route: every later store of it is refused.
    actor.media.dtmf.extend(["1" * 60_000] * 20)
    actor._session_changed()
    await eventually(lambda: actor.metrics.storage_failures["store_session"] == 1)
    await eventually(lambda: not actor._session_dirty)  # the core of the session was stored
    feed(actor, dtmf_msg("5"))
    await eventually(lambda: actor.metrics.storage_failures["store_session"] == 2)
    assert loops_alive(actor)  # the checkpoint loop went on
    session = await redis_mgr.load_call_session(actor.call_id)  # what a restart needs, kept
    assert session["actor"]["epoch"] == actor.epoch and session["actor"]["ended"] is False
    doc = await assert_ended_cleanly(actor, redis_mgr, config)
    assert len(doc["metadata"]["dtmf"]) == 21  # the archive has no such limit


async def test_a_session_that_cannot_be_serialised_still_ends_and_releases(
    actor: CallActor, redis_mgr: Any
) -> None:
    actor.incoming["unserialisable"] = object()
    actor._session_changed()
    await eventually(lambda: actor.metrics.storage_failures["store_session"] >= 1)
    assert loops_alive(actor)
    await actor.shutdown("test")
    session = await redis_mgr.load_call_session(actor.call_id)
    assert session is not None and session["actor"]["ended"] is True
    assert await redis_mgr.get_affinity(actor.call_id) is None
    summary = await redis_mgr.get_call_summary(actor.call_id)
    assert summary is not None and summary["archived_to"] == "failed"  # an invalid document
    assert actor.metrics.storage_failures["transcript"] == 1


# -- 2. one transcription message inflating the actor -----------------------------------------


async def test_a_60_kb_transcription_is_capped_before_the_responder_and_the_speaker(
    actor: CallActor, redis_mgr: Any, caplog: pytest.LogCaptureFixture
) -> None:
    words = "please read this back to me " * 2200  # ~60 KB: just under the message limit
    feed(actor, transcript_msg(words))
    cm = actor._cm
    assert cm is not None
    await eventually(lambda: len(cm.history) >= 1 and len(actor.media.outbound) > 0)
    await actor.replies.stop()  # barge-in: the reply is recorded with what was spoken of it
    await eventually(lambda: len(cm.history) >= 2)
    user, reply = cm.history[0], cm.history[1]
    assert user.text == words[:MAX_TRANSCRIPT_CHARS]
    assert reply.role == "assistant" and reply.meta == {"cut": True}
    assert reply.text.startswith("Hello Ada L. You said: please read this back")
    assert len(reply.text) < len(user.text)  # only the sentences begun before the cut
    assert actor.metrics.snapshot()["transcripts_truncated"] == 1
    assert not [r for r in caplog.records if "speaking failed" in r.getMessage()]


# -- 3. AudioMetadata may not redeclare the frame length -------------------------------------


def test_audio_metadata_cannot_redeclare_the_frame_length() -> None:
    call = bare_actor()  # pcm16KMono: 640-byte frames
    feed(call, metadata_msg(16000, 640))  # agrees: accepted, changes nothing
    feed(call, metadata_msg(16000, 320), metadata_msg(24000, 960), metadata_msg(16000, 64_000))
    feed(call, audio_msg(1), audio_msg(2))
    snap = call.metrics.snapshot()
    assert snap["invalid_messages"] == {"bad_metadata": 3}
    assert snap["frames_in"] == 2
    feed(call, audio_msg(3, size=320))  # nor did it make shorter frames acceptable
    assert call.metrics.snapshot()["invalid_messages"]["bad_frame_length"] == 1


def test_24k_call_accepts_its_own_metadata() -> None:
    call = bare_actor(audio_format="pcm24KMono")
    feed(call, metadata_msg(24000, 960), metadata_msg(16000, 640), audio_msg(1, size=960))
    snap = call.metrics.snapshot()
    assert snap["invalid_messages"] == {"bad_metadata": 1} and snap["frames_in"] == 1


# -- 4. metrics an attacker (or a bad clock) cannot skew --------------------------------------


def test_forged_frame_timestamps_are_counted_not_measured() -> None:
    call = bare_actor()
    feed(
        call,
        audio_msg(1, timestamp="0001-01-01T00:00:00.000Z"),
        audio_msg(2, timestamp="9999-12-31T23:59:59.999Z"),
        audio_msg(3, timestamp="not a time"),
    )
    snap = call.metrics.snapshot()
    assert snap["frames_in"] == 3 and snap["bad_timestamps"] == 2
    assert snap["backlog_wait_ms_max"] == 0.0 and snap["backlog_frames"] == 0
    assert snap["frame_latency_ms_p99"] is None


def test_ring_wrap_around_is_not_frame_loss() -> None:
    call = bare_actor(ring_seconds=0.2)  # the ring holds 10 frames
    feed(call, *(audio_msg(i) for i in range(30)))
    snap = call.metrics.snapshot()
    assert snap["frames_in"] == 30
    assert snap["frames_dropped"] == 0 and snap["ring_overwritten_frames"] == 20


def test_a_frame_without_a_ring_is_loss() -> None:
    call = bare_actor(max_participants=1)
    feed(call, audio_msg(1), audio_msg(2, participant="4:+2"))
    assert call.metrics.snapshot()["frames_dropped"] == 1
