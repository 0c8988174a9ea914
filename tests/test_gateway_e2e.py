"""The gateway end to end: LocalStack (Redis, local Ray, gateway replicas) driven by the ACS
stand-in, checked through the actors' live state, Redis affinity and the archive.

One stack serves the whole module (its event loop is module-scoped); calls are short scripts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import pytest_asyncio
import ray
from starlette import status

from actors.activation import get_call_actor
from gateway.answering import CALLBACK_PATH, MEDIA_PATH, TRANSCRIPTION_PATH, websocket_base
from gateway.cli import configure_logging
from simulator import (
    CallbackKnobs,
    CallerScript,
    CallFaults,
    CallReport,
    Scenario,
    ScriptLine,
    TokenFault,
    run_scenario,
    wire,
)
from simulator.acs_socket import connect_as_acs
from simulator.audio import (
    AudioFormat,
    dominant_frequency,
    frames,
    speaking_duration,
    speech_like,
    voice_frequency,
)
from simulator.devstack.local_redis import LocalRedisServer, free_port
from simulator.devstack.local_stack import LocalStack, Replica
from simulator.jwt_issuer import CALLBACK_TOKEN_LIFETIME_S, MEDIA_TOKEN_LIFETIME_S
from simulator.service import AcsStandIn
from storage.archive import open_archive
from storage.settings import Settings
from tests.helpers import archived_transcript, spares_ready
from tests.helpers import eventually as poll_until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

FMT = AudioFormat(16_000)  # the gateway's default pcm16KMono
PITCH_TOLERANCE_HZ = 4.0  # voices are 15 Hz apart; the pitch wobble spreads a peak by ~1.3 Hz
DUPLICATES = "rtvoice_gateway_duplicate_events_total"
ANSWERED = "rtvoice_gateway_calls_answered_total"
SET_UP = "rtvoice_gateway_call_setup_seconds_count"
LIVE_TIMEOUT_S = 60.0  # generous: the machine is shared and actor processes start cold
SPARES = 3  # the most calls one test places at once: each finds a warm actor


eventually = partial(poll_until, timeout=LIVE_TIMEOUT_S, interval=0.1)


def participant(script: CallerScript) -> str:
    """The ``participantRawID`` the stand-in tags a phone caller's frames with."""
    return "4:" + script.caller


def line_pcm(text: str, voice: int) -> bytes:
    """The exact audio the stand-in streams for a generated line (whole 20 ms frames)."""
    return b"".join(frames(speech_like(speaking_duration(text), FMT, voice), FMT))


def caller(number: str, voice: int, lines: list[str], **fields: Any) -> CallerScript:
    return CallerScript(
        caller=number,
        voice=voice,
        lines=[ScriptLine(say=text, pause_s=0.4) for text in lines],
        **({"lead_in_s": 0.2, "tail_s": 0.6} | fields),
    )


def pausing_caller(
    number: str, voice: int, lines: list[str], *, pause_s: float, tail_s: float
) -> CallerScript:
    """A caller who pauses after the first line: the moment a test causes its fault."""
    return CallerScript(
        caller=number,
        voice=voice,
        lines=[ScriptLine(say=lines[0], pause_s=pause_s), *(ScriptLine(say=t) for t in lines[1:])],
        lead_in_s=0.2,
        tail_s=tail_s,
    )


