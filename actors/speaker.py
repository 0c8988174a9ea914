"""Speakers: how an assistant reply reaches the caller (local PCM stream or ACS play_media).

``synthesize`` is a deterministic stand-in for TTS (no model, no network). Speakers never write
conversation state; the PCM speaker reads and fills the shared TTS cache only.
"""

from __future__ import annotations

import array
import functools
import hashlib
import logging
import math
import sys
from typing import Protocol

from actors.outbound_audio import OutboundQueue
from storage.errors import StorageError

log = logging.getLogger(__name__)

SYLLABLE_SECONDS = 0.12
PAUSE_SECONDS = 0.06
# Replies are spoken up to this many characters (a few minutes of speech): synthesis memory and
# the cached audio grow with the text, and a reply can echo whatever the caller said.
MAX_SPOKEN_CHARS = 2500


def spoken_text(text: str) -> str:
    """The part of a reply that is spoken."""
    return text[:MAX_SPOKEN_CHARS]


class Speaker(Protocol):
    @property
    def speaking(self) -> bool: ...

    async def speak(self, text: str) -> float | None:
        """Queue one utterance (a sentence of a reply) behind what is already playing; the
        seconds of audio queued, or None when the speaker cannot know (ACS synthesizes it)."""

    async def stop(self) -> None:
        """Stop playback now (barge-in)."""

    def play_finished(self) -> None:
        """ACS reported PlayCompleted / PlayFailed / PlayCanceled."""

    async def close(self) -> None: ...


class TtsCache(Protocol):
    async def get_tts(self, voice: str, audio_format: str, text: str) -> bytes | None: ...

    async def set_tts(self, voice: str, audio_format: str, text: str, pcm: bytes) -> None: ...


def synthesize(text: str, voice: str, sample_rate: int) -> bytes:
    """Speech-like PCM16 for ``text``: one enveloped two-tone syllable per 3 letters of each word.

    Deterministic in (text, voice, sample_rate), so cached and fresh audio are identical. Plain
    Python: a voice has 12 syllables, each computed once per process, so a call actor never
    imports numpy (0.13 s of CPU each, which 50 actors replying at once paid together).
    """
    seed = int.from_bytes(hashlib.sha256(voice.encode()).digest()[:2], "big")
    base = 110.0 + seed % 110  # the voice's pitch
    pause = bytes(2 * int(PAUSE_SECONDS * sample_rate))
    pieces: list[bytes] = []
    for word in text.split():
        for i in range(0, len(word), 3):
            step = sum(map(ord, word[i : i + 3])) % 12
            pieces.append(_syllable(base * (1.0 + step / 24.0), sample_rate))
        pieces.append(pause)
    return b"".join(pieces)


@functools.lru_cache(maxsize=1024)
def _syllable(f0: float, sample_rate: int) -> bytes:
    """One syllable at pitch ``f0``: a tone and its octave under a half-sine envelope."""
    n = int(SYLLABLE_SECONDS * sample_rate)
    w = 2.0 * math.pi * f0 / sample_rate
    e = math.pi / n
    gain = 0.4 * 32767
    pcm = array.array(
        "h",
        (
            int(gain * math.sin(e * k) * (0.6 * math.sin(w * k) + 0.25 * math.sin(2.0 * w * k)))
            for k in range(n)
        ),
    )
    if sys.byteorder == "big":  # PCM16 on the wire is little-endian
        pcm.byteswap()
    return pcm.tobytes()


class PcmSpeaker:
    """Synthesizes locally (through the TTS cache) and queues PCM for the real-time pacer."""

    def __init__(
        self,
        cache: TtsCache,
        queue: OutboundQueue,
        *,
        voice: str,
        audio_format: str,
        sample_rate: int,
    ) -> None:
        self._cache = cache
        self._queue = queue
        self.voice = voice
        self.audio_format = audio_format
        self.sample_rate = sample_rate
        self.hits = 0
        self.misses = 0

    @property
    def speaking(self) -> bool:
        return len(self._queue) > 0

    async def pcm_for(self, text: str) -> bytes:
        text = spoken_text(text)
        try:
            cached = await self._cache.get_tts(self.voice, self.audio_format, text)
        except StorageError:
            cached = None  # the cache is an optimisation; speak anyway
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        pcm = synthesize(text, self.voice, self.sample_rate)
        try:
            await self._cache.set_tts(self.voice, self.audio_format, text, pcm)
        except StorageError as exc:
            log.info("reply not cached: %s", type(exc).__name__)
        return pcm

    async def speak(self, text: str) -> float:
        frames = self._queue.enqueue(await self.pcm_for(text))
        return frames * self._queue.frame_bytes / 2 / self.sample_rate

    async def stop(self) -> None:
        self._queue.clear()

    def play_finished(self) -> None:
        """Local playback ends when the queue drains; nothing to track."""

    async def close(self) -> None:
        """Nothing to release."""


class AcsPlaySpeaker:
    """Asks ACS to speak the reply (``play_media`` with a TextSource); ACS runs the TTS."""

    def __init__(self, endpoint: str, access_key: str, call_id: str, *, voice: str) -> None:
        from azure.communication.callautomation.aio import CallAutomationClient
        from azure.core.credentials import AzureKeyCredential

        # Constructed directly (not from a connection string) so a plain-http stand-in works.
        self._client = CallAutomationClient(endpoint, AzureKeyCredential(access_key))
        self._call = self._client.get_call_connection(call_id)
        self.voice = voice
        self._playing = 0  # play requests ACS has not reported finished (it plays them in turn)

    @property
    def speaking(self) -> bool:
        return self._playing > 0

    async def speak(self, text: str) -> None:
        from azure.communication.callautomation import TextSource

        await self._call.play_media_to_all(
            TextSource(text=spoken_text(text), voice_name=self.voice),
            operation_context="rtvoice-reply",
        )
        self._playing += 1

    async def stop(self) -> None:
        if self._playing:
            self._playing = 0
            await self._call.cancel_all_media_operations()

    def play_finished(self) -> None:
        self._playing = max(0, self._playing - 1)

    async def close(self) -> None:
        await self._client.close()
