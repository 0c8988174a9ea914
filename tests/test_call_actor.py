"""CallActor on a real local Ray, real Redis and the embedded archive (and once on Cosmos)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import ray

from actors import call_actor
from actors.acs_media import TranscriptionData
from actors.activation import aget_or_activate, get_call_actor
from actors.call_actor import CallActor
from actors.call_state import CallEnded
from actors.cluster import list_call_actors
from actors.config import CallActorConfig
from actors.stream_client import StreamConnection, open_stream
from actors.stream_protocol import FrameKind, HandshakeRefused, encode_frame
from simulator.devstack.local_redis import LocalRedisServer
from storage.affinity import Endpoint
from storage.errors import StaleEpochError
from storage.redis_manager import AsyncAzureRedisManager
from storage.sqlite_archive import SqliteArchive
from tests.helpers import eventually

pytestmark = pytest.mark.slow  # every test runs call actors in local Ray

CALLER = "+14255550123"
FRAME = 640  # 20 ms at 16 kHz


# -- helpers ----------------------------------------------------------------------------------


def frame_pcm(n: int) -> bytes:
    """A frame whose samples all carry ``n``: order is visible in the ring snapshot."""
    return np.full(FRAME // 2, n, dtype="<i2").tobytes()


def audio_msg(pcm: bytes, participant: str | None = "4:" + CALLER, silent: bool = False) -> str:
    body: dict[str, Any] = {
        "timestamp": "2024-11-15T19:16:12.925Z",
        "data": base64.b64encode(pcm).decode(),
        "silent": silent,
    }
    if participant:
        body["participantRawID"] = participant
    return orjson.dumps({"kind": "AudioData", "audioData": body}).decode()


def transcript_msg(text: str, final: bool = True, confidence: float = 0.9) -> str:
    body = {
        "text": text,
        "format": "display",
        "confidence": confidence,
        "offset": 1000,
        "duration": 2000,
        "participantRawID": "4:" + CALLER,
        "resultStatus": "Final" if final else "Intermediate",
    }
    return orjson.dumps({"kind": "TranscriptionData", "transcriptionData": body}).decode()


def event(name: str, event_id: str | None = None, **data: Any) -> dict[str, Any]:
    return {"id": event_id or uuid.uuid4().hex, "type": name, "data": data}


def incoming() -> dict[str, Any]:
    return {
        "caller": {"kind": "phoneNumber", "raw_id": "4:" + CALLER},
        "callee": {"kind": "phoneNumber", "raw_id": "4:+18005550100"},
        "caller_id": CALLER,
        "server_call_id": "server-1",
        "correlation_id": "corr-1",
        "caller_display_name": "Ada L",
    }


async def info(handle: Any) -> dict[str, Any]:
    return await handle.info.remote()  # type: ignore[no-any-return]


async def connect(call_id: str, ep: Endpoint, stream: str) -> StreamConnection:
    return await open_stream(ep.host, ep.port, ep.token, call_id, stream)


async def recv_acs(conn: StreamConnection, kind: str, timeout: float = 20.0) -> dict[str, Any]:
    """The next outbound ACS message of ``kind`` (AudioData / StopAudio)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await conn.recv()
            assert frame is not None, "stream closed"
            if frame.kind is FrameKind.ACS:
                doc: dict[str, Any] = orjson.loads(frame.payload)
                if doc["Kind"] == kind:
                    return doc


async def gone(call_id: str, namespace: str) -> bool:
    return await asyncio.to_thread(get_call_actor, call_id, namespace) is None


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def call_ids(ray_cluster: dict[str, Any]) -> Iterator[list[str]]:
    """Call ids a test creates; any actor still alive at the end is killed (they are detached)."""
    ids: list[str] = []
    yield ids
    for call_id in ids:
        handle = get_call_actor(call_id, str(ray_cluster["namespace"]))
        if handle is not None:
            ray.kill(handle, no_restart=True)


def new_call(call_ids: list[str]) -> str:
    call_id = f"call-{uuid.uuid4().hex[:12]}"
    call_ids.append(call_id)
    return call_id