@dataclass
class Harness:
    """The module's stack plus the call ids it placed (their actors are killed at the end)."""

    stack: LocalStack
    namespace: str
    call_ids: list[str] = field(default_factory=list)
    actors: dict[str, Any] = field(default_factory=dict)  # call id -> its actor's handle

    @property
    def acs(self) -> AcsStandIn:
        assert self.stack.acs is not None
        return self.stack.acs

    @property
    def replica(self) -> Replica:
        return self.stack.running[0]

    async def run(self, callers: list[CallerScript], url: str | None = None) -> list[CallReport]:
        # A warm spare for each caller, as `rtvoice demo` waits for one. On a busy machine the
        # tests before can leave the pool empty; a cold actor then starts behind the refill's
        # processes, past the activation timeout, and the gateway hangs the call up (the drop
        # that timeout is for, not what these tests are about).
        pool = self.stack.pool
        await spares_ready(pool, min(len(callers), pool.min_spares))
        report = await run_scenario(
            self.acs,
            url or self.stack.gateway_url,
            Scenario(calls=len(callers), callers=callers),
            on_call_done=lambda call: self.call_ids.append(call.call_connection_id),
        )
        assert report.subscription_validated
        return report.calls

    async def live_call(self, script: CallerScript) -> str:
        """The id of the stand-in's call playing ``script``, once the gateway has answered it."""
        found: list[str] = []

        async def answered() -> bool:
            found.extend(i for i, call in self.acs.calls.items() if call.script == script)
            return bool(found)

        await eventually(answered)
        self.call_ids.append(found[0])
        return found[0]

    async def actor(self, call_id: str) -> Any:
        """The call's actor, found as the gateway finds it (its owner's name in Redis) and
        remembered: a restarted actor keeps its handle, and a test may have stopped Redis.
        Asking every spare (get_call_actor) is the last resort: on a busy machine, spares
        being retired or restarted make it slow."""
        handle = self.actors.get(call_id)

        async def found() -> bool:
            nonlocal handle
            handle = await self.stack.pool.handle(call_id)
            if handle is None:
                handle = await asyncio.to_thread(get_call_actor, call_id, self.namespace)
            return handle is not None

        if handle is None:
            await eventually(found)
            self.actors[call_id] = handle
        return handle

    async def info(self, call_id: str) -> dict[str, Any]:
        handle = await self.actor(call_id)
        return await handle.info.remote()

    async def ring(self, call_id: str, who: str) -> bytes:
        handle = await self.actor(call_id)
        return await handle.ring_snapshot.remote(who)

    async def user_turns_at_least(self, call_id: str, n: int) -> bool:
        return (await self.info(call_id))["metrics"]["turns"] >= 2 * n - 1

    def settings(self) -> Settings:
        assert self.stack.settings is not None
        return self.stack.settings

    async def transcript(self, call_id: str) -> dict[str, Any]:
        return await archived_transcript(self.settings(), call_id, timeout=LIVE_TIMEOUT_S)

    async def gone(self, call_id: str) -> bool:
        return await asyncio.to_thread(get_call_actor, call_id, self.namespace) is None


@pytest.fixture(scope="module")
def stack_redis(redis_server: LocalRedisServer) -> Iterator[str]:
    if not redis_server.running:  # a fault test elsewhere may have stopped it
        redis_server.start()
    yield redis_server.url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def harness(ray_cluster: dict[str, Any], stack_redis: str) -> AsyncIterator[Harness]:
    namespace = str(ray_cluster["namespace"])
    base = Settings(
        ray_namespace=namespace,
        redis_url=stack_redis,
        environment=f"e2e{uuid.uuid4().hex[:8]}",  # keys unique to this module's run
        media_wait_s=1.0,  # an unknown call's media socket is refused after this long
        pool_min_spares=SPARES,
    )
    async with LocalStack(base=base) as stack:
        h = Harness(stack, namespace)
        yield h
    for call_id in h.call_ids:  # detached actors of calls a failed test left behind
        handle = get_call_actor(call_id, namespace)
        if handle is not None:
            ray.kill(handle, no_restart=True)


def user_texts(doc: dict[str, Any]) -> list[str]:
    return [turn["text"] for turn in doc["turns"] if turn["role"] == "user"]


def roles(doc: dict[str, Any]) -> list[str]:
    return [turn["role"] for turn in doc["turns"]]


def sample(replica: Replica, name: str) -> float:
    """A counter of the replica's Prometheus registry (0 before it is first incremented)."""
    return replica.gateway.metrics.registry.get_sample_value(name) or 0.0


def reconnect_count(replica: Replica) -> float:
    """Stream reconnections to a restarted actor, both streams."""
    registry = replica.gateway.metrics.registry
    name = "rtvoice_gateway_actor_reconnects_total"
    return sum(
        registry.get_sample_value(name, {"stream": s}) or 0.0 for s in ("media", "transcription")
    )


def nearest_voice(pcm: bytes, voices: list[int]) -> tuple[int, float]:
    """The voice whose pitch is closest to the audio's dominant frequency, and the distance."""
    heard = dominant_frequency(pcm, FMT)
    best = min(voices, key=lambda v: abs(voice_frequency(v) - heard))
    return best, abs(voice_frequency(best) - heard)


# -- tests ------------------------------------------------------------------------------------


async def test_concurrent_calls_each_reach_their_own_actor(harness: Harness) -> None:
    voices = [0, 3, 6]  # 110, 155 and 200 Hz
    scripts = [
        caller(
            f"+1425555010{i}",
            voice,
            [f"Caller {word} says hello.", f"Caller {word} has a question."],
            tail_s=2.5,  # time to hear the last reply even on a busy machine
        )
        for i, (voice, word) in enumerate(zip(voices, ["one", "two", "three"], strict=True))
    ]
    running = asyncio.create_task(harness.run(scripts))
    live = {await harness.live_call(script): script for script in scripts}

    # While the calls are live: each actor's inbound ring holds its own caller's voice only.
    for call_id, script in live.items():
        await eventually(partial(harness.user_turns_at_least, call_id, 1))
        info = await harness.info(call_id)
        assert info["ring_participants"] == [participant(script)]
        voice, off_by = nearest_voice(await harness.ring(call_id, participant(script)), voices)
        assert voice == script.voice and off_by < PITCH_TOLERANCE_HZ

    reports = await running
    assert all(r.answered and r.ok for r in reports), [r.unexpected for r in reports]
    for report, script in zip(reports, scripts, strict=True):
        assert live[report.call_connection_id] == script
        assert report.heard_s > 0  # the actor's spoken replies reached the stand-in
        doc = await harness.transcript(report.call_connection_id)
        assert user_texts(doc) == [line.say for line in script.lines]
        assert roles(doc) == ["user", "assistant"] * len(script.lines)
        assert {t["participant"] for t in doc["turns"] if t["role"] == "user"} == {
            participant(script)
        }
        assert doc["metrics"]["frames_in"] == report.frames_sent  # every frame, this actor


