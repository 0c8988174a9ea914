import subprocess
import sys

from actors.outbound_audio import OutboundQueue
from actors.speaker import MAX_SPOKEN_CHARS, PcmSpeaker, spoken_text, synthesize
from storage.keys import RedisKeyManager
from storage.redis_connection import PayloadLimits
from storage.redis_manager import AsyncAzureRedisManager


def test_synthesize_is_deterministic_speech_like_pcm() -> None:
    a = synthesize("hello there", "en-US-NancyNeural", 16000)
    assert a == synthesize("hello there", "en-US-NancyNeural", 16000)
    assert a != synthesize("hello there", "en-US-GuyNeural", 16000)
    assert len(a) % 2 == 0 and len(a) > 16000  # roughly half a second or more
    assert len(synthesize("hello there", "v", 24000)) > len(synthesize("hello there", "v", 16000))
    assert synthesize("   ", "v", 16000) == b""


def test_synthesizing_a_reply_imports_no_numpy() -> None:
    # Each call actor would pay numpy's import (0.13 s of CPU) on its first reply: 50 demo
    # calls replying at once stalled every call's audio for seconds.
    code = (
        "import sys; from actors.speaker import synthesize; synthesize('hello there', 'v', 16000);"
        "sys.exit('numpy' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


async def test_pcm_speaker_uses_the_shared_tts_cache(redis_mgr: AsyncAzureRedisManager) -> None:
    queue = OutboundQueue(frame_bytes=640, max_frames=10_000)
    one = PcmSpeaker(redis_mgr, queue, voice="v", audio_format="pcm16KMono", sample_rate=16000)
    other = PcmSpeaker(redis_mgr, queue, voice="v", audio_format="pcm16KMono", sample_rate=16000)
    await one.speak("how can I help")
    assert (one.hits, one.misses) == (0, 1) and one.speaking
    await other.speak("how can I help")  # another call, same text: served from the cache
    assert (other.hits, other.misses) == (1, 0)
    assert await redis_mgr.get_tts("v", "pcm16KMono", "how can I help") == synthesize(
        "how can I help", "v", 16000
    )
    await one.stop()
    assert not one.speaking and len(queue) == 0


async def test_pcm_speaker_speaks_without_redis(key_manager: RedisKeyManager) -> None:
    from simulator.devstack.local_redis import free_port

    down = AsyncAzureRedisManager.from_url(
        f"redis://127.0.0.1:{free_port()}/0", key_manager, op_timeout=0.5, connect_timeout=0.2
    )
    queue = OutboundQueue(frame_bytes=640, max_frames=10_000)
    speaker = PcmSpeaker(down, queue, voice="v", audio_format="pcm16KMono", sample_rate=16000)
    await speaker.speak("still talking")
    assert speaker.misses == 1 and len(queue) > 0
    await down.close()


def test_the_longest_spoken_reply_fits_the_tts_cache() -> None:
    # One-letter words give the most audio per character; 24 kHz the most bytes per second.
    worst = spoken_text("a " * 60_000)
    assert len(worst) == MAX_SPOKEN_CHARS
    assert len(synthesize(worst, "v", 24000)) <= PayloadLimits().max_binary_bytes


async def test_a_long_reply_is_spoken_only_up_to_the_cap(redis_mgr: AsyncAzureRedisManager) -> None:
    queue = OutboundQueue(frame_bytes=640, max_frames=100_000)
    speaker = PcmSpeaker(redis_mgr, queue, voice="v", audio_format="pcm16KMono", sample_rate=16000)
    reply = "You said: " + "please read this back to me " * 2200  # echoes a 60 KB utterance
    pcm = await speaker.pcm_for(reply)
    assert pcm == synthesize(reply[:MAX_SPOKEN_CHARS], "v", 16000)
    assert await redis_mgr.get_tts("v", "pcm16KMono", reply[:MAX_SPOKEN_CHARS]) == pcm


async def test_pcm_speaker_speaks_when_the_cache_refuses_the_audio(
    redis_url: str, key_manager: RedisKeyManager
) -> None:
    small = AsyncAzureRedisManager.from_url(
        redis_url, key_manager, limits=PayloadLimits(max_binary_bytes=1000)
    )
    queue = OutboundQueue(frame_bytes=640, max_frames=10_000)
    speaker = PcmSpeaker(small, queue, voice="v", audio_format="pcm16KMono", sample_rate=16000)
    await speaker.speak("too long to cache")  # PayloadTooLargeError from the cache: not fatal
    assert speaker.misses == 1 and len(queue) > 0
    await small.close()
