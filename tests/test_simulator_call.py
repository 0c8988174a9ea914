"""One simulated call end to end: transcription timing, hang-up rules and the fault knobs."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from starlette.websockets import WebSocket

from simulator.audio import AudioFormat, dominant_frequency, speech_like, voice_frequency, write_wav
from simulator.jwt_issuer import TokenFault
from simulator.script import CallerScript, CallFaults, MalformedKind, ScriptLine
from simulator.service import AcsStandIn
from simulator.wire import TICKS_PER_SECOND
from tests.fake_gateway import FakeGateway

pytestmark = pytest.mark.slow  # every test runs a whole call through the stand-in (0.5-1.7 s)

LINE = "I would like to check my balance."


def _script(**fields: object) -> CallerScript:
    base = {"lines": [ScriptLine(say=LINE)], "lead_in_s": 0.2, "tail_s": 0.1, "realtime": False}
    base.update(fields)
    return CallerScript.model_validate(base)


async def test_transcription_results_follow_the_audio() -> None:
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        report = await acs.place_call(gateway.url, _script())
    messages = gateway.seen.transcription[report.call_connection_id]
    assert messages[0]["kind"] == "TranscriptionMetadata"
    assert messages[0]["transcriptionMetadata"]["callConnectionId"] == report.call_connection_id
    results = [m["transcriptionData"] for m in messages[1:]]
    assert [r["resultStatus"] for r in results] == ["Intermediate", "Final"]
    final = results[-1]
    assert final["text"] == LINE
    assert final["offset"] == round(0.2 * TICKS_PER_SECOND)  # the line starts after the lead-in
    assert final["duration"] > results[0]["duration"] > 0
    assert final["participantRawID"] == "4:+14255550100"
    assert [w["text"] for w in final["words"]][:2] == ["i", "would"]
    assert report.transcripts_sent == 2


async def test_media_streams_before_the_app_answers_call_connected() -> None:
    """ACS starts streaming once the call is connected, without waiting for the app's reply
    to CallConnected: an app still busy with its callbacks already has the caller's audio."""
    media_up = asyncio.Event()

    async def note(ws: WebSocket, call_id: str) -> None:
        media_up.set()

    async with AcsStandIn() as acs, FakeGateway(
        acs, media_hook=note, callback_gate=media_up.wait
    ) as gateway:
        report = await acs.place_call(gateway.url, _script())
    assert report.unexpected == []
    assert report.frames_sent > 0
    assert gateway.seen.callback_types()[0] == "CallConnected"
    assert gateway.seen.callback_types()[-1] == "CallDisconnected"


async def test_app_that_never_hangs_up_is_reported() -> None:
    script = _script(hangs_up="app", app_hangup_timeout_s=0.2)
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        report = await acs.place_call(gateway.url, script)
    assert report.hung_up_by == "timeout"
    assert report.unexpected == ["app did not hang up"]
    assert gateway.seen.callback_types()[-1] == "CallDisconnected"


@pytest.mark.parametrize("fault", [TokenFault.EXPIRED, TokenFault.FORGED, TokenFault.MISSING])
async def test_bad_media_token_is_closed_with_1008(fault: TokenFault) -> None:
    script = _script(faults=CallFaults(media_token=fault))
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        report = await acs.place_call(gateway.url, script)
    assert report.media_rejected == "closed_1008"
    assert gateway.seen.media_rejections == 1
    assert report.unexpected == []
    assert report.frames_sent == 0


async def test_gateway_that_accepts_a_forged_token_is_flagged() -> None:
    script = _script(faults=CallFaults(media_token=TokenFault.FORGED), lines=[])
    async with (
        AcsStandIn(socket_grace_s=0.3) as acs,
        FakeGateway(acs, verify_tokens=False) as gateway,
    ):
        report = await acs.place_call(gateway.url, script)
    assert report.unexpected == ["gateway kept a media socket with a forged token"]