async def test_duplicated_and_reordered_callbacks_are_handled_once(harness: Harness) -> None:
    before = sample(harness.replica, DUPLICATES)
    knobs = CallbackKnobs(duplicate=True, reorder=True)
    script = caller("+14255550110", 9, ["Is this thing on?"], faults=CallFaults(callbacks=knobs))

    (report,) = await harness.run([script])

    assert report.ok, report.unexpected
    assert report.events[:2] == ["ParticipantsUpdated", "ParticipantsUpdated"]  # reordered
    distinct = len(report.events) // 2
    assert report.events[::2] == report.events[1::2]  # each delivered twice, both accepted
    assert sample(harness.replica, DUPLICATES) - before == distinct
    doc = await harness.transcript(report.call_connection_id)
    assert user_texts(doc) == ["Is this thing on?"]
    assert doc["metrics"]["events"] == distinct and doc["metrics"]["duplicate_events"] == 0
    participants = [p["raw_id"] for p in doc["metadata"]["participants"]]
    assert participant(script) in participants  # ParticipantsUpdated before CallConnected
    actions: list[str] = []
    async with open_archive(harness.settings().storage) as archive:

        async def audited() -> bool:  # audit entries are written just after the transcript
            entries = await archive.list_audit(report.call_connection_id)
            actions[:] = [entry["action"] for entry in entries]
            return "CallDisconnected" in actions

        await eventually(audited)
    assert actions.count("CallConnected") == 1 and actions.count("CallDisconnected") == 1


async def test_callbacks_with_bad_tokens_are_refused_and_change_nothing(
    harness: Harness,
) -> None:
    metrics = harness.replica.gateway.metrics
    faults = {
        TokenFault.FORGED: "invalid_token",
        TokenFault.EXPIRED: "expired_token",
        TokenFault.MISSING: "missing_token",
    }
    before = {reason: metrics.refused_count("callback", reason) for reason in faults.values()}
    scripts = [
        CallerScript(
            caller=f"+1425555012{i}",
            lines=[ScriptLine(pause_s=0.3)],
            lead_in_s=0.1,
            tail_s=0.1,
            faults=CallFaults(callback_token=fault),
        )
        for i, fault in enumerate(faults)
    ]

    reports = await harness.run(scripts)

    for report, reason in zip(reports, faults.values(), strict=True):
        assert report.answered and report.ok, report.unexpected
        assert report.events == []
        assert set(report.callback_statuses) == {status.HTTP_401_UNAUTHORIZED}
        refused = metrics.refused_count("callback", reason) - before[reason]
        assert refused == len(report.callback_statuses)
    # A CallDisconnected without any Authorization header is refused as well...
    call_id = reports[0].call_connection_id
    nonce = harness.replica.gateway.url_secrets.new_nonce()
    query = urlencode({"n": nonce, "s": harness.replica.gateway.url_secrets.sign(nonce)})
    ids = wire.CallIds(call_id, "server-call", str(uuid.uuid4()))
    body = [wire.cloud_event("CallDisconnected", ids, {}, datetime.now(UTC))]
    missing = metrics.refused_count("callback", "missing_token")
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            f"{harness.stack.gateway_url}{CALLBACK_PATH}?{query}",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == status.HTTP_401_UNAUTHORIZED
    assert metrics.refused_count("callback", "missing_token") - missing == 1
    # ...and none of the refused events reached an actor: each call is still live and unchanged.
    for report in reports:
        info = await harness.info(report.call_connection_id)
        assert info["state"] == "ringing" and info["participants"] == []
        assert info["metrics"]["events"] == 0 and info["metrics"]["duplicate_events"] == 0
        handle = await harness.actor(report.call_connection_id)
        await handle.shutdown.remote("test")  # no CallDisconnected will ever be accepted
    for report in reports:
        await eventually(partial(harness.gone, report.call_connection_id))


