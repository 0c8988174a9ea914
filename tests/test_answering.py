import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp.client
import orjson
import pytest
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from pydantic import SecretStr

from gateway.acs_events import Identifier, IncomingCall
from gateway.answering import AnswerOptions, answer_call, plan_answer, websocket_base
from gateway.auth import UrlSecrets
from gateway.service import acs_client
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

    def client_for(endpoint: str, key: str) -> CallAutomationClient:
        return CallAutomationClient(
            endpoint,
            AzureKeyCredential(key),
            raw_request_hook=lambda pipeline_request: sent.append(pipeline_request.http_request),
        )

    await _answer_one(client_for, options)
    (request,) = [r for r in sent if r.url.split("?")[0].endswith("callConnections:answer")]
    return dict(orjson.loads(request.body))


async def _answer_one(
    client_for: Callable[[str, str], CallAutomationClient],
    options: AnswerOptions | None = None,
) -> None:
    """Answer one call ringing at the stand-in with the client ``client_for(endpoint, key)``."""
    async with AcsStandIn(answer_timeout_s=5.0) as acs:
        ringing = asyncio.create_task(acs.place_call("http://127.0.0.1:9"))
        await eventually(lambda: acs._ringing)
        someone = Identifier("phoneNumber", "4:+14255550100")
        call = IncomingCall(next(iter(acs._ringing)), someone, someone, "server-1", "corr-1")
        plan = plan_answer("http://127.0.0.1:9", UrlSecrets(b"0123456789abcdef0123"), options)
        async with client_for(acs.endpoint, acs.access_key) as client:
            assert await answer_call(client, call, plan)
        ringing.cancel()


def _gateway_client(endpoint: str, key: str) -> CallAutomationClient:
    """The gateway's own client (gateway/service.py) for the stand-in."""
    return acs_client(AcsSettings(endpoint=endpoint, access_key=SecretStr(key)))


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def proxy_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """URLs aiohttp looked up a proxy for (it does so on a thread, per request); none found."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    asked: list[str] = []

    def lookup(url: Any) -> Any:
        asked.append(str(url))
        raise LookupError(url)

    monkeypatch.setattr(aiohttp.client, "get_env_proxy_for_url", lookup)
    return asked


async def test_the_gateway_client_looks_for_no_proxy_per_request_without_one(
    proxy_lookups: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """No proxy in the environment: no thread hop per request to look for one, and none of the
    SDK's own warning per answer about a field it passes itself."""
    with caplog.at_level(logging.WARNING):
        await _answer_one(_gateway_client)
    assert proxy_lookups == []
    assert not [r for r in caplog.records if "is not a known attribute" in r.getMessage()]


async def test_a_proxy_in_the_environment_is_still_honoured(
    proxy_lookups: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    await _answer_one(_gateway_client)
    assert proxy_lookups  # asked per request, as aiohttp does with trust_env


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
