"""gateway/calls_view.py: live calls and spares per node, as `rtvoice calls` shows them."""

from __future__ import annotations

from gateway.calls_view import build_view, render

ACTORS = [
    {
        "actor": "spare-aaa",
        "call_id": "c-1",
        "state": "connected",
        "started_at": 100.0,
        "node": "",
        "metrics": {"frames_in": 1500, "frames_out": 700},
    },
    {"actor": "spare-bbb", "call_id": "(spare)", "state": "spare", "node": ""},
    {"actor": "spare-ccc", "call_id": "(spare)", "state": "spare", "node": "n2"},
    {"actor": "c-2", "call_id": "c-2", "error": "GetTimeoutError"},
    {"actor": "spare-ddd", "call_id": "spare-ddd", "error": "gone"},  # retired since listed
]


def test_calls_carry_node_replica_duration_and_frames_and_spares_count_per_node() -> None:
    view = build_view(ACTORS, {"spare-aaa": "n1", "spare-bbb": "n1"}, {"c-1": "gw-0"}, now=160.0)
    first, second = view.calls
    assert (first.call_id, first.node, first.replica, first.duration_s) == (
        "c-1",
        "n1",
        "gw-0",
        60.0,
    )
    assert (first.frames_in, first.frames_out) == (1500, 700)
    assert second.state == "GetTimeoutError" and second.duration_s is None
    assert view.spares_per_node == {"n1": 1, "n2": 1}
    text = render(view)
    assert "c-1" in text and "1,500" in text and "spare actors per node: n1 1, n2 1" in text


def test_an_empty_cluster_says_so() -> None:
    assert render(build_view([], {}, {}, now=0.0)) == "no live calls\nspare actors per node: none"
