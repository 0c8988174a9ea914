import pytest

from storage.errors import InvalidKeyError
from storage.keys import TTL_POLICIES, Component, DataType, RedisKeyManager


def test_call_key_grammar() -> None:
    keys = RedisKeyManager(app_prefix="rtvoice", environment="prod")
    assert keys.call_key("abc123", Component.SESSION) == "rtvoice:prod:call:abc123:session"
    assert (
        keys.conversation_key("xyz789", Component.CONTEXT)
        == "rtvoice:prod:conversation:xyz789:context"
    )
    dev = RedisKeyManager(app_prefix="rtvoice", environment="dev")
    assert dev.worker_key("worker-001") == "rtvoice:dev:worker:worker-001:affinity"
    assert keys.key(DataType.USER, "u1", Component.PROFILE) == "rtvoice:prod:user:u1:profile"


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "tab\there", "new\nline", " "])
def test_bad_identifiers_are_rejected(bad: str) -> None:
    keys = RedisKeyManager()
    with pytest.raises(InvalidKeyError):
        keys.call_key(bad, Component.SESSION)


def test_bad_prefix_is_rejected() -> None:
    with pytest.raises(InvalidKeyError):
        RedisKeyManager(app_prefix="rt:voice")
    with pytest.raises(InvalidKeyError):
        RedisKeyManager(environment="")


def test_hash_tags_group_a_call_in_one_slot() -> None:
    keys = RedisKeyManager(environment="prod", hash_tags=True)
    assert keys.call_key("abc", Component.AFFINITY) == "rtvoice:prod:call:{abc}:affinity"


def test_tts_key_depends_on_voice_format_and_text() -> None:
    keys = RedisKeyManager()
    a = keys.tts_cache_key("en-US-NancyNeural", "pcm16KMono", "Hello")
    assert a == keys.tts_cache_key("en-US-NancyNeural", "pcm16KMono", "Hello")
    assert a != keys.tts_cache_key("en-US-NancyNeural", "pcm24KMono", "Hello")
    assert a != keys.tts_cache_key("en-US-JennyNeural", "pcm16KMono", "Hello")
    assert a.startswith("rtvoice:prod:cache:") and a.endswith(":tts")


def test_ttl_policy_table() -> None:
    assert TTL_POLICIES == {
        "conversation_context": 1800,
        "session_history": 7200,
        "authentication_state": 900,
        "tts_cache": 86400,
        "call_summary": 604800,
    }
