"""The openai responder with the real ``openai`` client against the model API stand-in."""

from __future__ import annotations

from typing import Any

import pytest
from openai import AsyncAzureOpenAI

from actors.llm_responder import OpenAIResponder, make_client, retry_after_s
from actors.responder import ReplyFailed, make_responder
from simulator.llm_api import LlmStandIn, ScriptedReply
from storage.conversation import Turn
from storage.settings import AssistantSettings

HISTORY = [Turn(seq=1, role="user", text="Where is my order?", timestamp=0.0)]


def openai_settings(llm: LlmStandIn, **values: Any) -> AssistantSettings:
    return AssistantSettings(
        responder="openai", base_url=llm.base_url, api_key="test-key", **values
    )


async def pieces(responder: OpenAIResponder, history: list[Turn] = HISTORY) -> list[str]:
    return [piece async for piece in responder.stream({"profile": {"name": "Ada"}}, history)]


async def test_a_reply_streams_token_by_token_with_the_prompt_and_usage(llm: LlmStandIn) -> None:
    llm.script("Your order left today. It arrives tomorrow.")
    settings = openai_settings(llm, model="gpt-x", temperature=0.1, max_reply_tokens=50)
    responder = make_responder(settings)
    assert isinstance(responder, OpenAIResponder)
    got = await pieces(responder)
    assert "".join(got) == "Your order left today. It arrives tomorrow." and len(got) == 7
    usage = responder.last_usage
    assert usage is not None and usage.completion_tokens == 7 and usage.prompt_tokens > 10
    body = llm.requests[-1].body
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("gpt-x", 0.1, 50)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in body["messages"]] == ["system", "system", "user"]
    assert "Ada" in body["messages"][1]["content"]
    await responder.aclose()


async def test_azure_openai_by_deployment_api_version_and_key(llm: LlmStandIn) -> None:
    settings = AssistantSettings(
        responder="openai",
        azure_endpoint=llm.azure_endpoint,
        api_key="test-key",
        model="my-deployment",
        api_version="2024-10-21",
    )
    responder = OpenAIResponder(settings)
    assert "".join(await pieces(responder)).startswith("I heard you say Where is my order")
    seen = llm.requests[-1]
    assert seen.path == "/openai/deployments/my-deployment/chat/completions"
    assert seen.headers["api-key"] == "test-key"
    await responder.aclose()


async def test_entra_id_gives_the_azure_client_a_token_provider() -> None:
    settings = AssistantSettings(
        responder="openai", azure_endpoint="https://x.openai.azure.com", use_entra_id=True
    )
    client = make_client(settings)
    assert isinstance(client, AsyncAzureOpenAI) and client.max_retries == 0
    assert client._azure_ad_token_provider is not None
    await client.close()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("refusal", "refused"), ("filtered", "refused"), ("drop", "dropped")],
)
async def test_model_faults_become_a_reason(llm: LlmStandIn, fault: str, reason: str) -> None:
    llm.script(ScriptedReply(fault=fault, drop_after_tokens=2))  # type: ignore[arg-type]
    responder = OpenAIResponder(openai_settings(llm))
    got: list[str] = []
    with pytest.raises(ReplyFailed) as info:
        async for piece in responder.stream({}, HISTORY):
            got.append(piece)
    assert info.value.reason == reason
    assert got == (["I", " heard"] if fault == "drop" else [])
    await responder.aclose()


async def test_no_byte_for_the_timeout_is_a_timeout(llm: LlmStandIn) -> None:
    llm.script(ScriptedReply(fault="timeout"))
    responder = OpenAIResponder(openai_settings(llm, timeout_s=0.3))
    with pytest.raises(ReplyFailed, match="timeout"):
        await pieces(responder)
    await responder.aclose()


async def test_a_rate_limit_holds_off_for_its_retry_after(llm: LlmStandIn) -> None:
    now = [100.0]
    llm.script(ScriptedReply(fault="rate_limit", retry_after_s=5))
    responder = OpenAIResponder(openai_settings(llm), clock=lambda: now[0])
    with pytest.raises(ReplyFailed, match="rate_limited"):
        await pieces(responder)
    asked = len(llm.requests)
    now[0] += 4.0
    with pytest.raises(ReplyFailed, match="rate_limited"):  # not asked again before 5 s
        await pieces(responder)
    assert len(llm.requests) == asked
    now[0] += 1.5
    assert await pieces(responder)
    assert len(llm.requests) == asked + 1
    await responder.aclose()


async def test_an_unreachable_api_or_a_wrong_key_is_an_error(llm: LlmStandIn) -> None:
    wrong = OpenAIResponder(openai_settings(llm).model_copy(update={"api_key": None}))
    with pytest.raises(ReplyFailed, match="error"):
        await pieces(wrong)
    await wrong.aclose()
    gone = OpenAIResponder(AssistantSettings(responder="openai", base_url="http://127.0.0.1:9"))
    with pytest.raises(ReplyFailed, match="error"):
        await pieces(gone)
    await gone.aclose()


def test_retry_after_reads_ms_seconds_and_dates_clamped() -> None:
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_s({"retry-after": "7"}) == 7.0
    assert retry_after_s({"retry-after": "Thu, 01 Jan 2026 00:00:10 GMT"}, now=1767225600.0) == 10.0
    assert retry_after_s({"retry-after": "3600"}) == 60.0
    assert retry_after_s({"retry-after": "-4"}) == 0.0
    for bad in ({}, {"retry-after": "soon"}, {"retry-after": "nan"}):
        assert retry_after_s(bad) == 1.0


async def test_warm_up_connects_before_the_first_reply_and_never_fails(llm: LlmStandIn) -> None:
    responder = OpenAIResponder(openai_settings(llm))
    await responder.warm_up()
    assert llm.requests[-1].path == "/v1/models"
    await responder.aclose()
    gone = OpenAIResponder(AssistantSettings(responder="openai", base_url="http://127.0.0.1:9"))
    await gone.warm_up()  # nothing listens: logged, not raised
    await gone.aclose()
