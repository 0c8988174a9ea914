import pytest

from storage.latency import LatencyRecorder, percentile


def test_percentiles_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([], 50) == 0.0


def test_stats_in_milliseconds_with_counts() -> None:
    rec = LatencyRecorder()
    for ms in range(1, 101):
        rec.record("get", ms / 1000.0)
    rec.record("set", 0.002, error=True)
    stats = rec.stats()
    assert stats["get"].count == 100
    assert stats["get"].p50_ms == pytest.approx(50.0)
    assert stats["get"].p99_ms == pytest.approx(99.0)
    assert stats["get"].errors == 0
    assert stats["set"].errors == 1


def test_memory_is_bounded_but_count_is_total() -> None:
    rec = LatencyRecorder(window=10)
    for _ in range(1000):
        rec.record("op", 1.0)
    rec.record("op", 0.0)
    assert len(rec._samples["op"]) == 10
    assert rec.stats()["op"].count == 1001


async def test_measure_records_success_and_error() -> None:
    rec = LatencyRecorder()
    async with rec.measure("ok"):
        pass
    with pytest.raises(RuntimeError):
        async with rec.measure("bad"):
            raise RuntimeError("boom")
    stats = rec.stats()
    assert (stats["ok"].count, stats["ok"].errors) == (1, 0)
    assert (stats["bad"].count, stats["bad"].errors) == (1, 1)
