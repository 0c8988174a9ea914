from datetime import UTC, datetime

from actors.metrics import MAX_FRAME_LATENCY_S, LiveMetrics, frame_latency_s


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
    assert frame_latency_s("0001-01-01T00:00:00", sent) is None  # local time of year 1


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


def test_latencies_outside_the_sane_window_are_counted_not_measured() -> None:
    m = LiveMetrics()
    year_one = frame_latency_s("0001-01-01T00:00:00.000Z", 1_731_698_172.0)
    assert year_one is not None
    for latency in (year_one, -0.5, MAX_FRAME_LATENCY_S + 1):
        m.frame_seen(latency, captured_before_ready=True)
        m.frame_seen(latency, captured_before_ready=False)
    m.frame_seen(MAX_FRAME_LATENCY_S, captured_before_ready=True)
    snap = m.snapshot()
    assert snap["bad_timestamps"] == 6
    assert snap["backlog_frames"] == 1 and snap["backlog_wait_ms_max"] == MAX_FRAME_LATENCY_S * 1000
    assert snap["frame_latency_ms_p99"] is None


def test_snapshot_reports_loss_apart_from_ring_wrap_around() -> None:
    m = LiveMetrics()
    m.ring_overwritten_frames += 500
    m.storage_failures["store_session"] += 1
    snap = m.snapshot()
    assert snap["frames_dropped"] == 0 and snap["ring_overwritten_frames"] == 500
    assert snap["storage_failures"] == {"store_session": 1}
    assert snap["transcripts_truncated"] == 0
