"""The documents a call actor writes, as typed values: the call session (Redis, while the call
lives) and, at its end, the transcript, the call summary, the analytics record and audit entries.

Pure: builders from the actor's state and ``to_dict``/``from_dict`` only; never performs I/O.
Each ``to_dict`` is a stored format (Redis, the archive, the spool): it must never change shape
without the readers (gateway, archive drain, dashboards) changing with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from actors.call_state import CallState
from storage.conversation import Turn

SESSION_KEY = "actor"  # this actor's part of the call session
_AUDIT_FIELDS = ("id", "call_id", "action", "at", "epoch")


def caller_lookup_id(incoming: Mapping[str, Any]) -> str | None:
    """The profile lookup id in the IncomingCall fields: E.164 number or ACS user id
    (``caller_id``, else ``caller.raw_id`` without its ``4:`` kind prefix)."""
    value = incoming.get("caller_id")
    if not isinstance(value, str) or not value:
        caller = incoming.get("caller")
        raw = caller.get("raw_id") if isinstance(caller, dict) else None
        if not isinstance(raw, str) or not raw:
            return None
        value = raw[2:] if raw.startswith("4:") else raw
    return value


def _fields_dict(doc: Any) -> dict[str, Any]:
    """A flat dataclass as a dict in field order; unlike ``asdict``, values are not copied."""
    return {f.name: getattr(doc, f.name) for f in fields(doc)}


# -- audit --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited step of the call (activated, restarted, CallConnected, ended, ...)."""

    id: str
    call_id: str
    action: str
    at: float
    epoch: int
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(
        cls, call_id: str, epoch: int, n: int, action: str, at: float, details: Mapping[str, Any]
    ) -> AuditEntry:
        """The ``n``-th entry of the call (1-based): its id is unique per call and epoch."""
        return cls(f"{call_id}-e{epoch}-{n}-{action}", call_id, action, at, epoch, dict(details))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "call_id": self.call_id,
            "action": self.action,
            "at": self.at,
            "epoch": self.epoch,
            **self.details,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AuditEntry:
        return cls(
            id=str(doc.get("id", "")),
            call_id=str(doc.get("call_id", "")),
            action=str(doc.get("action", "")),
            at=float(doc.get("at") or 0.0),
            epoch=int(doc.get("epoch") or 0),
            details={k: v for k, v in doc.items() if k not in _AUDIT_FIELDS},
        )


# -- call session (Redis) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActorSession:
    """This actor's part of the call session (under ``"actor"``): what a restart reloads.

    ``dtmf`` and ``audit`` are None in the core session, which leaves them out."""

    epoch: int
    restarts: int
    state: dict[str, Any]  # CallState.to_dict()
    ended: bool
    dtmf: list[str] | None = None
    audit: list[AuditEntry] | None = None

    def core(self) -> ActorSession:
        """Without the parts whose size others decide (participants, tones, audit)."""
        return replace(self, state=self.state | {"participants": []}, dtmf=None, audit=None)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"epoch": self.epoch, "restarts": self.restarts, "state": self.state}
        if self.dtmf is not None:
            doc["dtmf"] = self.dtmf
        if self.audit is not None:
            doc["audit"] = [entry.to_dict() for entry in self.audit]
        doc["ended"] = self.ended
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ActorSession:
        return cls(
            epoch=int(doc.get("epoch") or 0),
            restarts=int(doc.get("restarts", 0)),
            state=doc.get("state") or {},
            ended=bool(doc.get("ended")),
            dtmf=list(doc.get("dtmf") or []),
            audit=[AuditEntry.from_dict(entry) for entry in doc.get("audit") or []],
        )


@dataclass(frozen=True, slots=True)
class CallSession:
    """``call:{id}:session``: the gateway's IncomingCall fields at the top level (as the gateway
    stored them, kept as they are), and this actor's part under ``"actor"`` once one has run."""

    call_id: str
    incoming: dict[str, Any]
    actor: ActorSession | None = None

    def core(self) -> CallSession:
        """What a restart and the end mark need: stored when the whole session cannot be."""
        return CallSession(self.call_id, {}, self.actor.core() if self.actor else None)

    def to_dict(self) -> dict[str, Any]:
        doc = {**self.incoming, "call_id": self.call_id}
        if self.actor is not None:
            doc[SESSION_KEY] = self.actor.to_dict()
        return doc

    @classmethod
    def from_dict(cls, call_id: str, doc: Mapping[str, Any] | None) -> CallSession:
        """A stored session (or None: no session yet). An empty or malformed actor part counts
        as none: no actor has run for the call."""
        doc = doc or {}
        found = doc.get(SESSION_KEY)
        actor = ActorSession.from_dict(found) if isinstance(found, dict) and found else None
        return cls(call_id, {k: v for k, v in doc.items() if k != SESSION_KEY}, actor)


