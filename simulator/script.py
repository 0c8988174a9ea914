"""What one simulated caller does: who they are, what they say, who hangs up, which faults apply.

Declarative pydantic models only (loadable from JSON); running them is ``simulator.call``'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulator.audio import speaking_duration
from simulator.jwt_issuer import TokenFault

DTMF_GAP_S = 0.2  # silence after each key press

MalformedKind = Literal[
    "bad_json", "unknown_kind", "bad_base64", "wrong_size", "binary", "oversized"
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScriptLine(_Model):
    """One step: say ``say`` (generated audio, or ``wav`` if given), stay silent, or press keys."""

    say: str | None = None
    wav: Path | None = None
    pause_s: float = Field(default=0.0, ge=0.0)
    dtmf: str | None = Field(default=None, pattern=r"^[0-9*#A-D]+$")

    @model_validator(mode="after")
    def _one_action(self) -> ScriptLine:
        if self.say is None and self.wav is None and self.dtmf is None and self.pause_s == 0.0:
            raise ValueError("a script line needs say, wav, dtmf or pause_s")
        if self.wav is not None and self.say is None:
            raise ValueError("a wav line needs `say`: the transcript of the file")
        return self


class CallbackKnobs(_Model):
    duplicate: bool = False  # deliver every event twice (same id)
    reorder: bool = False  # swap neighbouring events (ParticipantsUpdated before CallConnected)
    delay_s: float = Field(default=0.0, ge=0.0)  # wait before each delivery
    retries: int = Field(default=0, ge=0)  # re-deliver on 5xx or connection failure


class CallFaults(_Model):
    callbacks: CallbackKnobs = CallbackKnobs()
    callback_token: TokenFault = TokenFault.NONE
    media_token: TokenFault = TokenFault.NONE
    transcription_token: TokenFault = TokenFault.NONE
    malformed_frames: list[MalformedKind] = []  # sent right after AudioMetadata
    drop_media_after_s: float | None = Field(default=None, gt=0.0)  # abort the socket mid-call
    reconnect_to: str | None = None  # gateway base URL for the reconnect (default: the same)
    # A socket lost without a closing handshake (the gateway's process died): ACS connects it
    # again to the same URL (behind a load balancer: another replica) and resends what failed.
    reconnect_lost_sockets: bool = False

    @property
    def expects_rejection(self) -> bool:
        return any(
            fault is not TokenFault.NONE
            for fault in (self.callback_token, self.media_token, self.transcription_token)
        )


class CallerScript(_Model):
    caller: str = "+14255550100"  # E.164 phone number, or an ACS user id (8:acs:…)
    callee: str = "+18005550199"
    display_name: str = "Simulated Caller"
    voice: int = 0  # picks the generated voice's pitch, so heard audio identifies the caller
    lines: list[ScriptLine] = [ScriptLine(say="Hello, I would like some help please.")]
    lead_in_s: float = Field(default=0.5, ge=0.0)  # silence before the first line
    hangs_up: Literal["caller", "app"] = "caller"
    app_hangup_timeout_s: float = Field(default=10.0, gt=0.0)  # if hangs_up == "app"
    tail_s: float = Field(default=0.5, ge=0.0)  # silence after the last line (hear the reply)
    intermediate_results: bool = True
    realtime: bool = True  # False: frames as fast as possible (benchmarks)
    record_audio: bool = True  # keep the heard PCM in the report
    faults: CallFaults = CallFaults()

    @property
    def caller_is_phone(self) -> bool:
        return self.caller.startswith("+")

    def expected_duration_s(self) -> float:
        """The script's length at real time (WAV lines estimated from their transcript)."""
        total = self.lead_in_s + self.tail_s
        for line in self.lines:
            total += speaking_duration(line.say) if line.say else 0.0
            total += line.pause_s + DTMF_GAP_S * len(line.dtmf or "")
        return total

    @classmethod
    def talking_for(cls, duration_s: float, voice: int = 0, **fields: object) -> CallerScript:
        """A caller who speaks in short sentences with pauses for roughly ``duration_s``."""
        sentences = [
            "Hello, I am calling about my account.",
            "Can you tell me my current balance?",
            "I also want to change my address.",
            "Thank you, that is very helpful.",
        ]
        lines: list[ScriptLine] = []
        spoken = 0.0
        i = 0
        while spoken < duration_s or not lines:
            text = sentences[i % len(sentences)]
            lines.append(ScriptLine(say=text, pause_s=1.0))
            spoken += speaking_duration(text) + 1.0
            i += 1
        return cls(lines=lines, voice=voice, **fields)  # type: ignore[arg-type]
