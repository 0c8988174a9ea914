from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from actors.responder import (
    EchoResponder,
    ReplyFailed,
    Responder,
    check_settings,
    load_custom,
    make_responder,
)
from storage.conversation import Turn
from storage.settings import AssistantSettings


def turn(role: str, text: str) -> Turn:
    return Turn(seq=0, role=role, text=text, timestamp=0.0)


async def said(responder: Responder, context: dict[str, Any], history: list[Turn]) -> str:
    return "".join([piece async for piece in responder.stream(context, history)])


async def test_echo_responder_rules() -> None:
    r = make_responder(AssistantSettings())
    assert isinstance(r, EchoResponder)
    ctx = {"profile": {"name": "Ada"}}
    assert await said(r, ctx, []) == "Hello, how can I help you?"
    assert await said(r, ctx, [turn("user", "my bill")]) == "Hello Ada. You said: my bill"
    history = [turn("user", "a"), turn("assistant", "x"), turn("user", "b")]
    assert await said(r, ctx, history) == "You said: b"
    assert await said(r, {}, [turn("user", "OK bye now")]) == "Thank you for calling. Goodbye."
    assert await said(r, {"caller": {"display_name": "Bo"}}, [turn("user", "hi")]) == (
        "Hello Bo. You said: hi"
    )


class Weather:
    """A responder of the user's own, as the README shows one."""

    async def stream(
        self, context: Mapping[str, Any], history: Sequence[Turn]
    ) -> AsyncIterator[str]:
        yield "Sunny. "
        yield f"You asked: {history[-1].text}"


def weather_factory() -> Weather:
    return Weather()


WEATHER = Weather()
NOT_A_RESPONDER = object()


async def test_module_attr_loads_a_class_a_factory_or_an_instance() -> None:
    for attr in ("Weather", "weather_factory", "WEATHER"):
        r = make_responder(AssistantSettings(responder=f"tests.test_responder:{attr}"))
        assert await said(r, {}, [turn("user", "rain?")]) == "Sunny. You asked: rain?"


def test_a_responder_that_cannot_be_loaded_is_refused_at_start() -> None:
    for spec, match in (
        ("tests.no_such_module:X", "cannot be loaded"),
        ("tests.test_responder:Nope", "cannot be loaded"),
        ("tests.test_responder:NOT_A_RESPONDER", "no stream"),
    ):
        with pytest.raises(ValueError, match=match):
            load_custom(spec)
        with pytest.raises(ValueError, match=match):
            check_settings(AssistantSettings(responder=spec))


def test_openai_settings_are_checked_at_start_naming_the_variables() -> None:
    def check(**values: Any) -> None:
        check_settings(AssistantSettings(responder="openai", **values))

    with pytest.raises(ValueError, match="RTVOICE_LLM_API_KEY"):
        check()
    with pytest.raises(ValueError, match="RTVOICE_AZURE_OPENAI_USE_ENTRA_ID"):
        check(azure_endpoint="https://x.openai.azure.com")
    with pytest.raises(ValueError, match="not both"):
        check(azure_endpoint="https://x", base_url="http://y", api_key="k")
    with pytest.raises(ValueError, match="RTVOICE_AZURE_OPENAI_ENDPOINT"):
        check_settings(AssistantSettings(use_entra_id=True))
    check(api_key="k")  # api.openai.com
    check(base_url="http://127.0.0.1:1/v1")  # a local server needs no key
    check(azure_endpoint="https://x.openai.azure.com", use_entra_id=True)


def test_failure_reasons_are_a_fixed_set() -> None:
    assert ReplyFailed("timeout").reason == "timeout"
    with pytest.raises(ValueError):
        ReplyFailed("something else")
