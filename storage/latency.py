"""Per-operation latency and error counts for storage calls (p50/p99 for metrics).

Bounded memory: keeps only the last N samples per operation; never does I/O itself.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

DEFAULT_WINDOW = 1024


@dataclass(frozen=True)
class OpStats:
    count: int
    p50_ms: float
    p99_ms: float
    errors: int


def percentile(sorted_samples: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_samples:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_samples)))
    return sorted_samples[rank - 1]


class LatencyRecorder:
    """Records the duration of named operations in a ring of the last ``window`` samples each."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._window = window
        self._samples: dict[str, deque[float]] = {}
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}

    def record(self, op: str, seconds: float, *, error: bool = False) -> None:
        ring = self._samples.get(op)
        if ring is None:
            ring = self._samples[op] = deque(maxlen=self._window)
        ring.append(seconds)
        self._counts[op] = self._counts.get(op, 0) + 1
        if error:
            self._errors[op] = self._errors.get(op, 0) + 1

    def stats(self) -> dict[str, OpStats]:
        out: dict[str, OpStats] = {}
        for op, ring in self._samples.items():
            ms = sorted(s * 1000.0 for s in ring)
            out[op] = OpStats(
                count=self._counts[op],
                p50_ms=percentile(ms, 50),
                p99_ms=percentile(ms, 99),
                errors=self._errors.get(op, 0),
            )
        return out

    @asynccontextmanager
    async def measure(self, op: str) -> AsyncIterator[None]:
        """Time the body; an exception escaping it counts as an error of ``op``."""
        start = time.perf_counter()
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            self.record(op, time.perf_counter() - start, error=failed)
