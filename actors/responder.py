"""Responders: what the assistant says after a user turn, streamed as pieces of text.

``echo`` (the default) needs no network or model; ``openai`` streams from a model behind an
OpenAI-compatible API (actors/llm_responder.py); ``module:attr`` is a responder of your own.
A responder only reads the context and history it is given; it never writes state itself.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from storage.conversation import Turn
from storage.settings import AssistantSettings


@runtime_checkable
class Responder(Protocol):
    """The reply to the conversation so far, as text pieces (tokens, words or whole sentences)
    in speaking order; the caller hears each sentence as soon as it is complete.

    Optional, looked up by name: ``async warm_up()``, started when the call becomes active (get
    ready for the first reply), ``async aclose()``, awaited when it ends, and ``last_usage``
    (``prompt_tokens``, ``completion_tokens`` of the last reply), counted per call."""

    def stream(self, context: Mapping[str, Any], history: Sequence[Turn]) -> AsyncIterator[str]: ...


class ReplyFailed(Exception):
    """The model gave no usable reply; ``reason`` is a fixed code (timeout, refused,
    rate_limited, dropped, error), counted per call. The caller hears a short fallback."""

    REASONS = frozenset({"timeout", "refused", "rate_limited", "dropped", "error"})

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def caller_name(context: Mapping[str, Any]) -> str | None:
    profile = context.get("profile")
    if isinstance(profile, dict):
        name = profile.get("name") or profile.get("display_name")
        if isinstance(name, str) and name:
            return name
    caller = context.get("caller")
    if isinstance(caller, dict):
        name = caller.get("display_name")
        if isinstance(name, str) and name:
            return name
    return None


class EchoResponder:
    """Deterministic rules: greet by name on the first turn, say goodbye, else echo the request."""

    def reply(self, context: Mapping[str, Any], history: Sequence[Turn]) -> str:
        last = next((t for t in reversed(history) if t.role == "user"), None)
        if last is None:
            return "Hello, how can I help you?"
        text = last.text.strip()
        lowered = text.lower()
        if any(word in lowered for word in ("goodbye", "bye", "hang up")):
            return "Thank you for calling. Goodbye."
        user_turns = sum(1 for t in history if t.role == "user")
        name = caller_name(context)
        if user_turns == 1 and name:
            return f"Hello {name}. You said: {text}"
        return f"You said: {text}"

    async def stream(
        self, context: Mapping[str, Any], history: Sequence[Turn]
    ) -> AsyncIterator[str]:
        yield self.reply(context, history)


def load_custom(spec: str) -> Responder:
    """``module:attr``: a responder object, or a class or factory called with no argument."""
    module_name, _, attr = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"responder {spec!r} cannot be loaded: {exc}") from None
    if isinstance(target, Responder) and not isinstance(target, type):
        return target
    responder = target() if callable(target) else None
    if not isinstance(responder, Responder):
        raise ValueError(f"responder {spec!r} has no stream(context, history) method")
    return responder


def check_settings(settings: AssistantSettings) -> None:
    """ValueError, naming the variables, for a responder that could not work (at start)."""
    name = settings.responder
    azure, base_url = settings.azure_endpoint, settings.base_url
    if settings.use_entra_id and not azure:
        raise ValueError("RTVOICE_AZURE_OPENAI_USE_ENTRA_ID needs RTVOICE_AZURE_OPENAI_ENDPOINT")
    if name == "openai":
        if azure and base_url:
            raise ValueError("set RTVOICE_AZURE_OPENAI_ENDPOINT or RTVOICE_LLM_BASE_URL, not both")
        if azure and not (settings.api_key or settings.use_entra_id):
            raise ValueError(
                "RTVOICE_AZURE_OPENAI_ENDPOINT needs RTVOICE_LLM_API_KEY or "
                "RTVOICE_AZURE_OPENAI_USE_ENTRA_ID=true"
            )
        if not (azure or base_url or settings.api_key):
            raise ValueError(
                "responder 'openai' needs RTVOICE_AZURE_OPENAI_ENDPOINT, RTVOICE_LLM_BASE_URL "
                "or RTVOICE_LLM_API_KEY (api.openai.com)"
            )
    elif ":" in name:
        load_custom(name)


def make_responder(settings: AssistantSettings) -> Responder:
    """The responder the settings name (``RTVOICE_RESPONDER``); ValueError if it cannot be made."""
    name = settings.responder
    if name == "echo":
        return EchoResponder()
    if name == "openai":
        from actors.llm_responder import OpenAIResponder  # the openai SDK: imported on use only

        return OpenAIResponder(settings)
    if ":" in name:
        return load_custom(name)
    raise ValueError(f"unknown responder {name!r}; known: echo, openai, module:attr")