async def test_media_socket_for_unknown_call_or_bad_token_closes_with_1008(
    harness: Harness,
) -> None:
    gateway = harness.replica.gateway
    nonce = gateway.url_secrets.new_nonce()
    query = urlencode({"n": nonce, "s": gateway.url_secrets.sign(nonce)})
    url = f"{websocket_base(harness.stack.gateway_url)}{MEDIA_PATH}?{query}"
    tokens = harness.acs.tokens
    cases = [
        ("unknown_call", tokens.mint(MEDIA_TOKEN_LIFETIME_S), str(uuid.uuid4())),
        ("invalid_token", tokens.mint(MEDIA_TOKEN_LIFETIME_S, TokenFault.FORGED), "c1"),
        ("bad_call_id", tokens.mint(MEDIA_TOKEN_LIFETIME_S), "c" * 4096),  # refused unread
    ]
    for reason, token, call_id in cases:
        unknown = wire.CallIds(call_id, "server-call", str(uuid.uuid4()))
        before = gateway.metrics.refused_count("media", reason)
        ws = await connect_as_acs(url, unknown, token)
        await asyncio.wait_for(ws.wait_closed(), LIVE_TIMEOUT_S)
        assert ws.close_code == status.WS_1008_POLICY_VIOLATION
        assert gateway.metrics.refused_count("media", reason) - before == 1
        assert await harness.gone(unknown.call_connection_id)  # no actor was created for it


async def test_two_replicas_split_answer_callbacks_and_media(harness: Harness) -> None:
    a = harness.replica
    # Replica B answers Event Grid but hands ACS replica A's URLs (callbacks, media go to A).
    b = await harness.stack.start_replica("gw-b", free_port(), public_url=a.url)
    try:
        await _two_replicas(harness, a, b)
    finally:
        await harness.stack.stop_replica(b)


async def _two_replicas(harness: Harness, a: Replica, b: Replica) -> None:
    redis = harness.stack.redis
    assert redis is not None

    async def media_on(call_id: str, replica_id: str) -> bool:
        record = await redis.get_affinity(call_id)
        return record is not None and record.media_replica == replica_id

    # Answered by B, which hands ACS replica A's URLs: callbacks and media land on A.
    answered_by_b = caller("+14255550130", 12, ["Answered by one, served by another."], tail_s=2.0)
    b_answered, b_set_up = sample(b, ANSWERED), sample(b, SET_UP)
    first = asyncio.create_task(harness.run([answered_by_b], url=b.url))
    fixed_id = await harness.live_call(answered_by_b)
    await eventually(lambda: media_on(fixed_id, a.gateway.replica_id))
    session = await redis.load_call_session(fixed_id)
    assert session is not None and session["answered_by"] == b.gateway.replica_id
    assert fixed_id in await redis.worker_calls(a.gateway.replica_id)

    # Answered by A; its media socket drops mid-call and ACS reconnects to B. The drop comes
    # after line one, once A has bridged the first socket (the socket opened last wins the
    # affinity record either way: storage orders claims by opening time).
    moving_lines = ["I start on the first replica.", "Now I am on the second one."]
    lead_in = 1.0
    drop_at = lead_in + speaking_duration(moving_lines[0]) + 0.3  # in the pause after line one
    moving = caller(
        "+14255550131",
        18,
        moving_lines,
        lead_in_s=lead_in,
        tail_s=2.0,
        faults=CallFaults(drop_media_after_s=drop_at, reconnect_to=b.url),
    )
    second = asyncio.create_task(harness.run([moving], url=a.url))

    await eventually(lambda: harness.user_turns_at_least(fixed_id, 1))
    voice, off_by = nearest_voice(
        await harness.ring(fixed_id, participant(answered_by_b)),
        [answered_by_b.voice, moving.voice],
    )
    assert voice == answered_by_b.voice and off_by < PITCH_TOLERANCE_HZ

    moving_id = await harness.live_call(moving)
    await eventually(lambda: media_on(moving_id, b.gateway.replica_id))
    assert moving_id in await redis.worker_calls(b.gateway.replica_id)
    after_move = line_pcm(moving_lines[1], moving.voice)

    async def heard_after_move() -> bool:
        return after_move in await harness.ring(moving_id, participant(moving))

    await eventually(heard_after_move)  # byte for byte, in the moving call's own actor

    (fixed_report,) = await first
    (moving_report,) = await second
    assert sample(b, ANSWERED) - b_answered == 1
    assert sample(b, SET_UP) - b_set_up == 1  # timed from IncomingCall to its actor ready
    assert [call for call, _ in b.gateway.metrics.recent_setups][-1:] == [fixed_id]
    assert moving_report.media_connects == 2
    for report, script in ((fixed_report, answered_by_b), (moving_report, moving)):
        assert report.ok and report.heard_s > 0, report.unexpected
        doc = await harness.transcript(report.call_connection_id)
        assert user_texts(doc) == [line.say for line in script.lines]
        assert roles(doc) == ["user", "assistant"] * len(script.lines)
        assert doc["metrics"]["frames_in"] == report.frames_sent


