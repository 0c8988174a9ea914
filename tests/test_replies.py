"""Replies: a reply spoken sentence by sentence while it is generated, barge-in, fallbacks.

The voice is the real PcmSpeaker on a real Redis (its TTS cache) and outbound queue; the model
is the stand-in through the real ``openai`` client, or a responder of the test's own.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import orjson
import pytest

from actors.call_actor import CallActor
from actors.config import CallActorConfig
from actors.llm_responder import OpenAIResponder
from actors.media_path import BARGE_IN_FRAMES
from actors.metrics import LiveMetrics
from actors.outbound_audio import OutboundQueue
from actors.replies import FALLBACKS, Replies
from actors.responder import EchoResponder, Responder
from actors.speaker import PcmSpeaker
from actors.stream_server import ServerConnection
from simulator.llm_api import LlmStandIn, ScriptedReply
from storage.conversation import Turn
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import AssistantSettings
from storage.sqlite_archive import SqliteArchive
from tests.helpers import eventually

HISTORY = [Turn(seq=1, role="user", text="Where is my order?", timestamp=0.0)]
LONG = "This sentence is long enough to take a couple of seconds to say aloud. "


class Gated:
    """Yields its first sentences, then waits for the test to open the gate (or forever)."""

    def __init__(self, before: str, after: str = "") -> None:
        self.before, self.after = before, after
        self.gate = asyncio.Event()
        self.closed = False

    async def stream(
        self, context: Mapping[str, Any], history: Sequence[Turn]
    ) -> AsyncIterator[str]:
        try:
            yield self.before
            await self.gate.wait()
            yield self.after
        finally:
            self.closed = True


def jumping_clock() -> Callable[[], float]:
    """Each reading 1,000 s after the last: a reply's audio is always over (no waiting)."""
    ticks = itertools.count(start=1000.0, step=1000.0)
    return lambda: next(ticks)


def make_replies(
    responder: Responder,
    redis_mgr: AsyncAzureRedisManager,
    clock: Callable[[], float] | None = None,
) -> tuple[Replies, OutboundQueue, LiveMetrics]:
    queue = OutboundQueue(frame_bytes=640, max_frames=100_000)
    metrics = LiveMetrics()
    replies = (
        Replies(responder, metrics) if clock is None else Replies(responder, metrics, clock=clock)
    )
    replies.voice = PcmSpeaker(
        redis_mgr, queue, voice="v", audio_format="pcm16KMono", sample_rate=16000
    )
    return replies, queue, metrics


def openai_responder(llm: LlmStandIn, **values: Any) -> OpenAIResponder:
    settings = AssistantSettings(
        responder="openai", base_url=llm.base_url, api_key="test-key", **values
    )
    return OpenAIResponder(settings)


