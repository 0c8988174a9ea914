"""The Call Automation REST endpoint, driven by the real Call Automation SDK client."""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any

import httpx
import orjson
import pytest
from azure.communication.callautomation import CallRejectReason, TextSource
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from starlette import status

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


async def test_real_sdk_rejects_a_ringing_call_busy() -> None:
    async with AcsStandIn() as acs, FakeGateway(acs, reject="busy") as gateway:
        report = await asyncio.wait_for(acs.place_call(gateway.url), 10)
    assert gateway.answer_errors == []  # the SDK got its 204
    assert report.rejected and report.reject_reason == "busy"
    assert not report.answered and report.operations == ["reject"]
    assert report.unexpected == []  # a clear outcome, not "not answered" at the answer timeout
    assert report.summary()["rejected"] is True
    assert gateway.seen.callbacks == []  # a rejected call never connects


async def test_reject_without_a_reason_is_reason_none() -> None:
    async with AcsStandIn(answer_timeout_s=2.0) as acs:
        ringing = asyncio.create_task(acs.place_call("http://127.0.0.1:9"))  # nobody answers
        await eventually(lambda: acs._ringing)
        client = CallAutomationClient(acs.endpoint, AzureKeyCredential(acs.access_key))
        async with client:
            await client.reject_call(next(iter(acs._ringing)))
        report = await asyncio.wait_for(ringing, 10)
    assert report.rejected and report.reject_reason == "none"


async def test_reject_is_refused_for_stale_contexts_bad_reasons_and_wrong_keys() -> None:
    async with AcsStandIn(answer_timeout_s=2.0) as acs:
        client = CallAutomationClient(acs.endpoint, AzureKeyCredential(acs.access_key))
        wrong = base64.b64encode(secrets.token_bytes(64)).decode()
        impostor = CallAutomationClient(acs.endpoint, AzureKeyCredential(wrong))
        async with client, impostor:
            with pytest.raises(HttpResponseError) as stale:
                await client.reject_call("not-a-context", call_reject_reason="busy")
            # A call ringing at a gateway that never answers (nothing listens at port 9).
            ringing = asyncio.create_task(acs.place_call("http://127.0.0.1:9"))
            await eventually(lambda: acs._ringing)
            context = next(iter(acs._ringing))
            with pytest.raises(HttpResponseError) as bad_reason:
                await client.reject_call(context, call_reject_reason="later")
            with pytest.raises(HttpResponseError) as unsigned:
                await impostor.reject_call(context, call_reject_reason="busy")
            await client.reject_call(context, call_reject_reason="forbidden")
            with pytest.raises(HttpResponseError) as twice:
                await client.reject_call(context, call_reject_reason="busy")
            report = await asyncio.wait_for(ringing, 10)
    assert stale.value.status_code == status.HTTP_400_BAD_REQUEST
    assert stale.value.error is not None and stale.value.error.code == "8523"
    assert bad_reason.value.status_code == status.HTTP_400_BAD_REQUEST
    assert unsigned.value.status_code == status.HTTP_401_UNAUTHORIZED
    assert twice.value.status_code == status.HTTP_400_BAD_REQUEST  # no longer ringing
    assert report.rejected and report.reject_reason == "forbidden"


async def test_reject_request_shape_is_the_sdks() -> None:
    """The SDK's request: ``POST /calling/callConnections:reject``, camelCase body, 204."""
    async with AcsStandIn(answer_timeout_s=2.0) as acs:
        sent: list[Any] = []
        ringing = asyncio.create_task(acs.place_call("http://127.0.0.1:9"))
        await eventually(lambda: acs._ringing)
        context = next(iter(acs._ringing))
        client = CallAutomationClient(acs.endpoint, AzureKeyCredential(acs.access_key))
        async with client:
            await client.reject_call(
                context,
                call_reject_reason=CallRejectReason.BUSY,
                raw_response_hook=lambda response: sent.append(response.http_response),
            )
        report = await asyncio.wait_for(ringing, 10)
        async with httpx.AsyncClient(trust_env=False) as http:  # unsigned: the HMAC check first
            unsigned = await http.post(
                f"{acs.endpoint}/calling/callConnections:reject?api-version=2026-03-12",
                json={"incomingCallContext": context, "callRejectReason": "busy"},
            )
    request = sent[0].request
    assert request.method == "POST"
    assert httpx.URL(request.url).path == "/calling/callConnections:reject"
    body = orjson.loads(request.body)
    assert body == {"incomingCallContext": context, "callRejectReason": "busy"}
    assert sent[0].status_code == status.HTTP_204_NO_CONTENT
    assert report.operations == ["reject"] and report.reject_reason == "busy"
    assert unsigned.status_code == status.HTTP_401_UNAUTHORIZED


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
