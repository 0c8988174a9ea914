"""Responders: what the assistant says after a user turn. The default needs no network or model.

A responder only reads the context and history it is given; it never writes state itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from storage.conversation import Turn


class Responder(Protocol):
    async def respond(self, context: dict[str, Any], history: Sequence[Turn]) -> str: ...


def _caller_name(context: dict[str, Any]) -> str | None:
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

    async def respond(self, context: dict[str, Any], history: Sequence[Turn]) -> str:
        last = next((t for t in reversed(history) if t.role == "user"), None)
        if last is None:
            return "Hello, how can I help you?"
        text = last.text.strip()
        lowered = text.lower()
        if any(word in lowered for word in ("goodbye", "bye", "hang up")):
            return "Thank you for calling. Goodbye."
        user_turns = sum(1 for t in history if t.role == "user")
        name = _caller_name(context)
        if user_turns == 1 and name:
            return f"Hello {name}. You said: {text}"
        return f"You said: {text}"


RESPONDERS: dict[str, type[EchoResponder]] = {"echo": EchoResponder}


def make_responder(name: str) -> Responder:
    try:
        return RESPONDERS[name]()
    except KeyError:
        raise ValueError(f"unknown responder {name!r}; known: {sorted(RESPONDERS)}") from None
