"""The model API stand-in's wire format, read with a plain HTTP client (the openai client's view
is in test_llm_responder.py)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from simulator.llm_api import LlmStandIn, ScriptedReply, default_reply, tokens

HEADERS = {"authorization": "Bearer test-key"}
BODY = {"model": "m", "messages": [{"role": "user", "content": "where is my parcel"}]}


def events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.strip().split("\n\n")]


async def test_streaming_is_server_sent_chunks_then_usage_then_done(llm: LlmStandIn) -> None:
    llm.script("One. Two three.")
    body = BODY | {"stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(base_url=llm.base_url, headers=HEADERS) as client:
        response = await client.post("/chat/completions", json=body)
        timings = (await client.get(f"{llm.url}/standin/requests")).json()
    assert response.headers["content-type"].startswith("text/event-stream")
    (timing,) = timings  # when it came and each of its three tokens went, for benchmarks
    assert timing["last_user_text"] == "where is my parcel" and len(timing["token_at"]) == 3
    assert timing["at"] <= timing["token_at"][0] <= timing["token_at"][-1]
    *chunks, done = events(response.text)
    assert done == "[DONE]"
    docs = [orjson.loads(c) for c in chunks]
    assert all(d["object"] == "chat.completion.chunk" and d["model"] == "m" for d in docs)
    assert docs[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in docs if d["choices"])
    assert text == "One. Two three."
    assert docs[-2]["choices"][0]["finish_reason"] == "stop"
    assert docs[-1]["choices"] == [] and docs[-1]["usage"]["completion_tokens"] == 3
    assert llm.requests[-1].last_user_text == "where is my parcel"


async def test_not_streaming_is_one_completion_with_usage(llm: LlmStandIn) -> None:
    async with httpx.AsyncClient(base_url=llm.url, headers={"api-key": "test-key"}) as client:
        response = await client.post(
            "/openai/deployments/dep/chat/completions?api-version=2024-10-21", json=BODY
        )
    doc = response.json()
    assert doc["object"] == "chat.completion"
    assert doc["choices"][0]["message"]["content"] == default_reply(BODY)
    assert doc["usage"]["prompt_tokens"] == len(tokens("where is my parcel"))


async def test_refusals_rate_limits_and_bad_requests_have_the_api_shape(llm: LlmStandIn) -> None:
    llm.script(ScriptedReply(fault="rate_limit", retry_after_s=3), ScriptedReply(fault="refusal"))
    async with httpx.AsyncClient(base_url=llm.url, headers=HEADERS) as client:
        limited = await client.post("/v1/chat/completions", json=BODY)
        refused = await client.post("/v1/chat/completions", json=BODY)
        wrong_key = await client.post(
            "/v1/chat/completions", json=BODY, headers={"authorization": "Bearer nope"}
        )
        no_version = await client.post("/openai/deployments/d/chat/completions", json=BODY)
        not_json = await client.post("/v1/chat/completions", content=b"{")
        no_messages = await client.post("/v1/chat/completions", json={"model": "m"})
        models = await client.get("/v1/models")
        azure_models = await client.get("/openai/models", headers={"authorization": "x"})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    message = refused.json()["choices"][0]["message"]
    assert message["content"] is None and message["refusal"]
    assert wrong_key.status_code == 401 and no_version.status_code == 404
    assert not_json.status_code == 400 and no_messages.status_code == 400
    assert models.json()["data"][0]["object"] == "model" and azure_models.status_code == 401


def test_a_fault_must_be_one_the_stand_in_knows() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        ScriptedReply(fault="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LlmStandIn(ttft_s=-1)
