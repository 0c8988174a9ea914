"""Generated and loaded caller audio, frame slicing and analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulator import audio
from simulator.audio import AudioFormat


def test_formats() -> None:
    assert AudioFormat(16000).frame_bytes == 640
    assert AudioFormat(24000).frame_bytes == 960
    assert AudioFormat.from_acs("pcm24KMono").sample_rate == 24000
    assert AudioFormat.from_acs("PCM24KMONO").sample_rate == 24000
    assert AudioFormat.from_acs(None).sample_rate == 16000
    with pytest.raises(ValueError):
        AudioFormat(8000)


def test_frames_pad_the_tail_and_never_drop_it() -> None:
    fmt = AudioFormat(16000)
    chunks = list(audio.frames(b"\x01" * 1000, fmt))
    assert [len(c) for c in chunks] == [640, 640]
    assert chunks[1][:360] == b"\x01" * 360 and chunks[1][360:] == bytes(280)


@pytest.mark.parametrize("rate", [16000, 24000])
def test_speech_like_is_deterministic_and_identifies_the_voice(rate: int) -> None:
    fmt = AudioFormat(rate)
    pcm = audio.speech_like(1.0, fmt, voice=5)
    assert len(pcm) == fmt.byte_count(1.0)
    assert pcm == audio.speech_like(1.0, fmt, voice=5)
    assert abs(audio.dominant_frequency(pcm, fmt) - audio.voice_frequency(5)) < 5
    assert audio.dominant_frequency(audio.silence(0.1, fmt), fmt) == 0.0


def test_distinct_voices_have_distinct_pitches() -> None:
    assert len({audio.voice_frequency(v) for v in range(24)}) == 24


def test_wav_round_trip_and_resampling(tmp_path: Path) -> None:
    source = AudioFormat(24000)
    pcm = audio.speech_like(0.5, source, voice=2)
    path = tmp_path / "caller.wav"
    audio.write_wav(path, pcm, source)
    assert audio.load_wav(path, source) == pcm
    down = audio.load_wav(path, AudioFormat(16000))
    assert len(down) == AudioFormat(16000).byte_count(0.5)
    assert abs(audio.dominant_frequency(down, AudioFormat(16000)) - audio.voice_frequency(2)) < 5


def test_stereo_wav_is_mixed_down(tmp_path: Path) -> None:
    import wave

    stereo = np.array([[1000, 3000]] * 160, dtype="<i2").tobytes()
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(stereo)
    mono = np.frombuffer(audio.load_wav(path, AudioFormat(16000)), dtype="<i2")
    assert mono.tolist() == [2000] * 160


def test_speaking_duration() -> None:
    assert audio.speaking_duration("one two three four five") == pytest.approx(2.0)
    assert audio.speaking_duration("hi") == pytest.approx(0.4)


def test_prepared_speech_is_not_synthesised_again_in_either_format() -> None:
    text, voice = "a line prepared ahead of its call", 9_001  # a voice no other test uses
    assert audio.prepare_speech([(text, voice)]) == len(audio.SUPPORTED_RATES)
    before = audio.speech_like.cache_info()
    for rate in audio.SUPPORTED_RATES:
        audio.speech_like(audio.speaking_duration(text), AudioFormat(rate), voice)
    after = audio.speech_like.cache_info()
    assert after.hits - before.hits == len(audio.SUPPORTED_RATES)
    assert after.misses == before.misses