@pytest.fixture
def config(
    actor_config: Callable[..., CallActorConfig], ray_cluster: dict[str, Any]
) -> CallActorConfig:
    return actor_config(
        call_idle_timeout_s=60.0,
        checkpoint_interval_s=0.3,
        heartbeat_interval_s=0.5,
        ray_namespace=str(ray_cluster["namespace"]),
    )


@pytest.fixture
async def archive(config: CallActorConfig) -> AsyncIterator[SqliteArchive]:
    store = SqliteArchive(config.storage.archive_path)
    yield store
    await store.close()


# -- tests ------------------------------------------------------------------------------------


async def test_full_lifecycle_to_archived_transcript(
    config: CallActorConfig, call_ids: list[str], redis_mgr: Any, archive: SqliteArchive
) -> None:
    await archive.put_profile({"user_id": CALLER, "name": "Ada"})
    call_id = new_call(call_ids)
    # As the gateway does: the call session holds the IncomingCall before the actor exists.
    await redis_mgr.store_call_session(call_id, incoming() | {"call_id": call_id})
    handle = await aget_or_activate(call_id, config, incoming=incoming())
    ep = await handle.activate.remote(None)  # idempotent: same endpoint, same epoch
    first = await info(handle)
    assert first["endpoint"] == ep and first["state"] == "ringing" and first["restarts"] == 0
    record = await redis_mgr.get_affinity(call_id)
    assert (record.host, record.port, record.token, record.epoch) == (
        ep.host,
        ep.port,
        ep.token,
        ep.epoch,
    )
    assert first["context"]["profile"]["name"] == "Ada"
    listed = await asyncio.to_thread(list_call_actors, config.namespace, with_info=True)
    assert any(row["call_id"] == call_id and row["state"] == "ringing" for row in listed)

    connected = event("Microsoft.Communication.CallConnected", "ev-1")
    await handle.handle_event.remote(connected)
    await handle.handle_event.remote(connected)  # ACS delivers duplicates
    await handle.handle_event.remote(
        event(
            "ParticipantsUpdated",
            sequenceNumber=1,
            participants=[{"identifier": {"rawId": "4:" + CALLER}, "isMuted": False}],
        )
    )
    media = await connect(call_id, ep, "media")
    transcription = await connect(call_id, ep, "transcription")
    for i in range(5):
        await media.send_acs(audio_msg(frame_pcm(i)))
    await transcription.send_acs(transcript_msg("I need help with my bill", confidence=0.8))
    reply = await recv_acs(media, "AudioData")  # the spoken reply, paced back on the media stream
    assert len(base64.b64decode(reply["AudioData"]["Data"])) == FRAME
    # The caller talks over the first reply (barge-in), then lets each next one play out.
    for n in (4, 6):
        await transcription.send_acs(transcript_msg("again"))
        await eventually(lambda n=n: _turns_at_least(handle, n))
    now = await info(handle)
    assert now["state"] == "connected" and now["participants"] == ["4:" + CALLER]
    assert now["metrics"]["duplicate_events"] == 1 and now["metrics"]["frames_in"] == 5
    assert now["metrics"]["checkpoints"] >= 1

    await handle.handle_event.remote(event("CallDisconnected"))
    await eventually(lambda: gone(call_id, config.namespace))
    doc = await archive.get_transcript(call_id)
    assert doc is not None
    turns = doc["turns"]
    assert [t["seq"] for t in turns] == list(range(1, 7))
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    assert turns[0]["text"] == "I need help with my bill" and turns[0]["confidence"] == 0.8
    assert turns[0]["participant"] == "4:" + CALLER
    assert turns[1]["text"] == "Hello Ada." and turns[1]["meta"] == {"cut": True}
    assert turns[3]["text"] == turns[5]["text"] == "You said: again"
    assert all(a["timestamp"] <= b["timestamp"] for a, b in itertools.pairwise(turns))
    assert doc["end_reason"] == "disconnected"
    assert doc["metadata"]["caller"]["id"] == CALLER
    assert doc["metrics"]["frames_in"] == 5 and doc["metrics"]["turns"] == 6
    assert doc["metrics"]["tts_hits"] >= 1 and doc["metrics"]["replies_cut"] == 1
    summary = await redis_mgr.get_call_summary(call_id)
    assert summary["turns"] == 6 and summary["archived_to"] == "archive"
    assert await redis_mgr.get_affinity(call_id) is None
    analytics = await archive.list_analytics(call_id)
    assert analytics[0]["user_turns"] == 3
    actions = [entry["action"] for entry in await archive.list_audit(call_id)]
    assert {"activated", "CallConnected", "CallDisconnected", "ended"} <= set(actions)
    # A late event for the ended call must not resurrect it.
    with pytest.raises(CallEnded):
        await aget_or_activate(call_id, config)
    await media.close()
    await transcription.close()


