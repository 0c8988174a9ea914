from gateway.dedupe import RecentIds


def test_first_time_only_once_and_bounded() -> None:
    ids = RecentIds(capacity=3)
    assert ids.first_time("a")
    assert not ids.first_time("a")
    for other in "bcd":
        assert ids.first_time(other)
    assert ids.first_time("a")  # evicted after three newer ids