async def test_the_first_sentence_is_spoken_before_the_reply_is_generated(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    gated = Gated("Let me check. ", "It is on its way.")
    replies, queue, metrics = make_replies(gated, redis_mgr, jumping_clock())
    task = asyncio.create_task(replies.reply({}, HISTORY, heard_at=0.0))
    await eventually(lambda: len(queue) > 0)  # spoken while the model still generates
    assert replies.speaking and not task.done()
    gated.gate.set()
    said = await task
    assert said is not None and said.text == "Let me check. It is on its way."
    assert not said.cut and said.failure is None and said.meta() == {}
    snapshot = metrics.snapshot()
    assert snapshot["replies"] == 1 and snapshot["reply_first_audio_ms_p50"] is not None
    assert snapshot["reply_ttft_ms_p50"] is not None


async def test_barge_in_during_generation_cancels_it_and_keeps_what_was_spoken(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    gated = Gated(LONG)  # the gate never opens: the model "thinks" until the caller talks
    replies, queue, metrics = make_replies(gated, redis_mgr)
    task = asyncio.create_task(replies.reply({}, HISTORY, heard_at=0.0))
    await eventually(lambda: len(queue) > 0)
    await replies.stop()  # what the media path does on barge-in
    said = await task
    assert said is not None and said.cut and said.text == LONG.strip()
    assert said.meta() == {"cut": True}
    assert gated.closed and len(queue) == 0 and not replies.speaking
    assert metrics.replies_cut == 1


async def test_barge_in_during_playback_keeps_only_the_sentences_begun(
    redis_mgr: AsyncAzureRedisManager, llm: LlmStandIn
) -> None:
    llm.script(LONG * 3)
    replies, queue, _ = make_replies(openai_responder(llm), redis_mgr)
    task = asyncio.create_task(replies.reply({}, HISTORY, heard_at=0.0))
    # Generated whole (three sentences queued), still playing the first.
    await eventually(lambda: len(queue) > 3 * 100)
    assert not task.done()
    await replies.stop()
    said = await task
    assert said is not None and said.cut and said.text == LONG.strip()


@pytest.mark.parametrize("fault", ["timeout", "refusal", "rate_limit", "drop"])
async def test_a_failing_model_gives_a_short_fallback_counted_by_reason(
    redis_mgr: AsyncAzureRedisManager, llm: LlmStandIn, fault: str
) -> None:
    llm.script(
        ScriptedReply(text="Sure. Your order is on its way.", fault=fault, drop_after_tokens=3),  # type: ignore[arg-type]
        "And this one works.",
    )
    responder = openai_responder(llm, timeout_s=0.3)
    replies, queue, metrics = make_replies(responder, redis_mgr, jumping_clock())
    said = await replies.reply({}, HISTORY, heard_at=0.0)
    reason = {"refusal": "refused", "rate_limit": "rate_limited", "drop": "dropped"}.get(
        fault, fault
    )
    assert said is not None and said.failure == reason and not said.cut
    spoken_first = "Sure. " if fault == "drop" else ""  # the sentence finished before the drop
    assert said.text == spoken_first + FALLBACKS[reason]
    assert said.meta() == {"fallback": reason} and len(queue) > 0
    assert metrics.reply_failures == {reason: 1}
    if fault != "rate_limit":  # the call goes on: the next reply is the model's again
        again = await replies.reply({}, HISTORY, heard_at=0.0)
        assert again is not None and again.text == "And this one works."
    await responder.aclose()


async def test_a_broken_responder_of_ones_own_is_an_error_fallback(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    class Broken:
        async def stream(
            self, context: Mapping[str, Any], history: Sequence[Turn]
        ) -> AsyncIterator[str]:
            yield "Fine so far. "
            raise KeyError("bug")

    replies, _, metrics = make_replies(Broken(), redis_mgr, jumping_clock())
    said = await replies.reply({}, HISTORY, heard_at=0.0)
    assert said is not None and said.text == "Fine so far. " + FALLBACKS["error"]
    assert metrics.reply_failures == {"error": 1}


async def test_tokens_in_and_out_are_counted(
    redis_mgr: AsyncAzureRedisManager, llm: LlmStandIn
) -> None:
    llm.script("Two tokens.")
    responder = openai_responder(llm)
    replies, _, metrics = make_replies(responder, redis_mgr, jumping_clock())
    await replies.reply({}, HISTORY, heard_at=0.0)
    assert metrics.tokens_out == 2 and metrics.tokens_in > 0
    await responder.aclose()


async def test_an_ending_call_cuts_the_reply_and_starts_no_other(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    gated = Gated(LONG)
    replies, _, _ = make_replies(gated, redis_mgr)
    task = asyncio.create_task(replies.reply({}, HISTORY, heard_at=0.0))
    await eventually(lambda: replies.speaking and gated.before and not gated.closed)
    replies.end()
    said = await task
    assert said is not None and said.cut
    assert await replies.reply({}, HISTORY, heard_at=0.0) is None


class AcsLikeVoice:
    """A voice that cannot tell how long its audio is (ACS synthesizes it) and reports each
    utterance finished, as PlayCompleted does."""

    def __init__(self) -> None:
        self.playing = 0
        self.said: list[str] = []

    @property
    def speaking(self) -> bool:
        return self.playing > 0

    async def speak(self, text: str) -> None:
        self.said.append(text)
        self.playing += 1

    async def stop(self) -> None:
        self.playing = 0

    def play_finished(self) -> None:
        self.playing -= 1

    async def close(self) -> None:
        pass


async def test_without_audio_lengths_the_reply_lasts_until_the_voice_reports_it_played() -> None:
    replies = Replies(EchoResponder(), LiveMetrics())
    voice = replies.voice = AcsLikeVoice()
    task = asyncio.create_task(replies.reply({"profile": {"name": "Ada"}}, HISTORY, heard_at=0.0))
    await eventually(lambda: len(voice.said) == 2)
    assert voice.said == ["Hello Ada.", "You said: Where is my order?"]
    replies.play_finished()
    await asyncio.sleep(0.05)
    assert not task.done()  # one of two played
    replies.play_finished()
    said = await task
    assert said is not None and said.text == "Hello Ada. You said: Where is my order?"


# -- end to end: a call actor (in-process), real Redis, the archive, the model stand-in -----------

CALLER = "4:+14255550123"


def acs_message(kind: str, body: dict[str, Any]) -> bytes:
    key = kind[0].lower() + kind[1:]
    return orjson.dumps({"kind": kind, key: body})


def said_by_caller(text: str) -> bytes:
    body = {"text": text, "participantRawID": CALLER, "resultStatus": "Final"}
    return acs_message("TranscriptionData", body)


def loud_frame() -> bytes:
    pcm = np.full(320, 4000, dtype="<i2").tobytes()
    body = {"participantRawID": CALLER, "data": base64.b64encode(pcm).decode(), "silent": False}
    return acs_message("AudioData", body)


@pytest.mark.slow  # a whole call's lifecycle: about 3 s
async def test_a_call_streams_replies_is_cut_by_the_caller_and_survives_a_broken_stream(
    actor_config: Callable[..., CallActorConfig], llm: LlmStandIn
) -> None:
    config = actor_config(
        responder="openai",
        llm_base_url=llm.base_url,
        llm_api_key="test-key",
        llm_timeout_s=2.0,
        call_idle_timeout_s=60.0,
    )
    actor = CallActor(f"call-{uuid.uuid4().hex[:12]}", config)
    await actor.activate({"caller_id": CALLER[2:], "caller_display_name": "Ada L"})
    cm = actor._cm
    assert cm is not None
    media = actor.media.on_message
    conn = cast(ServerConnection, None)  # unused by the media path's inbound side

    llm.script(LONG * 2)
    media(conn, said_by_caller("Where is my order?"))
    await eventually(lambda: actor.metrics.tokens_out > 0)  # generated whole, still speaking
    assert len(actor.media.outbound) > 0
    for _ in range(BARGE_IN_FRAMES):  # the caller talks over the reply
        media(conn, loud_frame())
    await eventually(lambda: len(cm.history) >= 2)
    reply = cm.history[1]
    assert reply.meta == {"cut": True} and reply.text == LONG.strip()

    llm.script(ScriptedReply(text="Sure. It is on its way.", fault="drop", drop_after_tokens=3))
    media(conn, said_by_caller("And my refund?"))
    await eventually(lambda: actor.metrics.reply_failures["dropped"] == 1)
    assert "Where is my order?" in str(llm.requests[-1].body["messages"])  # earlier turns
    await actor.shutdown("test")  # mid-fallback: the reply is cut, recorded, then archived

    archive = SqliteArchive(config.storage.archive_path)
    try:
        doc = await archive.get_transcript(actor.call_id)
    finally:
        await archive.close()
    assert doc is not None
    turns = [(t["role"], t["meta"]) for t in doc["turns"]]
    assert turns[2:] == [("user", turns[2][1]), ("assistant", {"cut": True, "fallback": "dropped"})]
    assert doc["turns"][3]["text"] == "Sure."  # cut while saying it: the fallback never began
    metrics = doc["metrics"]
    assert (metrics["replies"], metrics["replies_cut"]) == (2, 2)
    assert metrics["reply_failures"] == {"dropped": 1}
    assert metrics["tokens_in"] > 0 and metrics["tokens_out"] > 0
    assert metrics["reply_ttft_ms_p50"] is not None
    assert metrics["reply_first_audio_ms_p99"] is not None