async def test_drop_media_and_reconnect_to_another_gateway() -> None:
    faults = CallFaults(drop_media_after_s=0.3)
    async with AcsStandIn() as acs, FakeGateway(acs) as first, FakeGateway(acs) as second:
        script = _script(faults=faults.model_copy(update={"reconnect_to": second.url}))
        report = await acs.place_call(first.url, script)
    call_id = report.call_connection_id
    assert report.media_connects == 2
    before, after = first.seen.media[call_id], second.seen.media[call_id]
    assert after[0]["kind"] == "AudioMetadata"  # a new socket starts with metadata again
    assert len(before) - 1 == 15  # 0.3 s of frames went to the first gateway
    assert len(before) - 1 + len(after) - 1 == report.frames_sent
    assert report.unexpected == []


async def test_malformed_frames_reach_the_gateway() -> None:
    kinds: list[MalformedKind] = [
        "bad_json", "unknown_kind", "bad_base64", "wrong_size", "binary", "oversized"
    ]
    script = _script(faults=CallFaults(malformed_frames=kinds), lines=[])
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        report = await acs.place_call(gateway.url, script)
    messages = gateway.seen.media[report.call_connection_id]
    assert messages[0]["kind"] == "AudioMetadata"
    assert "raw" in messages[1]  # unparseable JSON
    assert messages[2]["kind"] == "NoSuchKind"
    assert messages[3]["audioData"]["data"] == "***not base64***"
    assert len(messages[4]["audioData"]["data"]) < 640
    assert messages[5] == {"binary": 640}
    assert len(messages[6]["audioData"]["data"]) > 64 * 1024  # over the gateway's limit
    assert messages[7]["kind"] == "AudioData"


async def test_wav_lines_stream_the_file(tmp_path: Path) -> None:
    fmt = AudioFormat(16000)
    path = tmp_path / "line.wav"
    source = AudioFormat(24000)
    write_wav(path, speech_like(0.5, source, voice=9), source)  # resampled to 16 kHz on load
    script = _script(lines=[ScriptLine(say="Recorded line.", wav=path)], lead_in_s=0, tail_s=0)
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        report = await acs.place_call(gateway.url, script)
    messages = gateway.seen.media[report.call_connection_id]
    pcm = b"".join(base64.b64decode(m["audioData"]["data"]) for m in messages[1:])
    assert report.frames_sent == 25
    assert abs(dominant_frequency(pcm, fmt) - voice_frequency(9)) < 8
    final = gateway.seen.transcription[report.call_connection_id][-1]["transcriptionData"]
    assert final["text"] == "Recorded line."


async def test_gateway_closing_media_mid_call_is_flagged() -> None:
    async def close_early(ws: WebSocket, call_id: str) -> None:
        await asyncio.sleep(0.1)
        await ws.close(code=1000)

    script = _script(realtime=True)
    async with AcsStandIn() as acs, FakeGateway(acs, media_hook=close_early) as gateway:
        report = await acs.place_call(gateway.url, script)
    assert report.media_close_code == 1000
    assert report.unexpected == ["gateway closed media (1000)"]


async def test_gateway_closing_media_then_hanging_up_is_fine() -> None:
    gateway: FakeGateway
    detached: list[asyncio.Task[None]] = []

    async def close_then_hang_up(ws: WebSocket, call_id: str) -> None:
        async def act() -> None:  # outlives the socket handler, which ends at the close
            await asyncio.sleep(0.1)
            await ws.close(code=1000)
            await gateway.client.get_call_connection(call_id).hang_up(is_for_everyone=True)

        detached.append(asyncio.create_task(act()))

    script = _script(realtime=True, hangs_up="app")
    async with AcsStandIn() as acs, FakeGateway(acs, media_hook=close_then_hang_up) as gateway:
        report = await acs.place_call(gateway.url, script)
    assert report.hung_up_by == "app"
    assert report.unexpected == []
