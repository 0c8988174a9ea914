from actors.metrics import LiveMetrics


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
