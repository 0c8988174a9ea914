"""Caller audio: speech-like generated PCM, WAV loading, 20 ms frame slicing and analysis.

Pure functions over 16-bit little-endian mono PCM bytes; never touches sockets or clocks.
"""

from __future__ import annotations

import functools
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRAME_MS = 20
SAMPLE_WIDTH = 2  # bytes per 16-bit sample
SUPPORTED_RATES = (16_000, 24_000)
WORDS_PER_SECOND = 2.5  # ~150 words per minute, a conversational pace
SYLLABLE_HZ = 4.0


@dataclass(frozen=True, slots=True)
class AudioFormat:
    sample_rate: int

    def __post_init__(self) -> None:
        if self.sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported sample rate {self.sample_rate}")

    @classmethod
    def from_acs(cls, name: str | None) -> AudioFormat:
        """``pcm16KMono`` / ``pcm24KMono`` (ACS's names; any casing); default 16 kHz."""
        if name and name.lower() == "pcm24kmono":
            return cls(24_000)
        return cls(16_000)

    @property
    def frame_bytes(self) -> int:
        return self.sample_rate * FRAME_MS // 1000 * SAMPLE_WIDTH

    def duration_s(self, pcm_len: int) -> float:
        return pcm_len / (self.sample_rate * SAMPLE_WIDTH)

    def byte_count(self, seconds: float) -> int:
        return round(seconds * self.sample_rate) * SAMPLE_WIDTH


def speaking_duration(text: str) -> float:
    """How long ``text`` takes to say aloud (also the stand-in's play duration)."""
    return max(0.4, len(text.split()) / WORDS_PER_SECOND)


def voice_frequency(voice: int) -> float:
    """Each caller's fundamental: distinct per voice index so heard audio identifies the caller."""
    return 110.0 + 15.0 * (voice % 24)


@functools.lru_cache(maxsize=256)
def speech_like(duration_s: float, fmt: AudioFormat, voice: int, amplitude: float = 0.3) -> bytes:
    """A voiced tone with harmonics under a syllable-rate envelope; deterministic per voice.

    Cached: callers repeat their sentences, and a caller sending as fast as it can (``--fast``,
    bench data_plane's saturated run) would otherwise spend most of its CPU synthesising them."""
    n = round(duration_s * fmt.sample_rate)
    t = np.arange(n, dtype=np.float64) / fmt.sample_rate
    f0 = voice_frequency(voice)
    # Slow pitch wobble and a syllable envelope make it speech-shaped for VAD-like consumers.
    phase = 2 * np.pi * f0 * t + 0.8 * np.sin(2 * np.pi * 1.3 * t)
    signal = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * SYLLABLE_HZ * t + voice) ** 2
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)  # 20 ms fade in and out
    pcm = signal / 1.75 * envelope * ramp * amplitude * 32767
    return pcm.astype("<i2").tobytes()


def prepare_speech(lines: Iterable[tuple[str, int]]) -> int:
    """Synthesise ``(text, voice)`` lines ahead, in every format ACS may ask for (the answer
    picks one), so a burst of callers does not synthesise them on the cores it is measured on.
    Returns how many were made; past the cache's size the oldest are made again when said."""
    made = 0
    for text, voice in lines:
        for rate in SUPPORTED_RATES:
            speech_like(speaking_duration(text), AudioFormat(rate), voice)
            made += 1
    return made


def silence(duration_s: float, fmt: AudioFormat) -> bytes:
    return bytes(fmt.byte_count(duration_s))


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """Linear interpolation; good enough for test audio, not for listening."""
    if from_rate == to_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n_out = round(len(samples) * to_rate / from_rate)
    positions = np.arange(n_out) * (from_rate / to_rate)
    out = np.interp(positions, np.arange(len(samples)), samples)
    return np.clip(np.round(out), -32768, 32767).astype("<i2").tobytes()


def load_wav(path: Path, fmt: AudioFormat) -> bytes:
    """A 16-bit PCM WAV file as mono PCM at ``fmt``'s rate (channels are averaged)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != SAMPLE_WIDTH:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        channels, rate = wav.getnchannels(), wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    samples = np.frombuffer(raw, dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).round().astype("<i2")
    return resample(samples.tobytes(), rate, fmt.sample_rate)


def write_wav(path: Path, pcm: bytes, fmt: AudioFormat) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(fmt.sample_rate)
        wav.writeframes(pcm)


def frames(pcm: bytes, fmt: AudioFormat) -> Iterator[bytes]:
    """Exact 20 ms frames; a trailing partial frame is padded with silence, never dropped."""
    size = fmt.frame_bytes
    for start in range(0, len(pcm), size):
        chunk = pcm[start : start + size]
        yield chunk if len(chunk) == size else chunk + bytes(size - len(chunk))


def dominant_frequency(pcm: bytes, fmt: AudioFormat) -> float:
    """The strongest frequency in ``pcm`` (Hz); 0.0 for silence or empty input."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
    if samples.size < 32 or not samples.any():
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * fmt.sample_rate / samples.size)
