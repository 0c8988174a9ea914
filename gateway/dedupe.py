"""Bounded memory of recently seen callback event ids, the gateway's first de-duplication filter.

The call's actor de-duplicates again (it is the one authority per call, across replicas), so this
filter may forget: it is bounded in entries and in bytes, whatever ids callers send.
"""

from __future__ import annotations

import sys
from collections import OrderedDict

MAX_IDS = 10_000
MAX_BYTES = 1 << 20  # 10,000 GUIDs take about 850 KB
MAX_ID_BYTES = 1024  # the parser already refuses ids past 128 UTF-8 bytes


class RecentIds:
    """Recently seen ids, least recently seen evicted first.

    Sizes are what each id string holds in memory (``sys.getsizeof``), so a 4-byte-per-character
    id counts for what it costs; the per-entry overhead of the dict is bounded by ``capacity``.
    """

    def __init__(
        self,
        capacity: int = MAX_IDS,
        *,
        max_bytes: int = MAX_BYTES,
        max_id_bytes: int = MAX_ID_BYTES,
    ) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._max_id_bytes = min(max_id_bytes, max_bytes)
        self._seen: OrderedDict[str, int] = OrderedDict()  # id -> its size
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def bytes(self) -> int:
        """Memory held by the stored ids."""
        return self._bytes

    def first_time(self, event_id: str) -> bool:
        """True the first time an id is seen (among the ids still remembered).

        An id past ``max_id_bytes`` is never stored, so it always reads as new: the actor's own
        check catches its duplicates.
        """
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            return False
        size = sys.getsizeof(event_id)
        if size > self._max_id_bytes:
            return True
        self._seen[event_id] = size
        self._bytes += size
        while len(self._seen) > self._capacity or self._bytes > self._max_bytes:
            _, freed = self._seen.popitem(last=False)
            self._bytes -= freed
        return True