async def test_actor_killed_mid_call_restarts_and_the_call_goes_on(harness: Harness) -> None:
    lines = [
        "this is said before the crash",
        "this is said while the actor restarts",
        "and this after it is back",
    ]
    # 3 s to hear the last reply: on a loaded machine the restart (a new process, the call
    # reloaded) can outlast a shorter tail, and a caller gone before the reply hears none.
    script = pausing_caller("+14255550190", 9, lines, pause_s=1.0, tail_s=3.0)
    before_reconnects = reconnect_count(harness.replica)
    placed = asyncio.create_task(harness.run([script]))
    call_id = await harness.live_call(script)
    assert harness.stack.redis is not None
    redis_mgr = harness.stack.redis

    async def first_exchange_persisted() -> bool:
        snap = await redis_mgr.load_conversation(call_id)
        return snap is not None and len(snap.turns) >= 2

    await eventually(first_exchange_persisted)
    pid = (await harness.info(call_id))["pid"]
    os.kill(pid, signal.SIGKILL)  # the actor's process, mid-call

    [report] = await placed
    assert report.answered and not report.unexpected, report.unexpected
    doc = await harness.transcript(call_id)
    assert user_texts(doc) == lines  # nothing said across the crash is lost
    assert roles(doc) == ["user", "assistant"] * len(lines)
    assert doc["metadata"]["restarts"] >= 1
    assert reconnect_count(harness.replica) > before_reconnects


async def test_malformed_media_frames_are_counted_and_the_call_goes_on(harness: Harness) -> None:
    kinds = ["bad_json", "unknown_kind", "bad_base64", "wrong_size", "binary", "oversized"]
    script = caller(
        "+14255550195",
        12,
        ["my frames are not all well formed"],
        faults=CallFaults(malformed_frames=kinds),
    )
    metrics = harness.replica.gateway.metrics
    binary_before = metrics.refused_count("media", "binary_frame")
    oversized_before = metrics.refused_count("media", "oversized")
    [report] = await harness.run([script])
    assert report.answered and not report.unexpected, report.unexpected
    assert metrics.refused_count("media", "binary_frame") > binary_before
    assert metrics.refused_count("media", "oversized") > oversized_before
    doc = await harness.transcript(report.call_connection_id)
    assert user_texts(doc) == ["my frames are not all well formed"]
    invalid = doc["metrics"]["invalid_messages"]
    # The binary and the oversized one never reach the actor: the gateway refuses them.
    assert sum(invalid.values()) == len(kinds) - 2
    assert doc["metrics"]["frames_in"] == report.frames_sent


async def test_replies_spoken_by_acs_play_media(harness: Harness) -> None:
    """The other speaker: the actor asks ACS (the stand-in) to speak its reply as text."""
    script = caller("+14255550199", 15, ["please read this back to me"], tail_s=3.0)
    async with LocalStack(base=harness.settings(), actor_overrides={"speaker": "acs"}) as stack:
        assert stack.acs is not None and stack.settings is not None
        await spares_ready(stack.pool, 1)  # its own spares, with the ACS speaker (Harness.run)
        result = await run_scenario(stack.acs, stack.gateway_url, Scenario(callers=[script]))
        report = result.calls[0]
        harness.call_ids.append(report.call_connection_id)
        call_id = report.call_connection_id
        doc = await archived_transcript(stack.settings, call_id, timeout=LIVE_TIMEOUT_S)
    assert report.answered and not report.unexpected, report.unexpected
    replies = [turn["text"] for turn in doc["turns"] if turn["role"] == "assistant"]
    assert replies and " ".join(report.played) == " ".join(replies)  # a play per sentence
    assert "play" in report.operations


async def test_callers_sending_as_fast_as_possible_lose_no_frame(harness: Harness) -> None:
    """Frames in flight when the caller hangs up still reach the actor (no reset on close)."""
    scripts = [
        CallerScript.talking_for(
            10.0, voice=20 + i, caller=f"+1425555021{i}", realtime=False, record_audio=False
        )
        for i in range(3)
    ]
    reports = await harness.run(scripts)
    for script, report in zip(scripts, reports, strict=True):
        assert report.answered and not report.unexpected, report.unexpected
        doc = await harness.transcript(report.call_connection_id)
        assert doc["metrics"]["frames_in"] == report.frames_sent
        assert user_texts(doc) == [line.say for line in script.lines]


