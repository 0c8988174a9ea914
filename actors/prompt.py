"""The chat prompt of one reply: the system prompt, what is known of the caller, and the
conversation so far trimmed to a budget of characters (newest turns kept).

Pure: no I/O. Messages are the chat-completions wire shape (``{"role", "content"}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from actors.responder import caller_name
from storage.conversation import Turn

MAX_PROFILE_CHARS = 1000  # the profile is the operator's data, but its size is not ours to pick
ROLES = frozenset({"user", "assistant"})
CUT_NOTE = " [interrupted by the caller]"


def caller_note(context: Mapping[str, Any]) -> str | None:
    """One system line about the caller (name, profile), or None when nothing is known."""
    parts: list[str] = []
    name = caller_name(context)
    if name:
        parts.append(f"The caller's name is {name}.")
    profile = context.get("profile")
    if isinstance(profile, dict) and profile:
        shown = {k: v for k, v in profile.items() if k not in ("user_id", "id")}
        if shown:
            text = orjson.dumps(shown, option=orjson.OPT_SORT_KEYS, default=str).decode()
            parts.append(f"Caller profile: {text[:MAX_PROFILE_CHARS]}")
    return " ".join(parts) or None


def _content(turn: Turn) -> str:
    # A cut reply holds what the caller heard; telling the model so keeps it from repeating.
    return turn.text + (CUT_NOTE if turn.meta.get("cut") else "")


def build_messages(
    context: Mapping[str, Any],
    history: Sequence[Turn],
    *,
    system_prompt: str,
    budget_chars: int,
) -> list[dict[str, str]]:
    """System messages, then the newest user and assistant turns that fit ``budget_chars``
    (oldest first). The last turn always goes in, cut to the budget if it alone is larger."""
    messages = [{"role": "system", "content": system_prompt}]
    note = caller_note(context)
    if note:
        messages.append({"role": "system", "content": note})
    turns = [t for t in history if t.role in ROLES and t.text.strip()]
    kept: list[dict[str, str]] = []
    left = budget_chars
    for turn in reversed(turns):
        content = _content(turn)
        if len(content) > left:
            if not kept:  # the caller's last words matter most: keep their end
                kept.append({"role": turn.role, "content": content[-left:]})
            break
        kept.append({"role": turn.role, "content": content})
        left -= len(content)
    messages.extend(reversed(kept))
    return messages
