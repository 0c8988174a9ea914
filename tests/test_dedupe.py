import sys
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dedupe import RecentIds


def test_first_time_only_once_and_bounded() -> None:
    ids = RecentIds(capacity=3)
    assert ids.first_time("a")
    assert not ids.first_time("a")
    for other in "bcd":
        assert ids.first_time(other)
    assert ids.first_time("a")  # evicted after three newer ids


def test_byte_budget_evicts_oldest_first() -> None:
    size = sys.getsizeof("x" * 100)
    ids = RecentIds(capacity=100, max_bytes=3 * size)
    for name in "abcd":
        assert ids.first_time(name * 100)
    assert len(ids) == 3
    assert ids.bytes == 3 * size
    assert not ids.first_time("d" * 100)
    assert ids.first_time("a" * 100)  # the oldest went first


def test_an_over_long_id_is_never_stored() -> None:
    ids = RecentIds(max_id_bytes=200)
    assert ids.first_time("x" * 1000)
    assert ids.first_time("x" * 1000)  # not remembered: the actor's check catches the repeat
    assert len(ids) == 0
    assert ids.bytes == 0


def _retained_after(ids: RecentIds, count: int, id_chars: int) -> int:
    """Bytes still allocated after ``count`` distinct ids of ``id_chars`` went through ``ids``."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(count):
            ids.first_time(f"{n:08d}" + "x" * id_chars)  # built, checked, dropped by the caller
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_megabyte_ids_do_not_accumulate() -> None:
    # The finding: 150 callbacks with 1 MB event ids grew the gateway by 150 MB, for good.
    retained = _retained_after(RecentIds(), count=150, id_chars=1 << 20)
    assert retained < 64 * 1024


def test_memory_stays_within_the_byte_budget() -> None:
    budget = 256 * 1024
    ids = RecentIds(max_bytes=budget, max_id_bytes=budget)
    retained = _retained_after(ids, count=200, id_chars=20 * 1024)
    assert ids.bytes <= budget
    assert len(ids) == budget // sys.getsizeof("0" * (8 + 20 * 1024))
    assert retained < budget + 32 * 1024  # the ids themselves, plus the dict's entries


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(max_size=40), max_size=60),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=60, max_value=400),
)
def test_bounds_hold_for_any_sequence(events: list[str], capacity: int, max_bytes: int) -> None:
    ids = RecentIds(capacity, max_bytes=max_bytes, max_id_bytes=max_bytes // 2)
    for event_id in events:
        new = ids.first_time(event_id)
        stored = sys.getsizeof(event_id) <= max_bytes // 2
        assert len(ids) <= capacity
        assert ids.bytes <= max_bytes
        # A stored id is a duplicate right after; an over-long one always reads as new.
        assert ids.first_time(event_id) is not stored
        assert new or stored