async def test_redis_stopped_mid_call_the_call_goes_on(
    harness: Harness, redis_server: LocalRedisServer
) -> None:
    """Frames and callbacks do not touch Redis once a call is set up; the archive is elsewhere."""
    lines = ["before redis stops", "while redis is down", "still while redis is down"]
    script = pausing_caller("+14255550170", 18, lines, pause_s=0.5, tail_s=1.5)
    placed = asyncio.create_task(harness.run([script]))
    call_id = await harness.live_call(script)
    await eventually(lambda: harness.user_turns_at_least(call_id, 1))
    redis_server.stop()
    try:
        await eventually(lambda: harness.user_turns_at_least(call_id, 3))
    finally:
        redis_server.start()
    [report] = await placed
    assert report.answered and not report.unexpected, report.unexpected
    doc = await harness.transcript(call_id)
    assert user_texts(doc) == lines
    assert roles(doc) == ["user", "assistant"] * len(lines)
    assert [turn["seq"] for turn in doc["turns"]] == list(range(1, 2 * len(lines) + 1))
    assert harness.stack.redis is not None  # the history Redis lost was written again
    snap = await harness.stack.redis.load_conversation(call_id)
    assert snap is not None and [t["text"] for t in snap.turns] == [
        turn["text"] for turn in doc["turns"]
    ]


# -- security: what one call's credentials open -------------------------------------------------


def url_query(harness: Harness, call_id: str) -> str:
    """The query (nonce and its signature) of the URLs the gateway handed ACS for ``call_id``."""
    callback_uri = str(harness.acs.calls[call_id].properties()["callbackUri"])
    return callback_uri.partition("?")[2]


async def open_socket_as(harness: Harness, path: str, query: str, ids: wire.CallIds) -> int | None:
    """Open a WebSocket the way ACS does (good token) and return the code it was closed with."""
    url = f"{websocket_base(harness.stack.gateway_url)}{path}?{query}"
    ws = await connect_as_acs(url, ids, harness.acs.tokens.mint(MEDIA_TOKEN_LIFETIME_S))
    await asyncio.wait_for(ws.wait_closed(), LIVE_TIMEOUT_S)
    return ws.close_code


async def post_callbacks(harness: Harness, query: str, body: list[Any]) -> int:
    token = harness.acs.tokens.mint(CALLBACK_TOKEN_LIFETIME_S)
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            f"{harness.stack.gateway_url}{CALLBACK_PATH}?{query}",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
    return response.status_code


async def test_one_calls_url_opens_no_other_call(harness: Harness) -> None:
    """Finding 1: with call A's URL secret, nothing of call C opens (media, transcription,
    callbacks), and a body naming two calls is refused whole."""
    metrics = harness.replica.gateway.metrics
    lines = ["first line of this call", "second line of this call"]
    scripts = [
        pausing_caller(f"+1425555030{i}", 4 + i, lines, pause_s=4.0, tail_s=1.0) for i in range(2)
    ]
    running = asyncio.create_task(harness.run(scripts))
    a, c = [await harness.live_call(script) for script in scripts]
    await eventually(partial(harness.user_turns_at_least, c, 1))
    a_query, c_ids = url_query(harness, a), harness.acs.calls[c].ids
    before = metrics.refused_count("media", "call_mismatch")

    code = await open_socket_as(harness, MEDIA_PATH, a_query, c_ids)
    assert code == status.WS_1008_POLICY_VIOLATION
    assert metrics.refused_count("media", "call_mismatch") - before == 1
    code = await open_socket_as(harness, TRANSCRIPTION_PATH, a_query, c_ids)
    assert code == status.WS_1008_POLICY_VIOLATION
    # A's own call id with C's correlation id: the header names another call.
    a_with_c = wire.CallIds(a, "server-call", c_ids.correlation_id)
    code = await open_socket_as(harness, MEDIA_PATH, a_query, a_with_c)
    assert code == status.WS_1008_POLICY_VIOLATION
    assert metrics.refused_count("media", "correlation_mismatch") >= 1

    refused = metrics.refused_count("callback", "call_mismatch")
    now = datetime.now(UTC)
    hang_up_c = wire.cloud_event("CallDisconnected", c_ids, {}, now, str(uuid.uuid4()))
    assert await post_callbacks(harness, a_query, [hang_up_c]) == status.HTTP_401_UNAUTHORIZED
    a_ids = harness.acs.calls[a].ids
    both = [wire.cloud_event("PlayCompleted", a_ids, {}, now, str(uuid.uuid4())), hang_up_c]
    assert await post_callbacks(harness, a_query, both) == status.HTTP_401_UNAUTHORIZED
    assert metrics.refused_count("callback", "call_mismatch") - refused == 2
    assert (await harness.info(c))["state"] == "connected"  # C was not ended by A's URL

    reports = await running
    assert all(r.answered and r.ok for r in reports), [r.unexpected for r in reports]
    report_c = next(r for r in reports if r.call_connection_id == c)
    assert report_c.heard_s > 0  # C's caller heard its replies: nobody took C's audio
    doc = await harness.transcript(c)
    assert user_texts(doc) == lines and doc["end_reason"] == "disconnected"


