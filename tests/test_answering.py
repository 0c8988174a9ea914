from urllib.parse import parse_qs, urlparse

from gateway.answering import plan_answer, websocket_base
from gateway.auth import UrlSecrets


def test_plan_urls_carry_a_verifiable_secret() -> None:
    url_secrets = UrlSecrets(b"0123456789abcdef0123")
    plan = plan_answer("https://voice.example.com/", url_secrets, audio_format="pcm24KMono")
    assert plan.callback_url.startswith("https://voice.example.com/api/callbacks?")
    assert plan.media_url.startswith("wss://voice.example.com/ws/media?")
    assert plan.transcription_url.startswith("wss://voice.example.com/ws/transcription?")
    query = parse_qs(urlparse(plan.callback_url).query)
    url_secrets.verify(query["n"][0], query["s"][0])
    assert plan.audio_format == "pcm24KMono"


def test_websocket_base() -> None:
    assert websocket_base("http://127.0.0.1:8000") == "ws://127.0.0.1:8000"
    assert websocket_base("https://h") == "wss://h"
