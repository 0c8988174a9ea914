"""Live call state: status machine, participants, timestamps, applied from ACS callback events.

Pure: events in, state out. Tolerates duplicates (by event id) and any order, as ACS delivers both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cachetools import FIFOCache

EVENT_PREFIX = "Microsoft.Communication."
RECENT_EVENT_IDS = 512
MAX_PARTICIPANTS = 100  # kept per call; the rest of a larger snapshot is ignored


class CallEnded(Exception):
    """The call is over: its actor archived it and will not come back; events and sockets for
    it are acknowledged and closed normally."""


class CallStatus(StrEnum):
    RINGING = "ringing"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass
class Participant:
    raw_id: str
    muted: bool = False
    on_hold: bool = False
    joined_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw_id": self.raw_id,
            "muted": self.muted,
            "on_hold": self.on_hold,
            "joined_at": self.joined_at,
        }


def event_name(event_type: str) -> str:
    """``CallConnected`` from ``CallConnected`` or ``Microsoft.Communication.CallConnected``."""
    return event_type.removeprefix(EVENT_PREFIX)


def _participant_id(entry: Any) -> tuple[str | None, dict[str, Any]]:
    """(raw id, flags) of one ParticipantsUpdated entry, current or older (bare identifier) form."""
    if not isinstance(entry, dict):
        return None, {}
    ident = entry.get("identifier", entry)
    raw = ident.get("rawId") if isinstance(ident, dict) else None
    return (raw if isinstance(raw, str) and raw else None), entry


@dataclass
class CallState:
    call_id: str
    status: CallStatus = CallStatus.RINGING
    created_at: float = 0.0
    connected_at: float | None = None
    disconnected_at: float | None = None
    last_activity: float = 0.0
    participants: dict[str, Participant] = field(default_factory=dict)
    participants_seq: int = -1
    # Applied event ids, the oldest forgotten first; not part of to_dict.
    _seen: FIFOCache[str, None] = field(
        default_factory=lambda: FIFOCache(maxsize=RECENT_EVENT_IDS), repr=False
    )

    def seen(self, event_id: str) -> bool:
        """Record ``event_id``; True if it was already applied (a duplicate delivery)."""
        if not event_id:
            return False
        if event_id in self._seen:
            return True
        self._seen[event_id] = None  # evicts the oldest past RECENT_EVENT_IDS
        return False

    def touch(self, now: float) -> None:
        self.last_activity = max(self.last_activity, now)

    def apply(self, event_type: str, data: dict[str, Any], now: float) -> bool:
        """Apply one callback event; returns True if the state changed."""
        self.touch(now)
        name = event_name(event_type)
        if self.status is CallStatus.DISCONNECTED:
            return False  # terminal: late events of an ended call change nothing
        if name == "CallConnected":
            if self.status is CallStatus.CONNECTED:
                return False
            self.status = CallStatus.CONNECTED
            self.connected_at = now
            return True
        if name == "CallDisconnected":
            self.disconnect(now)
            return True
        if name == "ParticipantsUpdated":
            return self._participants(data, now)
        return False

    def disconnect(self, now: float) -> None:
        if self.status is not CallStatus.DISCONNECTED:
            self.status = CallStatus.DISCONNECTED
            self.disconnected_at = now

    def _participants(self, data: dict[str, Any], now: float) -> bool:
        seq = data.get("sequenceNumber")
        if isinstance(seq, int):
            if seq <= self.participants_seq:
                return False  # an older snapshot arriving late
            self.participants_seq = seq
        entries = data.get("participants")
        if not isinstance(entries, list):
            return False
        updated: dict[str, Participant] = {}
        for entry in entries[:MAX_PARTICIPANTS]:
            raw, flags = _participant_id(entry)
            if raw is None:
                continue
            old = self.participants.get(raw)
            updated[raw] = Participant(
                raw_id=raw,
                muted=flags.get("isMuted") is True,
                on_hold=flags.get("isOnHold") is True,
                joined_at=old.joined_at if old else now,
            )
        self.participants = updated
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "status": self.status.value,
            "created_at": self.created_at,
            "connected_at": self.connected_at,
            "disconnected_at": self.disconnected_at,
            "participants": [p.to_dict() for p in self.participants.values()],
            "participants_seq": self.participants_seq,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CallState:
        """Rebuild from ``to_dict`` output (an actor restart reloads it from the call session)."""
        state = cls(
            call_id=str(doc["call_id"]),
            status=CallStatus(doc.get("status", CallStatus.RINGING)),
            created_at=float(doc.get("created_at") or 0.0),
            connected_at=doc.get("connected_at"),
            disconnected_at=doc.get("disconnected_at"),
            participants_seq=int(doc.get("participants_seq", -1)),
        )
        for p in doc.get("participants", []):
            state.participants[p["raw_id"]] = Participant(
                raw_id=p["raw_id"],
                muted=bool(p.get("muted")),
                on_hold=bool(p.get("on_hold")),
                joined_at=float(p.get("joined_at") or 0.0),
            )
        return state