async def _turns_at_least(handle: Any, n: int) -> bool:
    return (await info(handle))["turns"] >= n


async def test_killed_actor_restarts_with_every_turn_and_fences_old_epoch(
    config: CallActorConfig, call_ids: list[str], redis_mgr: Any, archive: SqliteArchive
) -> None:
    call_id = new_call(call_ids)
    handle = await aget_or_activate(call_id, config, incoming=incoming())
    ep1 = await handle.activate.remote(None)
    await handle.handle_event.remote(event("CallConnected"))
    transcription = await connect(call_id, ep1, "transcription")
    for text in ("first question", "second question"):
        await transcription.send_acs(transcript_msg(text))
    await eventually(lambda: _persisted_turns(redis_mgr, call_id, 4))
    before = await info(handle)

    os.kill(before["pid"], signal.SIGKILL)
    assert await transcription.recv() is None  # the old endpoint died with the process

    handle2 = await aget_or_activate(call_id, config)
    ep2 = await handle2.activate.remote(None)
    after = await info(handle2)
    assert after["pid"] != before["pid"] and after["restarts"] == 1
    assert ep2.epoch > ep1.epoch and ep2.token != ep1.token
    assert after["turns"] == 4 and after["state"] == "connected"
    assert after["context"]["caller"]["id"] == CALLER
    assert (await redis_mgr.get_affinity(call_id)).epoch == ep2.epoch
    # The dead incarnation's epoch is fenced out of every write.
    with pytest.raises(StaleEpochError):
        await redis_mgr.checkpoint(
            call_id, epoch=ep1.epoch, context=None, new_turns=[{"role": "user", "text": "x"}]
        )
    assert not await redis_mgr.renew_affinity(call_id, ep1.epoch)
    with pytest.raises(HandshakeRefused):
        await open_stream(ep2.host, ep2.port, ep1.token, call_id, "transcription")

    again = await connect(call_id, ep2, "transcription")
    await again.send_acs(transcript_msg("third question"))
    await eventually(lambda: _turns_at_least(handle2, 6))
    await handle2.shutdown.remote("test")
    await eventually(lambda: gone(call_id, config.namespace))
    doc = await archive.get_transcript(call_id)
    assert doc is not None
    assert [t["text"] for t in doc["turns"] if t["role"] == "user"] == [
        "first question",
        "second question",
        "third question",
    ]
    assert [t["seq"] for t in doc["turns"]] == list(range(1, 7))
    assert doc["metadata"]["restarts"] == 1
    actions = [entry["action"] for entry in await archive.list_audit(call_id)]
    assert "restarted" in actions
    await again.close()


async def _persisted_turns(redis_mgr: Any, call_id: str, n: int) -> bool:
    snap = await redis_mgr.load_conversation(call_id)
    return snap is not None and len(snap.turns) >= n


