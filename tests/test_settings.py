import pytest

from storage.settings import ENV_VARS, ConfigError, Settings, load_settings


def test_defaults_need_no_environment() -> None:
    settings = load_settings({})
    assert settings.storage.app_prefix == "rtvoice"
    assert settings.storage.redis.url is None
    assert settings.acs.audio_format == "pcm16KMono"


def test_values_are_read_from_prefixed_variables() -> None:
    settings = load_settings(
        {"RTVOICE_REDIS_URL": "redis://h:1/0", "RTVOICE_REDIS_PORT": "6390", "RTVOICE_X": "1"}
    )
    assert settings.storage.redis.url == "redis://h:1/0"
    assert settings.storage.redis.port == 6390


def test_every_variable_has_a_place_in_the_tree_and_flat_names_round_trip() -> None:
    settings = Settings()
    flat = settings.flat()
    assert set(flat) == {name.lower() for name in ENV_VARS}
    assert Settings(**flat) == settings
    changed = settings.replace(public_url="http://gw:1", call_idle_timeout_s=5)
    assert changed.gateway.public_url == "http://gw:1" and changed.actors.idle_timeout_s == 5
    with pytest.raises(ValueError, match="unknown setting"):
        Settings(no_such_thing=1)


def test_wrong_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="RTVOICE_REDIS_PORT"):
        load_settings({"RTVOICE_REDIS_PORT": "not-a-port"})
    with pytest.raises(ConfigError, match="RTVOICE_AUDIO_FORMAT"):
        load_settings({"RTVOICE_AUDIO_FORMAT": "mp3"})
    with pytest.raises(ConfigError, match="RTVOICE_CALL_IDLE_TIMEOUT_S"):
        load_settings({"RTVOICE_CALL_IDLE_TIMEOUT_S": "inf"})


def test_secret_values_do_not_appear_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"RTVOICE_ACS_ACCESS_KEY": "s3cret", "RTVOICE_PUBLIC_URL": "nope"})
    assert "s3cret" not in str(info.value)


def test_the_responder_and_its_model_are_settings() -> None:
    settings = load_settings(
        {
            "RTVOICE_RESPONDER": "openai",
            "RTVOICE_AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com/",
            "RTVOICE_LLM_MODEL": "my-deployment",
            "RTVOICE_LLM_API_KEY": "k3y",
            "RTVOICE_LLM_TEMPERATURE": "0.5",
            "RTVOICE_LLM_HISTORY_CHARS": "2000",
        }
    )
    assistant = settings.assistant
    assert (assistant.responder, assistant.model) == ("openai", "my-deployment")
    assert assistant.azure_endpoint == "https://r.openai.azure.com" and assistant.temperature == 0.5
    assert assistant.api_key is not None and "k3y" not in repr(settings)
    assert load_settings({"RTVOICE_RESPONDER": "my_pkg.bots:Bot"}).assistant.responder == (
        "my_pkg.bots:Bot"
    )
    for name, value in (
        ("RTVOICE_RESPONDER", "gpt"),
        ("RTVOICE_RESPONDER", "a b:c"),
        ("RTVOICE_LLM_TEMPERATURE", "3"),
        ("RTVOICE_LLM_BASE_URL", "ftp://x"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value})
