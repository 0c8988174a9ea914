import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.sentences import SentenceSplitter


def split(pieces: list[str], max_chars: int = 250) -> list[str]:
    splitter = SentenceSplitter(max_chars)
    out = [s for piece in pieces for s in splitter.feed(piece)]
    rest = splitter.flush()
    return [*out, rest] if rest else out


def test_sentences_come_out_as_soon_as_the_next_token_shows_they_ended() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello") == []
    assert splitter.feed(" there.") == []  # "." may be "..." or "3.5": wait for what follows
    assert splitter.feed(" How") == ["Hello there. "]
    assert splitter.feed(" are you? I am") == ["How are you? "]
    assert splitter.flush() == "I am"
    assert splitter.flush() == ""


def test_abbreviations_initials_and_numbers_do_not_end_a_sentence() -> None:
    text = "Dr. Smith paid 3.50 dollars, e.g. a fee. J. Doe agrees! Next\nline "
    assert split([text]) == [
        "Dr. Smith paid 3.50 dollars, e.g. a fee. ",
        "J. Doe agrees! ",
        "Next\n",
        "line ",
    ]


def test_a_long_run_without_punctuation_is_cut_at_a_space() -> None:
    words = "word " * 30
    out = split([words], max_chars=40)
    assert all(len(s) <= 40 for s in out) and all(s.endswith(" ") for s in out[:-1])
    assert "".join(out) == words
    assert split(["x" * 10], max_chars=4) == ["xxxx", "xxxx", "xx"]  # no space at all
    with pytest.raises(ValueError):
        SentenceSplitter(1)


@given(st.lists(st.text(max_size=30), max_size=20), st.integers(2, 60))
def test_sentences_join_back_to_the_text_whatever_the_pieces(
    pieces: list[str], max_chars: int
) -> None:
    out = split(pieces, max_chars)
    assert "".join(out) == "".join(pieces)
    assert all(len(s) <= max(max_chars, 2) or s[-1].isspace() for s in out[:-1])