def call_session(
    call_id: str,
    incoming: dict[str, Any],
    *,
    epoch: int,
    restarts: int,
    state: CallState,
    dtmf: list[str],
    audit: list[AuditEntry],
    ended: bool,
) -> CallSession:
    return CallSession(
        call_id, incoming, ActorSession(epoch, restarts, state.to_dict(), ended, dtmf, audit)
    )


# -- end of call (archive and Redis) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranscriptMetadata:
    caller: Any  # the context's caller: {"id", "display_name"}
    incoming: dict[str, Any]
    participants: list[dict[str, Any]]
    epoch: int
    restarts: int
    dtmf: list[str]
    audio_format: str

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)


@dataclass(frozen=True, slots=True)
class TranscriptDocument:
    """The archived transcript: ordered turns, call metadata and the metrics summary."""

    call_id: str
    started_at: float
    ended_at: float
    end_reason: str
    turns: list[dict[str, Any]]
    metadata: TranscriptMetadata
    metrics: dict[str, Any]

    @property
    def caller_id(self) -> Any:
        return (self.metadata.caller or {}).get("id")

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "turns": self.turns,
            "metadata": self.metadata.to_dict(),
            "metrics": self.metrics,
        }


@dataclass(frozen=True, slots=True)
class CallSummary:
    """The call summary kept in Redis (7 days): where the transcript went, or ``"failed"``."""

    call_id: str
    started_at: float
    ended_at: float
    duration_s: float
    end_reason: str
    turns: int
    caller_id: Any
    archived_to: str

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)


@dataclass(frozen=True, slots=True)
class AnalyticsRecord:
    """The summary, the turn counts by role and the metrics: one archived record per call."""

    summary: CallSummary
    user_turns: int
    assistant_turns: int
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": f"{self.summary.call_id}-analytics",
            **self.summary.to_dict(),
            "user_turns": self.user_turns,
            "assistant_turns": self.assistant_turns,
            "metrics": self.metrics,
        }


def transcript_document(
    call_id: str,
    *,
    state: CallState,
    history: Sequence[Turn],
    caller: Any,
    incoming: dict[str, Any],
    epoch: int,
    restarts: int,
    dtmf: list[str],
    audio_format: str,
    metrics: dict[str, Any],
    ended_at: float,
    end_reason: str,
) -> TranscriptDocument:
    """The transcript of a call that ended at ``ended_at``; it started when it was connected
    (or, never connected, when the actor first saw it)."""
    metadata = TranscriptMetadata(
        caller=caller,
        incoming=incoming,
        participants=[p.to_dict() for p in state.participants.values()],
        epoch=epoch,
        restarts=restarts,
        dtmf=dtmf,
        audio_format=audio_format,
    )
    return TranscriptDocument(
        call_id=call_id,
        started_at=state.connected_at or state.created_at,
        ended_at=ended_at,
        end_reason=end_reason,
        turns=[turn.to_dict() for turn in history],
        metadata=metadata,
        metrics=metrics,
    )


def call_summary(transcript: TranscriptDocument, destination: object | None) -> CallSummary:
    """``destination``: where the transcript was submitted, None if that failed."""
    return CallSummary(
        call_id=transcript.call_id,
        started_at=transcript.started_at,
        ended_at=transcript.ended_at,
        duration_s=round(transcript.ended_at - transcript.started_at, 3),
        end_reason=transcript.end_reason,
        turns=len(transcript.turns),
        caller_id=transcript.caller_id,
        archived_to=str(destination) if destination is not None else "failed",
    )


def analytics_record(transcript: TranscriptDocument, summary: CallSummary) -> AnalyticsRecord:
    roles = [turn["role"] for turn in transcript.turns]
    return AnalyticsRecord(
        summary=summary,
        user_turns=roles.count("user"),
        assistant_turns=roles.count("assistant"),
        metrics=transcript.metrics,
    )
