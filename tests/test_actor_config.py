import pickle

import pytest
from pydantic import SecretStr

from actors.config import CallActorConfig
from storage.settings import Settings, load_settings


def test_defaults_frame_size_and_pickling() -> None:
    cfg = CallActorConfig.from_settings(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert cfg.frame_bytes == 640 and cfg.sample_rate == 16000
    assert cfg.with_changes(audio_format="pcm24KMono").frame_bytes == 960
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_validation() -> None:
    with pytest.raises(ValueError):
        CallActorConfig(Settings())
    with pytest.raises(ValueError):
        CallActorConfig(Settings(redis_url="redis://x"), max_restarts=0)
    with pytest.raises(ValueError):
        CallActorConfig(Settings(redis_url="redis://x"), speaker="acs")
    with pytest.raises(ValueError, match="RTVOICE_LLM_API_KEY"):  # openai with no model at all
        CallActorConfig(Settings(redis_url="redis://x", responder="openai"))


def test_acs_plays_with_a_connection_string_or_an_endpoint_and_key() -> None:
    """The gateway answers with either form; the actor's ACS speaker takes either too."""
    by_string = Settings(
        redis_url="redis://x",
        acs_connection_string=SecretStr("endpoint=http://127.0.0.1:5100/;accesskey=a2V5"),
    )
    by_parts = Settings(
        redis_url="redis://x",
        acs_endpoint="http://127.0.0.1:5100",
        acs_access_key=SecretStr("a2V5"),
    )
    for settings in (by_string, by_parts):
        cfg = CallActorConfig(settings, speaker="acs")
        assert cfg.settings.acs.rest_credentials() == ("http://127.0.0.1:5100", "a2V5")


def test_the_whole_settings_tree_reaches_the_actor() -> None:
    """Entra ID Cosmos settings (no key) arrive as read, with knobs and settings changed by name;
    paths are made absolute for workers whose working directory differs."""
    settings = load_settings(
        {
            "RTVOICE_REDIS_URL": "redis://h:1/0",
            "RTVOICE_ENVIRONMENT": "stage",
            "RTVOICE_COSMOS_ENDPOINT": "https://cosmos.example",
            "RTVOICE_COSMOS_USE_ENTRA_ID": "true",
            "RTVOICE_CALL_IDLE_TIMEOUT_S": "9",
        }
    )
    cfg = CallActorConfig.from_settings(settings, ring_seconds=2.0)
    shipped = pickle.loads(pickle.dumps(cfg))  # as Ray hands it to the worker
    assert shipped.storage.cosmos.use_entra_id and shipped.storage.cosmos.key is None
    assert shipped.storage.environment == "stage" and shipped.idle_timeout_s == 9
    assert shipped.ring_seconds == 2.0
    assert shipped.storage.archive_path.startswith("/")
    assert shipped.with_changes(call_idle_timeout_s=3).idle_timeout_s == 3


def test_no_secret_in_any_repr() -> None:
    secrets = {
        "redis_access_key": "redis-secret-1",
        "cosmos_key": "cosmos-secret-2",
        "acs_access_key": "acs-secret-3",
        "acs_connection_string": "endpoint=https://x;accesskey=acs-secret-4",
        "gateway_secret": "gateway-secret-5",
        "eventgrid_secret": "eventgrid-secret-6",
    }
    settings = Settings(redis_url="redis://h", **{k: SecretStr(v) for k, v in secrets.items()})
    cfg = CallActorConfig.from_settings(settings)
    shown = " ".join(
        [repr(settings), str(settings), repr(cfg), repr(settings.flat()), repr(cfg.storage)]
    )
    for value in secrets.values():
        assert value.rsplit("=", 1)[-1] not in shown
