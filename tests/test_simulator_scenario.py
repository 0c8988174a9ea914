"""Scenarios: concurrent callers against one gateway, one report per call."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.websockets import WebSocket

from simulator import wire
from simulator.audio import AudioFormat, dominant_frequency, speech_like, voice_frequency
from simulator.report import CallReport
from simulator.scenario import Scenario, run_scenario
from simulator.script import CallerScript, ScriptLine
from simulator.service import AcsStandIn
from tests.fake_gateway import FakeGateway


def test_reused_scripts_get_distinct_callers_and_voices() -> None:
    scenario = Scenario(calls=3, callers=[CallerScript(caller="+14255550100", voice=2)])
    callers = [scenario.caller_for(i) for i in range(3)]
    assert [c.caller for c in callers] == ["+14255550100", "+14255550001", "+14255550002"]
    assert [c.voice for c in callers] == [2, 3, 4]


def test_scenario_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(
        '{"calls": 2, "callers": [{"caller": "8:acs:user-1", "hangs_up": "app",'
        ' "lines": [{"say": "Hello."}, {"pause_s": 1.5}, {"dtmf": "42"}]}]}'
    )
    scenario = Scenario.from_file(path)
    assert scenario.calls == 2
    caller = scenario.callers[0]
    assert not caller.caller_is_phone and caller.hangs_up == "app"
    assert caller.lines[2].dtmf == "42"
    assert scenario.caller_for(1).caller == "8:acs:user-1-1"


@pytest.mark.slow  # several real-time calls
async def test_concurrent_callers_each_get_a_report() -> None:
    fmt = AudioFormat(16000)

    async def reply_in_callers_voice(ws: WebSocket, call_id: str) -> None:
        # Each caller must hear its own call's audio, never a neighbour's.
        voice = acs.calls[call_id].script.voice
        await ws.send_text(wire.outbound_audio(speech_like(0.3, fmt, voice)))

    line = CallerScript(lines=[ScriptLine(say="Hello there, how are you today?")], tail_s=0.5)
    scenario = Scenario(calls=3, callers=[line], stagger_s=0.05)
    async with AcsStandIn() as acs, FakeGateway(acs, media_hook=reply_in_callers_voice) as gateway:
        done: list[CallReport] = []
        report = await run_scenario(acs, gateway.url, scenario, done.append)
    assert report.subscription_validated is True
    assert len(done) == 3 and report.answered == 3
    assert len({r.call_connection_id for r in report.calls}) == 3
    for index, call in enumerate(report.calls):
        assert call.index == index and call.ok
        assert call.frames_sent > 0 and call.time_to_connected_s is not None
        assert "CallConnected" in call.events and "CallDisconnected" in call.events
        heard = dominant_frequency(call.heard_pcm, fmt)
        assert abs(heard - voice_frequency(index)) < 8
    summary = report.summary()
    assert summary["answered"] == 3 and summary["unexpected"] == 0
