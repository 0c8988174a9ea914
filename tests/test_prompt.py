from actors.prompt import CUT_NOTE, build_messages, caller_note
from storage.conversation import Turn


def turn(role: str, text: str, **meta: object) -> Turn:
    return Turn(seq=0, role=role, text=text, timestamp=0.0, meta=dict(meta))


def test_the_prompt_is_the_system_prompt_the_caller_and_the_turns_in_order() -> None:
    context = {"profile": {"user_id": "+14255550123", "name": "Ada", "tier": "gold"}}
    history = [turn("user", "hi"), turn("assistant", "Hello Ada."), turn("user", "my bill")]
    messages = build_messages(context, history, system_prompt="Be brief.", budget_chars=1000)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["role"] == "system" and "Ada" in messages[1]["content"]
    assert "gold" in messages[1]["content"] and "+1425" not in messages[1]["content"]
    assert [(m["role"], m["content"]) for m in messages[2:]] == [
        ("user", "hi"),
        ("assistant", "Hello Ada."),
        ("user", "my bill"),
    ]
    assert caller_note({}) is None


def test_history_is_trimmed_to_the_budget_newest_first() -> None:
    history = [turn("user", "a" * 50), turn("assistant", "b" * 50), turn("user", "c" * 50)]
    kept = build_messages({}, history, system_prompt="s", budget_chars=120)[1:]
    assert [m["content"][0] for m in kept] == ["b", "c"]
    # The last turn alone over the budget: its end is kept, nothing older.
    (last,) = build_messages({}, history, system_prompt="s", budget_chars=20)[1:]
    assert last == {"role": "user", "content": "c" * 20}


def test_cut_replies_say_so_and_other_roles_and_empty_turns_are_left_out() -> None:
    history = [
        turn("system", "internal"),
        turn("assistant", "Let me", cut=True),
        turn("assistant", ""),
        turn("user", "stop"),
    ]
    kept = build_messages({}, history, system_prompt="s", budget_chars=1000)[1:]
    assert [m["content"] for m in kept] == ["Let me" + CUT_NOTE, "stop"]
