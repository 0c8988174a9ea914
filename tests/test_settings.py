import pytest

from storage.settings import ConfigError, load_settings


def test_defaults_need_no_environment() -> None:
    settings = load_settings({})
    assert settings.app_prefix == "rtvoice"
    assert settings.redis_url is None
    assert settings.audio_format == "pcm16KMono"


def test_values_are_read_from_prefixed_variables() -> None:
    settings = load_settings({"RTVOICE_REDIS_URL": "redis://h:1/0", "RTVOICE_REDIS_PORT": "6390"})
    assert settings.redis_url == "redis://h:1/0"
    assert settings.redis_port == 6390


def test_wrong_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="RTVOICE_REDIS_PORT"):
        load_settings({"RTVOICE_REDIS_PORT": "not-a-port"})
    with pytest.raises(ConfigError, match="RTVOICE_AUDIO_FORMAT"):
        load_settings({"RTVOICE_AUDIO_FORMAT": "mp3"})


def test_secret_values_do_not_appear_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"RTVOICE_ACS_ACCESS_KEY": "s3cret", "RTVOICE_PUBLIC_URL": "nope"})
    assert "s3cret" not in str(info.value)
