"""The Call Automation REST endpoint, driven by the real Call Automation SDK client."""

from __future__ import annotations

import asyncio
import base64
import secrets

import httpx
import pytest
from azure.communication.callautomation import TextSource
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from simulator.script import CallerScript, ScriptLine
from simulator.service import AcsStandIn
from tests.fake_gateway import FakeGateway
from tests.helpers import eventually

APP_HANGS_UP = CallerScript(
    lines=[ScriptLine(say="Hello there.")],
    lead_in_s=0.1,
    tail_s=0.1,
    hangs_up="app",
    app_hangup_timeout_s=30,
)


@pytest.mark.slow  # a real-time call
async def test_real_sdk_answers_plays_and_hangs_up() -> None:
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        call = asyncio.create_task(acs.place_call(gateway.url, APP_HANGS_UP))
        await eventually(lambda: gateway.seen.answered)
        call_id = gateway.seen.answered[0]
        connection = gateway.client.get_call_connection(call_id)

        await eventually(lambda: "CallConnected" in gateway.seen.callback_types())
        props = await connection.get_call_properties()
        assert props.call_connection_id == call_id
        assert props.call_connection_state == "connected"
        assert props.callback_url == f"{gateway.url}/api/callbacks"

        await connection.play_media(
            TextSource(text="Welcome to the stand-in.", voice_name="en-US-NancyNeural"),
            operation_context="greeting",
        )
        await eventually(lambda: "PlayCompleted" in gateway.seen.callback_types())
        started = gateway.seen.callback_types().index("PlayStarted")
        assert started < gateway.seen.callback_types().index("PlayCompleted")
        play_events = [e for e in gateway.seen.callbacks if e["type"].endswith("PlayCompleted")]
        assert play_events[0]["data"]["operationContext"] == "greeting"

        await connection.hang_up(is_for_everyone=False)
        report = await asyncio.wait_for(call, 30)

    assert report.answered and report.hung_up_by == "app"
    assert report.operations == ["answer", "play", "hangUp"]
    assert report.played == ["Welcome to the stand-in."]
    assert gateway.seen.callback_types()[-1] == "CallDisconnected"
    assert report.unexpected == []


async def test_terminate_media_and_transcription_operations_return_their_statuses() -> None:
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        call = asyncio.create_task(acs.place_call(gateway.url, APP_HANGS_UP))
        await eventually(lambda: "CallConnected" in gateway.seen.callback_types())
        connection = gateway.client.get_call_connection(gateway.seen.answered[0])

        await connection.stop_media_streaming(operation_context="pause")
        await connection.start_media_streaming()
        await connection.stop_transcription()
        await connection.start_transcription(locale="en-US")
        await connection.update_transcription(locale="fr-FR")
        await eventually(lambda: "TranscriptionUpdated" in gateway.seen.callback_types())
        await connection.hang_up(is_for_everyone=True)
        report = await asyncio.wait_for(call, 30)

    seen = gateway.seen.callback_types()
    for name in ("MediaStreamingStopped", "TranscriptionStopped", "CallDisconnected"):
        assert name in seen
    assert seen.count("MediaStreamingStarted") == 2
    assert report.operations[-1] == "terminate"
    stopped = next(e for e in gateway.seen.callbacks if e["type"].endswith("StreamingStopped"))
    assert stopped["data"]["operationContext"] == "pause"
    assert (
        stopped["data"]["mediaStreamingUpdate"]["mediaStreamingStatus"] == "mediaStreamingStopped"
    )


async def test_wrong_access_key_gets_401_in_the_acs_error_shape() -> None:
    async with AcsStandIn() as acs:
        wrong = base64.b64encode(secrets.token_bytes(64)).decode()
        client = CallAutomationClient(acs.endpoint, AzureKeyCredential(wrong))
        async with client:
            with pytest.raises(HttpResponseError) as raised:
                await client.get_call_connection("no-such-call").get_call_properties()
        assert raised.value.status_code == 401
        assert raised.value.error is not None and raised.value.error.code == "Unauthorized"

        async with httpx.AsyncClient() as http:
            response = await http.get(f"{acs.endpoint}/calling/callConnections/x?api-version=1")
        assert response.status_code == 401
        assert set(response.json()["error"]) == {"code", "message"}


async def test_unknown_call_and_stale_context_are_refused() -> None:
    async with AcsStandIn() as acs:
        client = CallAutomationClient(acs.endpoint, AzureKeyCredential(acs.access_key))
        async with client:
            with pytest.raises(HttpResponseError) as missing:
                await client.get_call_connection("no-such-call").get_call_properties()
            with pytest.raises(HttpResponseError) as stale:
                await client.answer_call("not-a-context", "http://127.0.0.1:9/cb")
        assert missing.value.status_code == 404
        assert stale.value.status_code == 400


async def test_unanswered_call_is_reported() -> None:
    async with AcsStandIn(answer_timeout_s=0.3) as acs:
        # Nothing listens here: the IncomingCall delivery fails and nobody answers.
        report = await acs.place_call("http://127.0.0.1:9")
    assert not report.answered
    assert any("not answered" in item for item in report.unexpected)
    assert any("IncomingCall delivery failed" in item for item in report.unexpected)


async def test_openid_configuration_points_at_the_served_jwks() -> None:
    async with AcsStandIn() as acs, httpx.AsyncClient() as http:
        config = (await http.get(acs.openid_configuration_url)).json()
        keys = (await http.get(config["jwks_uri"])).json()
    assert config["issuer"] == acs.issuer
    assert keys["keys"][0]["kid"] == acs.tokens.kid
    assert keys["keys"][0]["alg"] == "RS256"
    assert "d" not in keys["keys"][0]  # never the private part
