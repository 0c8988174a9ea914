"""What every benchmark shares: its options, its result (a table and a JSON document), the
percentiles, and where results are written.

Plain data and formatting; never starts anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from bench.machine import describe_machine
from storage.latency import percentile
from storage.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # git-ignored


@dataclass(frozen=True, slots=True)
class BenchOptions:
    calls: int | None = None  # the benchmark's size; None: its default


@dataclass(slots=True)
class BenchResult:
    """One benchmark's run: the table printed and the JSON document written."""

    name: str
    command: str
    started_at: datetime
    machine: dict[str, Any]
    params: dict[str, Any]
    definitions: dict[str, str]  # what each measure is, in words (printed under the table)
    runs: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""
    ok: bool = True  # every run measured what it set out to

    @classmethod
    def of_run(
        cls,
        name: str,
        calls: int,
        started_at: datetime,
        *,
        params: dict[str, Any],
        definitions: dict[str, str],
        runs: list[dict[str, Any]],
        table: str,
        ok: bool,
        machine: dict[str, Any] | None = None,
    ) -> BenchResult:
        """A run of ``rtvoice bench <name> --calls <calls>`` on this machine."""
        return cls(
            name=name,
            command=f"rtvoice bench {name} --calls {calls}",
            started_at=started_at,
            machine=machine if machine is not None else describe_machine(),
            params=params,
            definitions=definitions,
            runs=runs,
            table=table,
            ok=ok,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "command": self.command,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "ok": self.ok,
            "machine": self.machine,
            "params": self.params,
            "definitions": self.definitions,
            "runs": self.runs,
        }

    def default_path(self, directory: Path = RESULTS_DIR) -> Path:
        """``<directory>/<name>-<UTC timestamp>.json``."""
        stamp = self.started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return directory / f"{self.name}-{stamp}.json"

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
        return path


BenchRun = Callable[[Settings, BenchOptions, TextIO], Awaitable[BenchResult]]


@dataclass(frozen=True, slots=True)
class Benchmark:
    """What a benchmark module exposes as ``BENCHMARK``."""

    name: str
    default_calls: int
    run: BenchRun  # (settings, options, progress output) -> result; prints nothing else


@dataclass(frozen=True, slots=True)
class Spread:
    """p50, p99 and max of a sample (nearest-rank percentiles: each is one observed value)."""

    n: int
    p50: float
    p99: float
    max: float

    def to_json(self, digits: int = 4) -> dict[str, float | int]:
        return {k: v if k == "n" else round(v, digits) for k, v in asdict(self).items()}

    def cells(self, fmt: str) -> str:
        """``"p50 / p99 / max"`` with each value formatted by ``fmt``."""
        return " / ".join(format(v, fmt) for v in (self.p50, self.p99, self.max))


def spread(values: Sequence[float]) -> Spread | None:
    """None for an empty sample."""
    if not values:
        return None
    ordered = sorted(values)
    return Spread(len(ordered), percentile(ordered, 50), percentile(ordered, 99), ordered[-1])


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, indented like the demo's table."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in (header, *rows)]
    return "\n".join(line.rstrip() for line in lines)
