"""Bounded memory of recently seen callback event ids, the gateway's first de-duplication filter.

The call's actor de-duplicates again (it is the one authority per call, across replicas), so this
filter may forget: it is bounded in entries and in bytes, whatever ids callers send.
"""

from __future__ import annotations

import sys

from cachetools import LRUCache

MAX_IDS = 10_000
MAX_BYTES = 1 << 20  # 10,000 GUIDs take about 850 KB
MAX_ID_BYTES = 1024  # the parser already refuses ids past 128 UTF-8 bytes


class RecentIds:
    """Recently seen ids, least recently seen evicted first.

    Sizes are what each id string holds in memory (``sys.getsizeof``), so a 4-byte-per-character
    id counts for what it costs; the per-entry overhead of the cache is bounded by ``capacity``.
    The byte bound is the LRU cache's own (each id's value is its size); the entry bound is kept
    by evicting the least recently seen ids past ``capacity``.
    """

    def __init__(
        self,
        capacity: int = MAX_IDS,
        *,
        max_bytes: int = MAX_BYTES,
        max_id_bytes: int = MAX_ID_BYTES,
    ) -> None:
        self._capacity = capacity
        self._max_id_bytes = min(max_id_bytes, max_bytes)
        # id -> its size; the cache's size is the sum of the values.
        self._seen: LRUCache[str, int] = LRUCache(maxsize=max_bytes, getsizeof=_own_size)

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def bytes(self) -> int:
        """Memory held by the stored ids."""
        return int(self._seen.currsize)

    def first_time(self, event_id: str) -> bool:
        """True the first time an id is seen (among the ids still remembered).

        An id past ``max_id_bytes`` is never stored, so it always reads as new: the actor's own
        check catches its duplicates.
        """
        if self._seen.get(event_id) is not None:  # get() marks it recently seen
            return False
        size = sys.getsizeof(event_id)
        if size > self._max_id_bytes:
            return True
        self._seen[event_id] = size  # evicts the least recently seen past the byte budget
        while len(self._seen) > self._capacity:
            self._seen.popitem()
        return True


def _own_size(size: int) -> int:
    return size
