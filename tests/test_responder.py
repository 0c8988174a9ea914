from actors.responder import EchoResponder, make_responder
from storage.conversation import Turn


def turn(role: str, text: str) -> Turn:
    return Turn(seq=0, role=role, text=text, timestamp=0.0)


async def test_echo_responder_rules() -> None:
    r = make_responder("echo")
    assert isinstance(r, EchoResponder)
    ctx = {"profile": {"name": "Ada"}}
    assert await r.respond(ctx, []) == "Hello, how can I help you?"
    assert await r.respond(ctx, [turn("user", "my bill")]) == "Hello Ada. You said: my bill"
    history = [turn("user", "a"), turn("assistant", "x"), turn("user", "b")]
    assert await r.respond(ctx, history) == "You said: b"
    assert await r.respond({}, [turn("user", "OK bye now")]) == "Thank you for calling. Goodbye."
    assert await r.respond({"caller": {"display_name": "Bo"}}, [turn("user", "hi")]) == (
        "Hello Bo. You said: hi"
    )


def test_unknown_responder() -> None:
    import pytest

    with pytest.raises(ValueError):
        make_responder("gpt")
