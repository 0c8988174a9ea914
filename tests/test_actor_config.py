import pickle

import pytest

from actors.config import CallActorConfig
from storage.settings import load_settings


def test_defaults_frame_size_and_pickling() -> None:
    cfg = CallActorConfig(redis_url="redis://127.0.0.1:1/0")
    assert cfg.frame_bytes == 640 and cfg.sample_rate == 16000
    assert cfg.with_changes(audio_format="pcm24KMono").frame_bytes == 960
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_validation() -> None:
    with pytest.raises(ValueError):
        CallActorConfig(redis_url=None)
    with pytest.raises(ValueError):
        CallActorConfig(redis_url="redis://x", max_restarts=0)
    with pytest.raises(ValueError):
        CallActorConfig(redis_url="redis://x", speaker="acs")


def test_from_settings_and_back() -> None:
    settings = load_settings(
        {
            "RTVOICE_REDIS_URL": "redis://h:1/0",
            "RTVOICE_ENVIRONMENT": "stage",
            "RTVOICE_COSMOS_ENDPOINT": "https://cosmos.example",
            "RTVOICE_COSMOS_KEY": "k",
            "RTVOICE_CALL_IDLE_TIMEOUT_S": "9",
        }
    )
    cfg = CallActorConfig.from_settings(settings, ring_seconds=2.0)
    assert cfg.environment == "stage" and cfg.idle_timeout_s == 9 and cfg.ring_seconds == 2.0
    back = cfg.storage_settings()
    assert back.cosmos_key is not None and back.cosmos_key.get_secret_value() == "k"
    assert back.redis_url == "redis://h:1/0" and back.environment == "stage"
