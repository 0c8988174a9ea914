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

CALLBACK_PATH = "/api/callbacks"
MEDIA_PATH = "/ws/media"
TRANSCRIPTION_PATH = "/ws/transcription"


@dataclass(frozen=True, slots=True)
class AnswerPlan:
    nonce: str  # bound to the call id once ACS assigns it (gateway/call_binding.py)
    callback_url: str
    media_url: str
    transcription_url: str
    audio_format: str
    audio_channel_type: str
    locale: str


def websocket_base(public_url: str) -> str:
    """``https://host`` -> ``wss://host`` (ACS connects to the transport URL as a client)."""
    if public_url.startswith("https://"):
        return "wss://" + public_url.removeprefix("https://")
    return "ws://" + public_url.removeprefix("http://")


def plan_answer(
    public_url: str,
    url_secrets: UrlSecrets,
    *,
    audio_format: str = "pcm16KMono",
    audio_channel_type: str = "mixed",
    locale: str = "en-US",
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
        audio_format=audio_format,
        audio_channel_type=audio_channel_type,
        locale=locale,
    )


async def answer_call(client: CallAutomationClient, call: IncomingCall, plan: AnswerPlan) -> str:
    """Answer with bidirectional media streaming and transcription; returns the call id."""
    media = MediaStreamingOptions(
        transport_url=plan.media_url,
        transport_type="websocket",
        content_type="audio",
        audio_channel_type=plan.audio_channel_type,
        start_media_streaming=True,
        enable_bidirectional=True,
        audio_format=AudioFormat(plan.audio_format),
    )
    transcription = TranscriptionOptions(
        transport_url=plan.transcription_url,
        transport_type="websocket",
        locale=plan.locale,
        start_transcription=True,
        enable_intermediate_results=True,
    )
    props = await client.answer_call(
        call.incoming_call_context,
        plan.callback_url,
        media_streaming=media,
        transcription=transcription,
        operation_context="rtvoice-answer",
    )
    call_id = props.call_connection_id
    if not call_id:
        raise RuntimeError("ACS answered without a call connection id")
    return str(call_id)
