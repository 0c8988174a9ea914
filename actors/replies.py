"""One call's replies: the responder's text spoken sentence by sentence while it is generated,
cut by barge-in, a short fallback when the model fails, and what was actually said.

``Replies`` is also what the media path holds as the call's speaker: it is "speaking" from the
moment a reply is asked for until its audio has played, so caller speech during generation or
playback reaches ``stop`` (barge-in), which cancels the generation and the playback at once.
It never writes the conversation: ``reply`` returns what was said and the actor records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.metrics import LiveMetrics
from actors.responder import ReplyFailed, Responder
from actors.sentences import SentenceSplitter
from actors.speaker import MAX_SPOKEN_CHARS, Speaker
from storage.conversation import Turn

log = logging.getLogger(__name__)

# What the caller hears when the model fails; short, and inviting them to go on.
FALLBACKS: dict[str, str] = {
    "timeout": "Sorry, that is taking me too long. Could you say that again?",
    "refused": "Sorry, I can't help with that. Is there anything else I can do for you?",
    "rate_limited": "Sorry, I am very busy right now. Please ask me again in a moment.",
    "dropped": "Sorry, I lost my train of thought. Could you say that again?",
    "error": "Sorry, something went wrong on my side. Could you say that again?",
}
# A speaker that never reports the end of its playback must not hold the turn forever.
MAX_PLAYBACK_WAIT_S = 120.0


@dataclass(slots=True)
class Said:
    """What the caller heard of one reply: the sentences whose audio had started."""

    text: str
    cut: bool = False  # barge-in (or the end of the call) stopped it
    failure: str | None = None  # the fallback was spoken, for this reason

    def meta(self) -> dict[str, Any]:
        """Extra fields of the assistant turn (only those that say something happened)."""
        out: dict[str, Any] = {}
        if self.cut:
            out["cut"] = True
        if self.failure:
            out["fallback"] = self.failure
        return out


@dataclass(slots=True)
class _Reply:
    heard_at: float  # the caller's final transcript reached the actor (monotonic)
    sentences: list[tuple[str, float | None]] = field(default_factory=list)  # text, audio start
    audio_end: float | None = None  # when the queued audio ends; None while unknown
    durations_known: bool = True
    failure: str | None = None


class Replies:
    """Speaks each reply through ``voice`` (set once the call is active)."""

    def __init__(
        self,
        responder: Responder,
        metrics: LiveMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.responder = responder
        self.metrics = metrics
        self.voice: Speaker | None = None
        self._clock = clock
        self._current: asyncio.Task[None] | None = None
        self._cut_at: float | None = None
        self._ended = False
        self._idle = asyncio.Event()  # the voice reported its playback finished
        self._warming: asyncio.Task[None] | None = None

    def start(self, voice: Speaker) -> None:
        """The call is active: speak through ``voice``, and let the responder get ready for the
        first reply (``warm_up``, optional in the protocol: the openai one connects) meanwhile."""
        self.voice = voice
        warm_up = getattr(self.responder, "warm_up", None)
        if warm_up is not None and self._warming is None:
            self._warming = asyncio.get_running_loop().create_task(warm_up())

    # -- Speaker, as the media path sees it ------------------------------------------------------

    @property
    def speaking(self) -> bool:
        return self._current is not None or bool(self.voice and self.voice.speaking)

    async def speak(self, text: str) -> float | None:
        assert self.voice is not None
        return await self.voice.speak(text)

    async def stop(self) -> None:
        """Barge-in: cancel the reply in progress (generation and playback)."""
        self.interrupt()
        if self.voice is not None:
            await self.voice.stop()

    def play_finished(self) -> None:
        if self.voice is not None:
            self.voice.play_finished()
            if not self.voice.speaking:
                self._idle.set()

    async def close(self) -> None:
        self.interrupt()
        if self._warming is not None:
            self._warming.cancel()
        # The responder's client outlives a failed activation (it may be retried), not the call.
        aclose = getattr(self.responder, "aclose", None) if self._ended else None
        if aclose is not None:  # optional in the protocol
            with contextlib.suppress(Exception):
                await aclose()
        if self.voice is not None:
            await self.voice.close()

    # -- replies ---------------------------------------------------------------------------------

    def interrupt(self) -> None:
        if self._current is not None and not self._current.done():
            self._cut_at = self._clock()
            self._current.cancel()

    def end(self) -> None:
        """The call is ending: the reply in progress is cut and no other starts."""
        self._ended = True
        self.interrupt()

    async def reply(
        self, context: Mapping[str, Any], history: Sequence[Turn], *, heard_at: float
    ) -> Said | None:
        """Generate and speak the reply; returns what was said once its audio has played, or
        at once when it is cut. None when the call is ending."""
        if self._ended or self.voice is None:
            return None
        state = _Reply(heard_at)
        self._cut_at = None
        task = asyncio.get_running_loop().create_task(self._run(state, context, history))
        self._current = task
        try:
            await asyncio.wait({task})  # returns when it finishes or is cancelled (barge-in)
        finally:
            if not task.done():  # this turn itself was cancelled: so is its reply
                task.cancel()
            self._current = None
        said = self._said(state, cut=task.cancelled())
        self.metrics.replies += 1
        if said.cut:
            self.metrics.replies_cut += 1
        return said

    async def _run(
        self, state: _Reply, context: Mapping[str, Any], history: Sequence[Turn]
    ) -> None:
        splitter = SentenceSplitter()
        asked_at = self._clock()
        first = True
        pieces = self.responder.stream(context, history)
        try:
            async for piece in pieces:
                if first and piece:
                    first = False
                    self.metrics.reply_timed("ttft", self._clock() - asked_at)
                for sentence in splitter.feed(piece):
                    await self._say(state, sentence)
                if self._spoken_chars(state) >= MAX_SPOKEN_CHARS:
                    break  # the rest would not be spoken: stop generating it
            else:
                await self._say(state, splitter.flush())
        except ReplyFailed as exc:
            state.failure = exc.reason
        except Exception as exc:  # a responder of the user's own: the call still goes on
            log.warning("responder failed: %s", type(exc).__name__)
            state.failure = "error"
        finally:  # a cut or capped reply: close the model's stream now (an async generator's
            # own finally blocks run then, not whenever it is collected)
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        self._count_tokens()
        if state.failure is not None:
            log.info("reply failed (%s): fallback spoken", state.failure)
            self.metrics.reply_failures[state.failure] += 1
            await self._say(state, FALLBACKS[state.failure], capped=False)
        await self._played(state)

    def _count_tokens(self) -> None:
        usage = getattr(self.responder, "last_usage", None)  # reported by the openai responder
        if usage is not None:
            self.metrics.tokens_in += usage.prompt_tokens
            self.metrics.tokens_out += usage.completion_tokens

    @staticmethod
    def _spoken_chars(state: _Reply) -> int:
        return sum(len(text) for text, _ in state.sentences)

    async def _say(self, state: _Reply, sentence: str, *, capped: bool = True) -> None:
        sentence = sentence.strip()
        if capped:  # a reply is spoken up to MAX_SPOKEN_CHARS (the fallback always is)
            sentence = sentence[: max(0, MAX_SPOKEN_CHARS - self._spoken_chars(state))]
        if not sentence:
            return
        assert self.voice is not None
        now = self._clock()
        try:
            seconds = await self.voice.speak(sentence)
        except Exception as exc:  # the turn is recorded even if playback fails
            log.warning("speaking failed: %s", type(exc).__name__)
            seconds = 0.0
        if not state.sentences:
            self.metrics.reply_timed("first_audio", self._clock() - state.heard_at)
        if seconds is None:
            state.durations_known = False
            state.sentences.append((sentence, None))
            self._idle.clear()
            return
        start = max(now, state.audio_end or now)
        state.audio_end = start + seconds
        state.sentences.append((sentence, start))

    async def _played(self, state: _Reply) -> None:
        """Wait for the reply's audio to end: by its known length, else for the voice to say it
        finished (ACS's PlayCompleted), at most MAX_PLAYBACK_WAIT_S."""
        if not state.sentences:
            return
        if state.durations_known and state.audio_end is not None:
            await asyncio.sleep(min(MAX_PLAYBACK_WAIT_S, state.audio_end - self._clock()))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MAX_PLAYBACK_WAIT_S):
                while self.voice is not None and self.voice.speaking:
                    await self._idle.wait()
                    self._idle.clear()

    def _said(self, state: _Reply, *, cut: bool) -> Said:
        heard = state.sentences
        if cut and self._cut_at is not None:
            cut_at = self._cut_at
            heard = [(t, s) for t, s in state.sentences if s is None or s <= cut_at]
        return Said(" ".join(t for t, _ in heard), cut=cut, failure=state.failure)
