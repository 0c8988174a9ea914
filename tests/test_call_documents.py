"""The call actor's documents: the exact stored shapes, and the builders from the actor's state."""

from __future__ import annotations

from typing import Any

import pytest

from actors.call_documents import (
    AuditEntry,
    CallSession,
    analytics_record,
    call_session,
    call_summary,
    caller_lookup_id,
    transcript_document,
)
from actors.call_state import CallState
from storage.archiver import Destination
from storage.conversation import Turn

INCOMING = {
    "caller": {"kind": "phoneNumber", "raw_id": "4:+14255550123"},
    "caller_id": "+14255550123",
    "caller_display_name": "Ada L",
    "call_id": "call-1",
}


def connected_state() -> CallState:
    state = CallState("call-1", created_at=100.0)
    state.apply("Microsoft.Communication.CallConnected", {}, 101.0)
    participants = [{"identifier": {"rawId": "4:+14255550123"}, "isMuted": True}]
    state.apply("ParticipantsUpdated", {"sequenceNumber": 1, "participants": participants}, 102.0)
    return state


def turns() -> list[Turn]:
    return [
        Turn(1, "user", "hello", 103.0, participant="4:+14255550123", confidence=0.9),
        Turn(2, "assistant", "You said: hello", 104.0),
        Turn(3, "user", "bye", 105.0, participant="4:+14255550123"),
    ]


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [
        (INCOMING, "+14255550123"),
        ({"caller": {"raw_id": "4:+1555"}}, "+1555"),
        ({"caller_id": "", "caller": {"raw_id": "8:acs:abc"}}, "8:acs:abc"),
        ({"caller": "4:+1555"}, None),
        ({}, None),
    ],
)
def test_caller_lookup_id(incoming: dict[str, Any], expected: str | None) -> None:
    assert caller_lookup_id(incoming) == expected


def test_audit_entry_shape_and_round_trip() -> None:
    entry = AuditEntry.new("call-1", 3, 2, "ended", 106.0, {"reason": "idle", "epoch": 3})
    doc = entry.to_dict()
    assert doc == {
        "id": "call-1-e3-2-ended",
        "call_id": "call-1",
        "action": "ended",
        "at": 106.0,
        "epoch": 3,
        "reason": "idle",
    }
    assert list(doc) == ["id", "call_id", "action", "at", "epoch", "reason"]
    assert AuditEntry.from_dict(doc).to_dict() == doc


def test_call_session_shape_core_and_reload() -> None:
    audit = [AuditEntry.new("call-1", 2, 1, "activated", 100.5, {"epoch": 2})]
    state = connected_state()
    session = call_session(
        "call-1",
        dict(INCOMING),
        epoch=2,
        restarts=1,
        state=state,
        dtmf=["5"],
        audit=audit,
        ended=False,
    )
    doc = session.to_dict()
    assert doc == {
        **INCOMING,
        "actor": {
            "epoch": 2,
            "restarts": 1,
            "state": state.to_dict(),
            "dtmf": ["5"],
            "audit": [audit[0].to_dict()],
            "ended": False,
        },
    }
    assert list(doc["actor"]) == ["epoch", "restarts", "state", "dtmf", "audit", "ended"]
    # The fallback when the whole does not fit: no IncomingCall, participants, tones or audit.
    assert session.core().to_dict() == {
        "call_id": "call-1",
        "actor": {
            "epoch": 2,
            "restarts": 1,
            "state": state.to_dict() | {"participants": []},
            "ended": False,
        },
    }
    reloaded = CallSession.from_dict("call-1", doc)
    assert reloaded.incoming == INCOMING and reloaded.to_dict() == doc
    assert reloaded.actor is not None
    assert CallState.from_dict(reloaded.actor.state).to_dict() == state.to_dict()
    core = CallSession.from_dict("call-1", session.core().to_dict()).actor
    assert core is not None and core.dtmf == [] and core.audit == []


@pytest.mark.parametrize("stored", [None, {}, INCOMING, {**INCOMING, "actor": {}}])
def test_a_session_no_actor_has_run_for(stored: dict[str, Any] | None) -> None:
    session = CallSession.from_dict("call-1", stored)
    assert session.actor is None
    assert session.incoming == {k: v for k, v in (stored or {}).items() if k != "actor"}


def test_end_of_call_documents() -> None:
    state = connected_state()
    state.disconnect(110.0)
    metrics = {"frames_in": 5}
    transcript = transcript_document(
        "call-1",
        state=state,
        history=turns(),
        caller={"id": "+14255550123", "display_name": "Ada L"},
        incoming=INCOMING,
        epoch=2,
        restarts=1,
        dtmf=["5"],
        audio_format="pcm16KMono",
        metrics=metrics,
        ended_at=110.5,
        end_reason="disconnected",
    )
    doc = transcript.to_dict()
    assert doc == {
        "call_id": "call-1",
        "started_at": 101.0,  # connected, not created
        "ended_at": 110.5,
        "end_reason": "disconnected",
        "turns": [turn.to_dict() for turn in turns()],
        "metadata": {
            "caller": {"id": "+14255550123", "display_name": "Ada L"},
            "incoming": INCOMING,
            "participants": [p.to_dict() for p in state.participants.values()],
            "epoch": 2,
            "restarts": 1,
            "dtmf": ["5"],
            "audio_format": "pcm16KMono",
        },
        "metrics": metrics,
    }
    summary = call_summary(transcript, Destination.ARCHIVE)
    assert summary.to_dict() == {
        "call_id": "call-1",
        "started_at": 101.0,
        "ended_at": 110.5,
        "duration_s": 9.5,
        "end_reason": "disconnected",
        "turns": 3,
        "caller_id": "+14255550123",
        "archived_to": "archive",
    }
    assert call_summary(transcript, None).archived_to == "failed"
    assert analytics_record(transcript, summary).to_dict() == {
        "id": "call-1-analytics",
        **summary.to_dict(),
        "user_turns": 2,
        "assistant_turns": 1,
        "metrics": metrics,
    }


def test_a_call_never_connected_starts_when_the_actor_saw_it() -> None:
    transcript = transcript_document(
        "call-1",
        state=CallState("call-1", created_at=100.0),
        history=[],
        caller=None,
        incoming={},
        epoch=1,
        restarts=0,
        dtmf=[],
        audio_format="pcm16KMono",
        metrics={},
        ended_at=160.0,
        end_reason="idle",
    )
    summary = call_summary(transcript, Destination.SPOOL)
    assert (summary.started_at, summary.duration_s, summary.caller_id) == (100.0, 60.0, None)
    assert summary.turns == 0
