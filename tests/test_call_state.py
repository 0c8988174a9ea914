from actors.call_state import MAX_PARTICIPANTS, CallState, CallStatus, event_name


def participants(seq: int, *ids: str, bare: bool = False) -> dict:
    entries = [
        {"rawId": i, "kind": "phoneNumber"}
        if bare
        else {"identifier": {"rawId": i}, "isMuted": True}
        for i in ids
    ]
    return {"sequenceNumber": seq, "participants": entries}


def test_lifecycle_and_terminal_disconnect() -> None:
    s = CallState("c1", created_at=1.0)
    assert s.status is CallStatus.RINGING
    assert s.apply("Microsoft.Communication.CallConnected", {}, 2.0)
    assert not s.apply("CallConnected", {}, 3.0)  # duplicate
    assert s.connected_at == 2.0
    assert s.apply("CallDisconnected", {}, 4.0)
    assert s.status is CallStatus.DISCONNECTED
    assert not s.apply("CallConnected", {}, 5.0)
    assert s.last_activity == 5.0


def test_participants_out_of_order_and_both_forms() -> None:
    s = CallState("c1")
    assert s.apply("ParticipantsUpdated", participants(2, "4:+1", "8:acs:bot"), 1.0)
    assert not s.apply("ParticipantsUpdated", participants(1, "4:+1"), 2.0)  # older, late
    assert set(s.participants) == {"4:+1", "8:acs:bot"}
    assert s.participants["4:+1"].muted
    assert s.apply("ParticipantsUpdated", participants(3, "4:+1", bare=True), 3.0)
    assert list(s.participants) == ["4:+1"] and s.participants["4:+1"].joined_at == 1.0
    assert s.apply("CallConnected", {}, 4.0)  # connected after participants: fine


def test_seen_ids_and_roundtrip() -> None:
    s = CallState("c1", created_at=1.0)
    assert not s.seen("e1") and s.seen("e1") and not s.seen("")
    s.apply("ParticipantsUpdated", participants(0, "4:+1"), 2.0)
    s.apply("CallConnected", {}, 3.0)
    back = CallState.from_dict(s.to_dict())
    assert back.to_dict() == s.to_dict()
    assert event_name("Microsoft.Communication.PlayCompleted") == "PlayCompleted"


def test_a_huge_participants_snapshot_is_bounded() -> None:
    state = CallState("c")
    entries = [{"identifier": {"rawId": f"4:+1{i:010d}"}} for i in range(MAX_PARTICIPANTS + 50)]
    assert state.apply("ParticipantsUpdated", {"participants": entries}, 1.0)
    assert len(state.participants) == MAX_PARTICIPANTS
