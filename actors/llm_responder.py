"""The ``openai`` responder: a chat completion streamed from Azure OpenAI (API key or Entra ID)
or any OpenAI-compatible API, through the ``openai`` SDK's async client.

Every way the model can fail is turned into ``ReplyFailed`` with a fixed reason, so the call
speaks a fallback and goes on: a timeout (no byte for ``RTVOICE_LLM_TIMEOUT_S``), a refusal
(a ``refusal`` delta, a ``content_filter`` finish or a filtered prompt), a rate limit (429: the
model is not asked again before its Retry-After), a stream that ends without a finish reason or
breaks mid-reply, and any other API error. The SDK's own retries are off: a caller on the line
cannot wait for a back-off.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, cast

import httpx2
import openai
from openai import AsyncAzureOpenAI, AsyncOpenAI, DefaultAsyncHttpxClient
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from actors.prompt import build_messages
from actors.responder import ReplyFailed
from storage.conversation import Turn
from storage.settings import AssistantSettings

log = logging.getLogger(__name__)

COGNITIVE_SCOPE = "https://cognitiveservices.azure.com/.default"
DEFAULT_RETRY_AFTER_S = 1.0  # a 429 without Retry-After
MAX_RETRY_AFTER_S = 60.0
KEEPALIVE_S = 120.0  # the model connection stays open between turns (a call's idle timeout)
SAMPLE_CHUNK: dict[str, Any] = {
    "id": "warm-up",
    "object": "chat.completion.chunk",
    "created": 0,
    "model": "warm-up",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
}


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float:
    """Seconds a 429 asks to wait: ``retry-after-ms``, else ``retry-after`` (seconds or an
    HTTP date); clamped to 0-60 s, 1 s when absent or unreadable."""
    try:
        if "retry-after-ms" in headers:
            value = float(headers["retry-after-ms"]) / 1000.0
        elif "retry-after" in headers:
            raw = headers["retry-after"]
            try:
                value = float(raw)
            except ValueError:
                when = parsedate_to_datetime(raw).timestamp()
                value = when - (time.time() if now is None else now)
        else:
            return DEFAULT_RETRY_AFTER_S
    except (TypeError, ValueError, OverflowError):
        return DEFAULT_RETRY_AFTER_S
    if value != value:  # NaN
        return DEFAULT_RETRY_AFTER_S
    return min(max(value, 0.0), MAX_RETRY_AFTER_S)


def make_client(settings: AssistantSettings) -> AsyncOpenAI:
    """The SDK client the settings describe (checked by CallActorConfig at start)."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    # A caller pauses longer than httpx's 5 s keep-alive between turns: without this each reply
    # would open a new TCP and TLS connection to the model first.
    http = DefaultAsyncHttpxClient(
        limits=httpx2.Limits(max_connections=8, keepalive_expiry=KEEPALIVE_S),
        timeout=settings.timeout_s,
    )
    common: dict[str, Any] = {"timeout": settings.timeout_s, "max_retries": 0, "http_client": http}
    if settings.azure_endpoint:
        if settings.use_entra_id:
            from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

            provider = get_bearer_token_provider(DefaultAzureCredential(), COGNITIVE_SCOPE)
            return AsyncAzureOpenAI(
                azure_endpoint=settings.azure_endpoint,
                api_version=settings.api_version,
                azure_ad_token_provider=provider,
                **common,
            )
        return AsyncAzureOpenAI(
            azure_endpoint=settings.azure_endpoint,
            api_version=settings.api_version,
            api_key=key,
            **common,
        )
    # A local OpenAI-compatible server usually wants no key, but the SDK requires one.
    return AsyncOpenAI(base_url=settings.base_url, api_key=key or "unused", **common)


class OpenAIResponder:
    """Streams each reply; ``last_usage`` holds the tokens of the last one, when reported."""

    def __init__(
        self,
        settings: AssistantSettings,
        client: AsyncOpenAI | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._client = client or make_client(settings)
        # The SDK imports its chat resources and builds its chunk parsing on first use (tens of
        # ms): now, when the actor starts, not in the caller's first reply.
        self._completions = self._client.chat.completions
        ChatCompletionChunk.construct(**SAMPLE_CHUNK)
        importlib.import_module("anyio._backends._asyncio")  # what the first connection loads
        self._clock = clock
        self._hold_until = 0.0  # a 429's Retry-After: no request before this
        self.last_usage: TokenUsage | None = None

    async def stream(
        self, context: Mapping[str, Any], history: Sequence[Turn]
    ) -> AsyncIterator[str]:
        self.last_usage = None
        wait = self._hold_until - self._clock()
        if wait > 0:
            raise ReplyFailed("rate_limited", f"holding off {wait:.1f} s more")
        s = self.settings
        messages = build_messages(
            context, history, system_prompt=s.system_prompt, budget_chars=s.history_chars
        )
        started = False  # a break after the first piece is a dropped stream, not an error
        finish: str | None = None
        try:
            response = await self._completions.create(
                model=s.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                temperature=s.temperature,
                max_tokens=s.max_reply_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            async with response:  # closes the HTTP stream when the reply is cancelled
                async for chunk in response:
                    if chunk.usage is not None:
                        self.last_usage = TokenUsage(
                            chunk.usage.prompt_tokens, chunk.usage.completion_tokens
                        )
                    for choice in chunk.choices:
                        if choice.delta.refusal:
                            raise ReplyFailed("refused", "refusal")
                        if choice.delta.content:
                            started = True
                            yield choice.delta.content
                        finish = choice.finish_reason or finish
        except openai.RateLimitError as exc:
            hold = retry_after_s(exc.response.headers)
            self._hold_until = self._clock() + hold
            raise ReplyFailed("rate_limited", f"retry after {hold:.1f} s") from None
        except openai.APITimeoutError:
            raise ReplyFailed("timeout") from None
        except openai.BadRequestError as exc:
            reason = "refused" if exc.code == "content_filter" else "error"
            raise ReplyFailed(reason, f"400 {exc.code}") from None
        except openai.APIConnectionError as exc:
            raise ReplyFailed("dropped" if started else "error", type(exc).__name__) from None
        except openai.APIError as exc:
            raise ReplyFailed("error", type(exc).__name__) from None
        if finish == "content_filter":
            raise ReplyFailed("refused", "content_filter")
        if finish is None:
            raise ReplyFailed("dropped", "no finish reason")

    async def warm_up(self) -> None:
        """Open the connection to the model (TCP, TLS, the SDK's first request) before the
        caller's first reply needs it: one model-list request, which costs no tokens."""
        try:
            await self._client.models.list()
        except Exception as exc:  # only an optimisation: the first reply connects anyway
            log.info("model warm-up failed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        await self._client.close()