async def test_unauthenticated_event_grid_posts_are_refused_and_answer_nothing(
    harness: Harness,
) -> None:
    """Finding 2: an anonymous IncomingCall batch gets 401 and no answer request reaches ACS."""
    gateway = harness.replica.gateway
    answered = sample(harness.replica, ANSWERED)
    failed = gateway.metrics.refused_count("answer", "HttpResponseError")
    fields = wire.IncomingCallFields(
        caller=wire.phone_identifier("+14255550400"),
        callee=wire.phone_identifier("+14255550401"),
        caller_display_name="",
        server_call_id="server-call",
        correlation_id=str(uuid.uuid4()),
        incoming_call_context="forged-context",
    )
    events = wire.incoming_call_events(fields, harness.acs.topic, datetime.now(UTC)) * 100
    webhook = f"{harness.stack.gateway_url}/api/incoming-call"
    async with httpx.AsyncClient(trust_env=False) as http:
        for query, reason in (("", "missing_secret"), ("?code=guessed", "bad_secret")):
            before = gateway.metrics.refused_count("event_grid", reason)
            response = await http.post(webhook + query, content=orjson.dumps(events))
            assert response.status_code == status.HTTP_401_UNAUTHORIZED
            assert gateway.metrics.refused_count("event_grid", reason) - before == 1
    await asyncio.sleep(0.5)
    assert sample(harness.replica, ANSWERED) == answered
    assert gateway.metrics.refused_count("answer", "HttpResponseError") == failed


async def test_an_incoming_call_context_is_answered_once(harness: Harness) -> None:
    """Event Grid redelivers: the same context posted three times is answered at most once."""
    gateway = harness.replica.gateway
    before = gateway.metrics.refused_count("event_grid", "already_answered")
    fields = wire.IncomingCallFields(
        caller=wire.phone_identifier("+14255550410"),
        callee=wire.phone_identifier("+14255550411"),
        caller_display_name="",
        server_call_id="server-call",
        correlation_id=str(uuid.uuid4()),
        incoming_call_context=f"context-{uuid.uuid4()}",  # unknown to ACS: its answer fails
    )
    events = wire.incoming_call_events(fields, harness.acs.topic, datetime.now(UTC))
    webhook = harness.stack.gateway_url + harness.acs.event_grid_path
    async with httpx.AsyncClient(trust_env=False) as http:
        for _ in range(3):
            response = await http.post(webhook, content=orjson.dumps(events))
            assert response.status_code == status.HTTP_200_OK

    async def two_refused() -> bool:
        refused = gateway.metrics.refused_count("event_grid", "already_answered") - before
        return refused == 2

    await eventually(two_refused)


async def test_callbacks_for_unknown_calls_are_refused_without_actor_lookups(
    harness: Harness,
) -> None:
    """Finding 6: a burst of events for calls nobody answered is refused on the secret and the
    binding alone; no actor is looked up or created for them."""
    gateway = harness.replica.gateway
    before = gateway.metrics.refused_count("callback", "unknown_call")
    handles = dict(gateway.router._handles)
    unknown = [wire.CallIds(str(uuid.uuid4()), "server-call", "corr") for _ in range(200)]
    now = datetime.now(UTC)

    async def post(ids: wire.CallIds) -> int:
        nonce = gateway.url_secrets.new_nonce()
        query = urlencode({"n": nonce, "s": gateway.url_secrets.sign(nonce)})
        body = [wire.cloud_event("CallConnected", ids, {}, now, str(uuid.uuid4()))]
        return await post_callbacks(harness, query, body)

    # At once: each waits a moment for its call's binding (the answer may not be bound yet).
    statuses = await asyncio.gather(*(post(ids) for ids in unknown))
    assert set(statuses) == {status.HTTP_401_UNAUTHORIZED}
    assert gateway.metrics.refused_count("callback", "unknown_call") - before == len(unknown)
    assert gateway.router._handles == handles
    assert await harness.gone(unknown[0].call_connection_id)


