"""Sentences out of a stream of text pieces, so each can be spoken while the rest is generated.

Pure: no I/O. A sentence ends at ``.``, ``!`` or ``?`` (or their CJK forms) followed by
whitespace, or at a line break; a run without one is cut at a space once it reaches ``max_chars``,
so a long unpunctuated reply still starts speaking early. The sentences are exact slices of
the input: joined, they give back the text.
"""

from __future__ import annotations

ENDINGS = frozenset(".!?\u3002\uff01\uff1f")  # and the CJK full stop, ! and ?
# A period after these is not the end of a sentence ("Dr. Smith", "e.g. this").
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "no", "jr"})
MAX_SENTENCE_CHARS = 250


def _ends_sentence(text: str, i: int) -> bool:
    """Whether the ending character at ``i`` (followed by whitespace) closes a sentence."""
    if text[i] != ".":
        return True
    start = text.rfind(" ", 0, i) + 1
    word = text[start:i].lower().lstrip("(\"'")
    return word not in ABBREVIATIONS and not (len(word) == 1 and word.isalpha())


class SentenceSplitter:
    """Feed text pieces in order; each call returns the sentences they completed."""

    def __init__(self, max_chars: int = MAX_SENTENCE_CHARS) -> None:
        if max_chars < 2:
            raise ValueError("max_chars must be at least 2")
        self.max_chars = max_chars
        self._buffer = ""
        self._scanned = 0  # characters of the buffer already searched for an ending

    def feed(self, piece: str) -> list[str]:
        self._buffer += piece
        out: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                return out
            out.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
            self._scanned = 0

    def flush(self) -> str:
        """What is left once the stream ended (may be empty or whitespace)."""
        rest, self._buffer, self._scanned = self._buffer, "", 0
        return rest

    def _next_cut(self) -> int | None:
        text = self._buffer
        for i in range(self._scanned, len(text)):
            if text[i] == "\n" and text[:i].strip():
                return i + 1
            # Other endings count once the character after them is known to be whitespace.
            if (
                i + 1 < len(text)
                and text[i] in ENDINGS
                and text[i + 1].isspace()
                and _ends_sentence(text, i)
                and text[: i + 1].strip()
            ):
                return i + 2  # the space goes with the sentence: slices join back exactly
        self._scanned = max(0, len(text) - 1)
        if len(text) >= self.max_chars:
            space = text.rfind(" ", 1, self.max_chars)
            return space + 1 if space > 0 else self.max_chars
        return None
