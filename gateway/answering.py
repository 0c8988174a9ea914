"""Answering an incoming call: the URLs and options handed to ACS, and the SDK call itself.

URL building is pure; ``answer_call`` is the only I/O (one Call Automation REST request).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from azure.communication.callautomation import (
    AudioFormat,
    MediaStreamingOptions,
    TranscriptionOptions,
)
from azure.communication.callautomation.aio import CallAutomationClient

from gateway.acs_events import IncomingCall
from gateway.auth import UrlSecrets
from storage.settings import AcsSettings

CALLBACK_PATH = "/api/callbacks"
MEDIA_PATH = "/ws/media"
TRANSCRIPTION_PATH = "/ws/transcription"


@dataclass(frozen=True, slots=True)
class AnswerOptions:
    """What every call is answered with (``RTVOICE_ACS_*`` settings)."""

    audio_format: str = "pcm16KMono"
    audio_channel_type: str = "mixed"
    locale: str = "en-US"
    dtmf_tones: bool = True  # ACS sends DtmfData on the media socket only when asked to
    # The Azure AI services resource linked to ACS: real ACS transcribes (and speaks text
    # plays) through it. None: not sent (the stand-in needs none).
    cognitive_services_endpoint: str | None = None

    @classmethod
    def from_settings(cls, acs: AcsSettings) -> AnswerOptions:
        return cls(
            audio_format=acs.audio_format,
            audio_channel_type=acs.audio_channel_type,
            locale=acs.transcription_locale,
            dtmf_tones=acs.dtmf_tones,
            cognitive_services_endpoint=acs.cognitive_services_endpoint,
        )


@dataclass(frozen=True, slots=True)
class AnswerPlan:
    nonce: str  # bound to the call id once ACS assigns it (gateway/call_binding.py)
    callback_url: str
    media_url: str
    transcription_url: str
    options: AnswerOptions


def websocket_base(public_url: str) -> str:
    """``https://host`` -> ``wss://host`` (ACS connects to the transport URL as a client)."""
    if public_url.startswith("https://"):
        return "wss://" + public_url.removeprefix("https://")
    return "ws://" + public_url.removeprefix("http://")


def plan_answer(
    public_url: str, url_secrets: UrlSecrets, options: AnswerOptions | None = None
) -> AnswerPlan:
    """Per-call URLs, each carrying a fresh nonce and its HMAC so any replica can verify them."""
    nonce = url_secrets.new_nonce()
    query = urlencode({"n": nonce, "s": url_secrets.sign(nonce)})
    base = public_url.rstrip("/")
    ws = websocket_base(base)
    return AnswerPlan(
        nonce=nonce,
        callback_url=f"{base}{CALLBACK_PATH}?{query}",
        media_url=f"{ws}{MEDIA_PATH}?{query}",
        transcription_url=f"{ws}{TRANSCRIPTION_PATH}?{query}",
        options=options or AnswerOptions(),
    )


async def answer_call(client: CallAutomationClient, call: IncomingCall, plan: AnswerPlan) -> str:
    """Answer with bidirectional media streaming and transcription; returns the call id."""
    options = plan.options
    media = MediaStreamingOptions(
        transport_url=plan.media_url,
        transport_type="websocket",
        content_type="audio",
        audio_channel_type=options.audio_channel_type,
        start_media_streaming=True,
        enable_bidirectional=True,
        audio_format=AudioFormat(options.audio_format),
        enable_dtmf_tones=options.dtmf_tones,
    )
    transcription = TranscriptionOptions(
        transport_url=plan.transcription_url,
        transport_type="websocket",
        locale=options.locale,
        start_transcription=True,
        enable_intermediate_results=True,
    )
    props = await client.answer_call(
        call.incoming_call_context,
        plan.callback_url,
        cognitive_services_endpoint=options.cognitive_services_endpoint,
        media_streaming=media,
        transcription=transcription,
        operation_context="rtvoice-answer",
    )
    call_id = props.call_connection_id
    if not call_id:
        raise RuntimeError("ACS answered without a call connection id")
    return str(call_id)
