import asyncio
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential

from gateway.acs_events import Identifier, IncomingCall
from gateway.answering import AnswerOptions, answer_call, plan_answer, websocket_base
from gateway.auth import UrlSecrets
from simulator.service import AcsStandIn
from storage.settings import AcsSettings
from tests.helpers import eventually


def test_plan_urls_carry_a_verifiable_secret() -> None:
    url_secrets = UrlSecrets(b"0123456789abcdef0123")
    options = AnswerOptions(audio_format="pcm24KMono")
    plan = plan_answer("https://voice.example.com/", url_secrets, options)
    assert plan.callback_url.startswith("https://voice.example.com/api/callbacks?")
    assert plan.media_url.startswith("wss://voice.example.com/ws/media?")
    assert plan.transcription_url.startswith("wss://voice.example.com/ws/transcription?")
    query = parse_qs(urlparse(plan.callback_url).query)
    url_secrets.verify(query["n"][0], query["s"][0])
    assert plan.options == options


def test_websocket_base() -> None:
    assert websocket_base("http://127.0.0.1:8000") == "ws://127.0.0.1:8000"
    assert websocket_base("https://h") == "wss://h"


def test_options_come_from_the_acs_settings() -> None:
    acs = AcsSettings(
        audio_format="pcm24KMono",
        transcription_locale="fr-FR",
        dtmf_tones=False,
        cognitive_services_endpoint="https://speech-1.cognitiveservices.azure.com/",
    )
    assert AnswerOptions.from_settings(acs) == AnswerOptions(
        audio_format="pcm24KMono",
        locale="fr-FR",
        dtmf_tones=False,
        cognitive_services_endpoint="https://speech-1.cognitiveservices.azure.com",
    )


async def _answer_body(options: AnswerOptions) -> dict[str, Any]:
    """The answer request the real SDK sends to the stand-in for ``options``."""
    sent: list[Any] = []
    async with AcsStandIn(answer_timeout_s=5.0) as acs:
        ringing = asyncio.create_task(acs.place_call("http://127.0.0.1:9"))
        await eventually(lambda: acs._ringing)
        someone = Identifier("phoneNumber", "4:+14255550100")
        call = IncomingCall(next(iter(acs._ringing)), someone, someone, "server-1", "corr-1")
        plan = plan_answer("http://127.0.0.1:9", UrlSecrets(b"0123456789abcdef0123"), options)
        client = CallAutomationClient(
            acs.endpoint,
            AzureKeyCredential(acs.access_key),
            raw_request_hook=lambda pipeline_request: sent.append(pipeline_request.http_request),
        )
        async with client:
            assert await answer_call(client, call, plan)
        ringing.cancel()
    (request,) = [r for r in sent if r.url.split("?")[0].endswith("callConnections:answer")]
    return dict(orjson.loads(request.body))


async def test_the_answer_asks_for_dtmf_and_names_the_ai_services_resource() -> None:
    """ACS sends the caller's keypad tones only when the answer enables them, and transcribes
    through the Azure AI services resource the answer names (ACS_PROTOCOL.md section 2)."""
    endpoint = "https://speech-1.cognitiveservices.azure.com"
    body = await _answer_body(AnswerOptions(cognitive_services_endpoint=endpoint))
    assert body["mediaStreamingOptions"]["enableDtmfTones"] is True
    assert body["callIntelligenceOptions"] == {"cognitiveServicesEndpoint": endpoint}
    assert body["transcriptionOptions"]["startTranscription"] is True

    body = await _answer_body(AnswerOptions(dtmf_tones=False))
    assert body["mediaStreamingOptions"]["enableDtmfTones"] is False
    assert "callIntelligenceOptions" not in body
