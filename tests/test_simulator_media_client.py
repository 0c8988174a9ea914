"""The media WebSocket client: inbound frames as ACS sends them, outbound audio as ACS plays it."""

from __future__ import annotations

import base64
import itertools
from datetime import datetime

import pytest
from starlette.websockets import WebSocket

from simulator import wire
from simulator.audio import (
    AudioFormat,
    dominant_frequency,
    speaking_duration,
    speech_like,
    voice_frequency,
)
from simulator.script import CallerScript, ScriptLine
from simulator.service import AcsStandIn
from tests.fake_gateway import FakeGateway

pytestmark = pytest.mark.slow  # real-time paced audio, ~1.5 s per test

SHORT = CallerScript(lines=[ScriptLine(say="Hi there.")], lead_in_s=0.1, tail_s=0.1)


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("audio_format", "rate", "size"), [("pcm16KMono", 16000, 640), ("pcm24KMono", 24000, 960)]
)
async def test_frames_are_well_formed_sized_and_paced(
    audio_format: str, rate: int, size: int
) -> None:
    async with AcsStandIn() as acs, FakeGateway(acs, audio_format=audio_format) as gateway:
        report = await acs.place_call(gateway.url, SHORT)

    call_id = report.call_connection_id
    messages = gateway.seen.media[call_id]
    headers = gateway.seen.media_headers[0]
    assert headers["x-ms-call-connection-id"] == call_id
    assert headers["x-ms-call-correlation-id"]
    assert headers["authorization"].startswith("Bearer ")

    metadata = messages[0]
    assert metadata["kind"] == "AudioMetadata"
    assert metadata["audioMetadata"]["sampleRate"] == rate
    assert metadata["audioMetadata"]["length"] == size
    assert metadata["audioMetadata"]["encoding"] == "PCM"

    frames = messages[1:]
    assert len(frames) == report.frames_sent > 0
    for frame in frames:
        assert frame["kind"] == "AudioData"
        data = frame["audioData"]
        assert len(base64.b64decode(data["data"])) == size
        assert data["participantRawID"] == "4:+14255550100"
        assert isinstance(data["silent"], bool)
    assert frames[0]["audioData"]["silent"] and not frames[10]["audioData"]["silent"]
    stamps = [_stamp(f["audioData"]["timestamp"]) for f in frames]
    gaps = {round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(stamps)}
    assert gaps == {0.02}

    # Paced at real time: the frames cannot arrive faster than the audio they carry.
    arrivals = gateway.seen.arrivals[call_id]
    assert arrivals[-1] - arrivals[1] >= 0.8 * (len(frames) - 1) * 0.02


async def test_fast_mode_sends_the_same_frames() -> None:
    script = SHORT.model_copy(update={"realtime": False})
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        report = await acs.place_call(gateway.url, script)
    assert report.frames_sent == len(gateway.seen.media[report.call_connection_id]) - 1
    speech_frames = round(speaking_duration("Hi there.") / 0.02)
    assert report.frames_sent == 5 + speech_frames + 5  # lead-in, the line, tail


async def test_outbound_audio_in_both_casings_is_played_and_recorded() -> None:
    fmt = AudioFormat(16000)
    reply = speech_like(0.2, fmt, voice=7)

    async def talk_back(ws: WebSocket, call_id: str) -> None:
        await ws.send_text(wire.outbound_audio(reply, pascal_case=True))
        await ws.send_text(wire.outbound_audio(reply, pascal_case=False))

    async with AcsStandIn() as acs, FakeGateway(acs, media_hook=talk_back) as gateway:
        report = await acs.place_call(gateway.url, SHORT)

    assert report.outbound_messages == 2
    assert report.unexpected == []
    assert report.heard_pcm == reply + reply
    assert report.heard_s == pytest.approx(0.4)
    assert abs(dominant_frequency(report.heard_pcm, fmt) - voice_frequency(7)) < 10


@pytest.mark.parametrize("pascal_case", [True, False])
async def test_stop_audio_clears_the_queue(pascal_case: bool) -> None:
    fmt = AudioFormat(16000)

    async def barge_in(ws: WebSocket, call_id: str) -> None:
        await ws.send_text(wire.outbound_audio(speech_like(5.0, fmt, voice=3), pascal_case))
        await ws.send_text(wire.outbound_stop(pascal_case))

    async with AcsStandIn() as acs, FakeGateway(acs, media_hook=barge_in) as gateway:
        report = await acs.place_call(gateway.url, SHORT)

    assert report.stop_audio == 1
    assert report.cleared_bytes > 0
    assert report.heard_bytes + report.cleared_bytes == fmt.byte_count(5.0)
    assert report.heard_s < 2.5  # most of the 5 s reply was flushed, not played


async def test_malformed_outbound_messages_are_reported() -> None:
    async def garbage(ws: WebSocket, call_id: str) -> None:
        await ws.send_text("{not json")
        await ws.send_text('{"kind": "AudioData", "audioData": {"data": "!!"}}')

    async with AcsStandIn() as acs, FakeGateway(acs, media_hook=garbage) as gateway:
        report = await acs.place_call(gateway.url, SHORT)
    assert report.unexpected == ["outbound bad_json", "outbound bad_base64"]


async def test_unmixed_audio_and_dtmf() -> None:
    script = CallerScript(lines=[ScriptLine(dtmf="12#")], lead_in_s=0.0, tail_s=0.0)
    async with AcsStandIn() as acs, FakeGateway(acs, channel_type="unmixed", dtmf=True) as gateway:
        report = await acs.place_call(gateway.url, script)
    messages = gateway.seen.media[report.call_connection_id]
    tones = [m["dtmfData"]["data"] for m in messages if m["kind"] == "DtmfData"]
    assert tones == ["1", "2", "#"]
    assert report.dtmf_sent == 3 and report.channel_type == "unmixed"