async def test_no_secret_phone_number_or_transcript_text_in_logs(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Logs at INFO and above, of the gateway (this process) and of the call actors (Ray worker
    log files), carry no secret, no phone number and no transcript text."""
    configure_logging(logging.INFO)  # what `rtvoice` logs, one level more verbose than its default
    caplog.set_level(logging.INFO)
    # Ray has no public accessor for the session's log directory.
    logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
    number, line = "+14255550577", "my account number is four four seven"
    script = caller(number, 14, [line])
    running = asyncio.create_task(harness.run([script]))
    call_id = await harness.live_call(script)
    query = url_query(harness, call_id)
    [report] = await running
    assert report.answered and report.ok, report.unexpected
    await harness.transcript(call_id)
    settings = harness.settings()
    forbidden = {
        "phone number": number.removeprefix("+"),
        "transcript text": "four four seven",
        "url secret": query.partition("&")[0].removeprefix("n="),
        "url signature": query.partition("&s=")[2],
        "gateway secret": settings.gateway.secret.get_secret_value(),
        "webhook secret": settings.gateway.eventgrid_secret.get_secret_value(),
        "ACS key": settings.acs.access_key.get_secret_value()[:20],
    }
    # Every worker's log: the call's actor may be a spare started long before the call.
    worker_logs = [path.read_text(errors="replace") for path in logs_dir.glob("worker-*")]
    records = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    text = "\n".join([*records, *worker_logs])
    assert worker_logs  # the actors logged (at least Ray's own start-up lines)
    for what, value in forbidden.items():
        assert value and value not in text, f"{what} found in the logs"


async def test_cosmos_down_at_hang_up_the_production_drainer_archives_once(
    harness: Harness, cosmos_emulator: Any, cosmos_key: str
) -> None:
    """The Cosmos emulator is stopped before the caller hangs up: the transcript goes to the
    Redis outbox, and once Cosmos is back the gateway's own drainer (nothing calls drain here)
    archives it, exactly once."""
    if not cosmos_emulator.running:
        cosmos_emulator.start()
    base = harness.settings().replace(
        environment=f"drain{uuid.uuid4().hex[:8]}",  # apart from the harness's own drainer
        cosmos_endpoint=cosmos_emulator.endpoint,
        cosmos_key=cosmos_key,
        cosmos_verify_tls=False,
        cosmos_database=f"drain{uuid.uuid4().hex[:8]}",
    )
    lines = ["please keep this line safe"]
    script = pausing_caller("+14255550610", 16, lines, pause_s=2.5, tail_s=0.5)
    try:
        async with LocalStack(base=base) as stack:
            assert stack.acs is not None and stack.settings is not None and stack.redis
            await spares_ready(stack.pool, 1)  # as Harness.run does
            placed = asyncio.create_task(
                run_scenario(stack.acs, stack.gateway_url, Scenario(callers=[script]))
            )

            async def answered() -> list[str]:
                return [i for i, call in stack.acs.calls.items() if call.script == script]

            await eventually(answered)
            call_id = (await answered())[0]
            harness.call_ids.append(call_id)
            await eventually(partial(harness.user_turns_at_least, call_id, 1))
            await asyncio.to_thread(cosmos_emulator.stop)  # the archive is gone at hang-up
            result = await placed
            assert result.calls[0].answered and result.calls[0].ok, result.calls[0].unexpected

            async def queued() -> bool:
                summary = await stack.redis.get_call_summary(call_id)
                return summary is not None and summary["archived_to"] == "outbox"

            await eventually(queued)
            await asyncio.to_thread(cosmos_emulator.start)
            doc = await archived_transcript(stack.settings, call_id, timeout=LIVE_TIMEOUT_S)
            assert user_texts(doc) == lines and roles(doc) == ["user", "assistant"]

            async def drained() -> bool:
                return await stack.redis.outbox_length() == 0

            await eventually(drained)
    finally:
        if not cosmos_emulator.running:
            cosmos_emulator.start()


async def test_events_after_call_disconnected_are_acknowledged_as_ended(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Replay finding: ACS sends MediaStreamingStopped and TranscriptionStopped after
    CallDisconnected. They are acknowledged (200) and counted as an ended call, never delivered
    to the ended call's (exited) actor."""
    metrics = harness.replica.gateway.metrics
    script = caller("+14255550620", 17, ["a short call"])
    running = asyncio.create_task(harness.run([script]))
    call_id = await harness.live_call(script)
    query = url_query(harness, call_id)
    [report] = await running
    assert report.ok, report.unexpected
    await harness.transcript(call_id)
    await eventually(partial(harness.gone, call_id))
    ids = harness.acs.calls[call_id].ids if call_id in harness.acs.calls else None
    ids = ids or wire.CallIds(call_id, "server-call", str(uuid.uuid4()))
    before = metrics.refused_count("callback", "ended_call")
    # As recorded (API 2025-05): seven fractional digits, +00:00, an empty result message.
    late = {
        "id": str(uuid.uuid4()),
        "source": f"calling/callConnections/{call_id}",
        "type": "Microsoft.Communication.MediaStreamingStopped",
        "data": {
            "mediaStreamingUpdate": {
                "contentType": "Audio",
                "mediaStreamingStatus": "mediaStreamingStopped",
                "mediaStreamingStatusDetails": "disconnected",
            },
            "version": "2025-05-15",
            "resultInformation": {"code": 200, "subCode": 0, "message": ""},
            "callConnectionId": call_id,
            "serverCallId": ids.server_call_id,
            "correlationId": ids.correlation_id,
            "publicEventType": "Microsoft.Communication.MediaStreamingStopped",
        },
        "time": "2025-06-02T17:31:04.6151398+00:00",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": f"calling/callConnections/{call_id}",
    }
    caplog.set_level(logging.WARNING)
    assert await post_callbacks(harness, query, [late]) == status.HTTP_200_OK
    await eventually(lambda: metrics.refused_count("callback", "ended_call") > before)
    assert not [r for r in caplog.records if "delivery failed" in r.getMessage()]