async def test_frames_land_in_the_ring_in_order_per_participant(
    config: CallActorConfig, call_ids: list[str]
) -> None:
    call_id = new_call(call_ids)
    handle = await aget_or_activate(call_id, config, incoming=incoming())
    ep = await handle.activate.remote(None)
    media = await connect(call_id, ep, "media")
    for i in range(60):
        await media.send_acs(audio_msg(frame_pcm(i), participant="4:+1"))
        await media.send_acs(audio_msg(frame_pcm(1000 + i), participant="4:+2"))
    await eventually(lambda: _frames_in(handle, 120))
    a = np.frombuffer(await handle.ring_snapshot.remote("4:+1"), dtype="<i2")
    b = np.frombuffer(await handle.ring_snapshot.remote("4:+2"), dtype="<i2")
    assert list(a[:: FRAME // 2]) == list(range(60))
    assert list(b[:: FRAME // 2]) == [1000 + i for i in range(60)]
    await media.close()
    await handle.shutdown.remote("test")


async def _frames_in(handle: Any, n: int) -> bool:
    return (await info(handle))["metrics"]["frames_in"] >= n


async def test_bad_input_is_counted_and_refused_without_hurting_other_calls(
    config: CallActorConfig, call_ids: list[str]
) -> None:
    small = config.with_changes(max_frame_bytes=16 * 1024, max_message_bytes=4 * 1024)
    bad_id, good_id = new_call(call_ids), new_call(call_ids)
    bad = await aget_or_activate(bad_id, small, incoming=incoming())
    good = await aget_or_activate(good_id, small, incoming=incoming())
    bad_ep = await bad.activate.remote(None)
    good_ep = await good.activate.remote(None)
    good_media = await connect(good_id, good_ep, "media")
    media = await connect(bad_id, bad_ep, "media")

    for raw in (
        "{not json",
        '{"kind":"VideoData","videoData":{}}',
        '{"kind":"AudioData","audioData":{"data":"@@@"}}',
        audio_msg(frame_pcm(1)[:100]),
        '{"kind":"DtmfData","dtmfData":{"data":"' + "1" * 5000 + '"}}',
        '{"kind":"DtmfData","dtmfData":{"data":"' + "1" * 3000 + '"}}',
        # A frame length other than the negotiated format's may not be declared...
        '{"kind":"AudioMetadata","audioMetadata":{"sampleRate":16000,"channels":1,"length":320}}',
    ):
        await media.send_acs(raw)
        await good_media.send_acs(audio_msg(frame_pcm(7)))
    # ...and does not change the frames accepted: the connection survived all of that.
    await media.send_acs(audio_msg(frame_pcm(2)))
    await eventually(lambda: _frames_in(bad, 1))
    counted = (await info(bad))["metrics"]["invalid_messages"]
    assert counted == {
        "invalid_json": 1,
        "unknown_kind": 1,
        "bad_base64": 1,
        "bad_frame_length": 1,
        "oversized": 1,
        "bad_dtmf": 1,
        "bad_metadata": 1,
    }

    # A frame longer than the limit breaks the framing: that connection is closed...
    await media.send_raw(encode_frame(FrameKind.ACS, b"x" * (20 * 1024)))
    assert await media.recv() is None
    # ...a wrong token is refused...
    with pytest.raises(HandshakeRefused) as refused:
        await open_stream(bad_ep.host, bad_ep.port, "wrong", bad_id, "media")
    assert refused.value.code == "bad_token"
    # ...and the call itself goes on with a fresh connection.
    media = await connect(bad_id, bad_ep, "media")
    await media.send_acs(audio_msg(frame_pcm(3)))
    await eventually(lambda: _frames_in(bad, 2))
    errors = (await info(bad))["metrics"]["protocol_errors"]
    assert errors == {"oversized_frame": 1, "bad_token": 1}
    ring = np.frombuffer(await bad.ring_snapshot.remote(None), dtype="<i2")
    assert list(ring[:: FRAME // 2]) == [2, 3]

    await eventually(lambda: _frames_in(good, 5))
    other = await info(good)
    assert other["metrics"]["invalid_messages"] == {} and other["metrics"]["protocol_errors"] == {}
    await media.close()
    await good_media.close()
    await bad.shutdown.remote("test")
    await good.shutdown.remote("test")


async def test_barge_in_stops_playback(config: CallActorConfig, call_ids: list[str]) -> None:
    call_id = new_call(call_ids)
    handle = await aget_or_activate(call_id, config, incoming=incoming())
    ep = await handle.activate.remote(None)
    media = await connect(call_id, ep, "media")
    transcription = await connect(call_id, ep, "transcription")
    long_request = " ".join(["please read me the whole statement"] * 20)
    await transcription.send_acs(transcript_msg(long_request))
    await recv_acs(media, "AudioData")
    await transcription.send_acs(transcript_msg("wait", final=False))  # caller talks over it
    await recv_acs(media, "StopAudio")
    now = await info(handle)
    assert now["metrics"]["barge_ins"] == 1 and now["outbound_queued"] == 0
    await media.close()
    await transcription.close()
    await handle.shutdown.remote("test")


async def test_words_after_call_disconnected_are_kept_until_the_streams_close(
    config: CallActorConfig, call_ids: list[str], archive: SqliteArchive
) -> None:
    # ACS's CallDisconnected callback can overtake the last media and transcription messages.
    call_id = new_call(call_ids)
    handle = await aget_or_activate(call_id, config, incoming=incoming())
    ep = await handle.activate.remote(None)
    media = await connect(call_id, ep, "media")
    transcription = await connect(call_id, ep, "transcription")
    await handle.handle_event.remote(event("CallDisconnected"))
    for i in range(3):
        await media.send_acs(audio_msg(frame_pcm(i)))
    await transcription.send_acs(transcript_msg("goodbye and thanks"))
    await media.close()
    await transcription.close()
    await eventually(lambda: gone(call_id, config.namespace))
    doc = await archive.get_transcript(call_id)
    assert doc is not None
    assert [t["text"] for t in doc["turns"] if t["role"] == "user"] == ["goodbye and thanks"]
    assert doc["metrics"]["frames_in"] == 3


async def test_idle_actor_ends_itself_and_archives(
    config: CallActorConfig, call_ids: list[str], archive: SqliteArchive
) -> None:
    call_id = new_call(call_ids)
    await aget_or_activate(
        call_id, config.with_changes(call_idle_timeout_s=1.0), incoming=incoming()
    )
    await eventually(lambda: gone(call_id, config.namespace))
    doc = await archive.get_transcript(call_id)
    assert doc is not None and doc["end_reason"] == "idle" and doc["turns"] == []


async def _call_after_first_turn(
    config: CallActorConfig, call_ids: list[str], text: str
) -> tuple[str, Any, dict[str, Any], Any]:
    """A live call whose first exchange (``text`` and its reply) is recorded."""
    call_id = new_call(call_ids)
    handle = await aget_or_activate(call_id, config, incoming=incoming())
    ep = await handle.activate.remote(None)
    transcription = await connect(call_id, ep, "transcription")
    await transcription.send_acs(transcript_msg(text))
    await eventually(lambda: _turns_at_least(handle, 2))
    return call_id, handle, ep, transcription


async def _user_texts_after_shutdown(
    handle: Any, call_id: str, config: CallActorConfig, archive: SqliteArchive
) -> list[str]:
    await handle.shutdown.remote("test")
    await eventually(lambda: gone(call_id, config.namespace))
    doc = await archive.get_transcript(call_id)
    assert doc is not None
    return [t["text"] for t in doc["turns"] if t["role"] == "user"]


async def test_redis_outage_mid_call_keeps_every_turn(
    config: CallActorConfig,
    call_ids: list[str],
    redis_server: LocalRedisServer,
    redis_mgr: Any,
    archive: SqliteArchive,
) -> None:
    call_id, handle, _, transcription = await _call_after_first_turn(
        config, call_ids, "before the outage"
    )
    redis_server.stop()
    try:
        await transcription.send_acs(transcript_msg("during the outage"))
        await eventually(lambda: _turns_at_least(handle, 4))
        await eventually(lambda: _checkpoint_failures(handle))
        checkpoints = (await info(handle))["metrics"]["checkpoints"]
    finally:
        redis_server.start()
    await eventually(lambda: _checkpoints_above(handle, checkpoints))  # caught up
    # The restart lost every key: history, affinity and session are written again from memory.
    await eventually(lambda: _persisted_turns(redis_mgr, call_id, 4))
    await eventually(lambda: _restored(redis_mgr, call_id))
    assert await _user_texts_after_shutdown(handle, call_id, config, archive) == [
        "before the outage",
        "during the outage",
    ]
    await transcription.close()


async def test_redis_paused_mid_call_keeps_every_turn(
    config: CallActorConfig,
    call_ids: list[str],
    redis_server: LocalRedisServer,
    redis_mgr: Any,
    archive: SqliteArchive,
) -> None:
    """A hung Redis (SIGSTOP) costs each operation its timeout, never a turn or a frame."""
    call_id, handle, ep, transcription = await _call_after_first_turn(
        config, call_ids, "before the pause"
    )
    media = await connect(call_id, ep, "media")
    assert redis_server.pid is not None
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        for i in range(50):
            await media.send_acs(audio_msg(frame_pcm(i)))
        await transcription.send_acs(transcript_msg("during the pause"))
        await eventually(lambda: _turns_at_least(handle, 4))
        await eventually(lambda: _checkpoint_failures(handle))
        assert (await info(handle))["metrics"]["frames_in"] == 50
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    await eventually(lambda: _persisted_turns(redis_mgr, call_id, 4))  # caught up
    assert await _user_texts_after_shutdown(handle, call_id, config, archive) == [
        "before the pause",
        "during the pause",
    ]
    await media.close()
    await transcription.close()


async def _restored(redis_mgr: Any, call_id: str) -> bool:
    affinity = await redis_mgr.get_affinity(call_id)
    session = await redis_mgr.load_call_session(call_id)
    return affinity is not None and session is not None and session.get("caller_id") == CALLER


async def _checkpoint_failures(handle: Any) -> bool:
    return bool((await info(handle))["metrics"]["checkpoint_failures"])


async def _checkpoints_above(handle: Any, n: int) -> bool:
    return bool((await info(handle))["metrics"]["checkpoints"] > n)


async def test_lifecycle_archives_to_cosmos(
    config: CallActorConfig, call_ids: list[str], cosmos_emulator: Any, cosmos_key: str
) -> None:
    from storage.cosmos_archive import CosmosArchive

    cosmos = config.with_changes(
        cosmos_endpoint=cosmos_emulator.endpoint,
        cosmos_key=cosmos_key,
        cosmos_verify_tls=False,
        cosmos_database=f"db{uuid.uuid4().hex[:8]}",
    )
    call_id = new_call(call_ids)
    handle = await aget_or_activate(call_id, cosmos, incoming=incoming())
    ep = await handle.activate.remote(None)
    await handle.handle_event.remote(event("CallConnected"))
    transcription = await connect(call_id, ep, "transcription")
    await transcription.send_acs(transcript_msg("archive me in cosmos"))
    await eventually(lambda: _turns_at_least(handle, 2))
    await handle.handle_event.remote(event("CallDisconnected"))
    await eventually(lambda: gone(call_id, config.namespace))
    store = CosmosArchive.from_settings(cosmos.storage.cosmos)
    try:
        doc = await store.get_transcript(call_id)
    finally:
        await store.close()
    assert doc is not None
    assert [t["text"] for t in doc["turns"]] == [
        "archive me in cosmos",
        "Hello Ada L. You said: archive me in cosmos",  # no profile: the ACS display name
    ]
    await transcription.close()


async def test_activation_settles_later_unless_something_needs_it(
    actor_config: Callable[..., CallActorConfig],
    redis_mgr: AsyncAzureRedisManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In process (no Ray): the session record and the caller profile wait (a burst's other
    set-ups go first), until something needs them (here ``info``; a turn and the end of the
    call do the same)."""
    monkeypatch.setattr(call_actor, "SETTLE_DELAY_S", 60.0)
    actor = CallActor(f"call-{uuid.uuid4().hex[:12]}", actor_config())
    await actor.activate(incoming())
    try:
        await asyncio.sleep(0.3)  # what settling once took, many times over
        assert await redis_mgr.load_call_session(actor.call_id) is None
        about = await actor.info()  # needs the caller's context: settles now
        assert about["context"]["caller"]["id"] == CALLER
        session = await redis_mgr.load_call_session(actor.call_id)
        assert session is not None and session["actor"]["epoch"] == about["epoch"]
    finally:
        await actor.shutdown("test")


async def test_turns_keep_their_order_across_the_end_of_settling(
    actor_config: Callable[..., CallActorConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: a turn heard while the activation settles waits for it; one heard just as
    it ends must not overtake the first (a caller sending faster than real time lost its first
    line's place this way)."""
    monkeypatch.setattr(call_actor, "SETTLE_DELAY_S", 60.0)
    actor = CallActor(f"call-{uuid.uuid4().hex[:12]}", actor_config())
    await actor.activate(incoming())
    gate = asyncio.Event()

    async def settling() -> None:  # ends when the test says
        await gate.wait()

    actor._settling = asyncio.create_task(settling())
    try:
        first = asyncio.create_task(actor._user_turn(heard("first")))
        await asyncio.sleep(0)  # the first turn waits for the settling
        gate.set()  # settling ends on the next pass of the loop ...
        second = asyncio.create_task(actor._user_turn(heard("second")))  # ... as this is heard
        await asyncio.wait_for(asyncio.gather(first, second), 60)
        assert actor._cm is not None
        said = [t.text for t in actor._cm.history if t.role == "user"]
        assert said == ["first", "second"]
    finally:
        await actor.shutdown("test")


def heard(text: str) -> TranscriptionData:
    return TranscriptionData(text, final=True, confidence=0.9, participant="4:" + CALLER)


async def crash(actor: CallActor) -> None:
    """In process, what SIGKILL does to an actor's process once its activation has settled
    (the stored session names it, as a crash leaves it): nothing of it runs on."""
    await actor.info()
    for task in actor._loops:
        task.cancel()
    assert actor._server is not None
    await actor._server.close()


async def archived(config: CallActorConfig, call_id: str) -> dict[str, Any] | None:
    store = SqliteArchive(config.storage.archive_path)
    try:
        return await store.get_transcript(call_id)
    finally:
        await store.close()


async def test_a_restarted_actor_waits_for_the_streams_before_it_ends_the_call(
    actor_config: Callable[..., CallActorConfig],
) -> None:
    """In process: the caller hangs up while the actor's process restarts. CallDisconnected
    reaches the successor before the gateway has reconnected to replay what the caller said
    meanwhile (gateway/stream_bridge.py): the successor waits for those streams, briefly,
    before it archives."""
    config = actor_config()  # the default end_drain_s: 2 s
    call_id = f"call-{uuid.uuid4().hex[:12]}"
    crashed = CallActor(call_id, config)
    await crashed.activate(incoming())
    await crash(crashed)

    successor = CallActor(call_id, config)
    endpoint = await successor.activate(None)
    assert successor.restarts == 1
    await successor.handle_event(event("CallDisconnected"))
    await asyncio.sleep(0.3)  # the gateway's reconnect comes a moment later
    transcription = await connect(call_id, endpoint, "transcription")
    await transcription.send_acs(transcript_msg("said while the actor restarted"))
    await transcription.close()
    await asyncio.wait_for(successor.finished.wait(), 20)
    doc = await archived(config, call_id)
    assert doc is not None and doc["end_reason"] == "disconnected"
    assert [t["text"] for t in doc["turns"] if t["role"] == "user"] == [
        "said while the actor restarted"
    ]


async def test_an_event_binds_a_restarted_spare_to_its_call_again(
    actor_config: Callable[..., CallActorConfig],
) -> None:
    """In process: a spare's process restarted by Ray knows no call (spares are created
    without one). The caller's CallDisconnected can reach it before the gateway's stream
    reconnect binds it again: the event, delivered for its call, binds it and ends the call."""
    config = actor_config()
    call_id = f"call-{uuid.uuid4().hex[:12]}"
    crashed = CallActor(None, config)
    await crashed.bind(call_id, incoming())
    await crash(crashed)

    restarted = CallActor(None, config)
    await restarted.handle_event(event("CallDisconnected"), call_id)
    assert restarted.call_id == call_id and restarted.restarts == 1
    await asyncio.wait_for(restarted.finished.wait(), 20)
    doc = await archived(config, call_id)
    assert doc is not None and doc["end_reason"] == "disconnected"
