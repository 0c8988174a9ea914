"""What one simulated call observed, filled in as the call runs and returned at its end.

A plain record: no I/O, no policy beyond summarising itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class CallReport:
    index: int
    caller: str
    call_connection_id: str
    answered: bool = False
    rejected: bool = False  # the app refused the call (reject) instead of answering
    reject_reason: str | None = None  # its callRejectReason: "none", "busy" or "forbidden"
    incoming_call_status: int | None = None  # gateway's reply to the Event Grid POST
    time_to_connected_s: float | None = None  # IncomingCall sent -> CallConnected accepted
    audio_format: str | None = None  # negotiated at answer time
    channel_type: str | None = None
    frames_sent: int = 0
    dtmf_sent: int = 0
    transcripts_sent: int = 0
    outbound_messages: int = 0
    heard_bytes: int = 0
    heard_s: float = 0.0
    heard_pcm: bytes = b""  # the audio played out to the caller (when recording)
    stop_audio: int = 0
    cleared_bytes: int = 0
    media_connects: int = 0
    media_close_code: int | None = None  # how the gateway last closed the media socket
    media_rejected: str | None = None  # the upgrade was refused (status / reason)
    transcription_rejected: str | None = None
    operations: list[str] = field(default_factory=list)  # REST calls the app made
    played: list[str] = field(default_factory=list)  # texts the app asked ACS to play
    events: list[str] = field(default_factory=list)  # callback events accepted by the gateway
    callback_statuses: list[int] = field(default_factory=list)
    hung_up_by: str | None = None  # "caller" | "app" | "timeout"
    duration_s: float = 0.0
    unexpected: list[str] = field(default_factory=list)

    @classmethod
    def from_summary(cls, doc: dict[str, Any]) -> CallReport:
        """A report back from its ``summary()`` (a load generator's JSON); no audio."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in names})

    @property
    def ok(self) -> bool:
        return self.answered and not self.unexpected

    def summary(self) -> dict[str, Any]:
        """JSON-friendly view without the raw audio."""
        return {
            "index": self.index,
            "caller": self.caller,
            "call_connection_id": self.call_connection_id,
            "answered": self.answered,
            "rejected": self.rejected,
            "reject_reason": self.reject_reason,
            "time_to_connected_s": self.time_to_connected_s,
            "audio_format": self.audio_format,
            "channel_type": self.channel_type,
            "frames_sent": self.frames_sent,
            "dtmf_sent": self.dtmf_sent,
            "transcripts_sent": self.transcripts_sent,
            "outbound_messages": self.outbound_messages,
            "heard_s": round(self.heard_s, 3),
            "stop_audio": self.stop_audio,
            "cleared_bytes": self.cleared_bytes,
            "media_connects": self.media_connects,
            "media_close_code": self.media_close_code,
            "media_rejected": self.media_rejected,
            "transcription_rejected": self.transcription_rejected,
            "operations": self.operations,
            "played": self.played,
            "events": self.events,
            "hung_up_by": self.hung_up_by,
            "duration_s": round(self.duration_s, 3),
            "unexpected": self.unexpected,
        }
