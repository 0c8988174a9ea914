from datetime import UTC, datetime

from actors.metrics import LiveMetrics, frame_latency_s


def test_snapshot_and_checkpoint_latency() -> None:
    m = LiveMetrics()
    m.frames_in += 3
    m.invalid_messages["bad_base64"] += 1
    m.checkpoint_done(0.002)
    m.checkpoint_done(0.004)
    snap = m.snapshot()
    assert snap["frames_in"] == 3
    assert snap["invalid_messages"] == {"bad_base64": 1}
    assert snap["checkpoints"] == 2
    assert snap["checkpoint_ms_max"] == 4.0 and snap["checkpoint_ms_mean"] == 3.0


def test_frame_latency_from_acs_timestamp() -> None:
    sent = datetime(2024, 11, 15, 19, 16, 12, 925000, tzinfo=UTC).timestamp()
    latency = frame_latency_s("2024-11-15T19:16:12.925Z", sent + 0.004)
    assert latency is not None and abs(latency - 0.004) < 1e-6
    assert frame_latency_s("not a time", sent) is None
    assert frame_latency_s("", sent) is None


def test_frame_latency_percentiles_in_snapshot() -> None:
    m = LiveMetrics()
    assert m.snapshot()["frame_latency_ms_p50"] is None
    for ms in range(1, 101):
        m.frame_latency.record("frame", ms / 1000)
    snap = m.snapshot()
    assert snap["frame_latency_ms_p50"] == 50.0 and snap["frame_latency_ms_p99"] == 99.0


def test_frames_captured_before_the_actor_was_ready_are_backlog() -> None:
    m = LiveMetrics()
    m.frame_seen(1.5, captured_before_ready=True)
    m.frame_seen(0.9, captured_before_ready=True)
    m.frame_seen(0.002, captured_before_ready=False)
    snap = m.snapshot()
    assert snap["backlog_frames"] == 2 and snap["backlog_wait_ms_max"] == 1500.0
    assert snap["frame_latency_ms_p99"] == 2.0
