"""``rtvoice bench data_plane_max``: the largest number of live calls this machine carries with
every frame delivered and frame latency p99 under 20 ms, found by stepping the number of calls
up (the data_plane measurement at each step, each on its own gateway stack and Redis).

``--calls N`` is the largest step tried; the steps are N/4, N/2, 3N/4 and N (at least one call
apart). Stepping stops at the first step that does not hold. The load generator (the stand-in
and its callers, a subprocess) shares the machine, as in data_plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from bench.data_plane import DataPlaneRun, measure_data_plane, talk_and_window
from bench.local_ray import local_ray
from bench.results import Benchmark, BenchOptions, BenchResult, format_table
from storage.settings import Settings

NAME = "data_plane_max"
DEFAULT_CALLS = 40
STEPS = 4
P99_LIMIT_MS = 20.0

DEFINITIONS = {
    "holds": (
        "every call answered, archived and streaming through the whole steady window, no frame "
        f"lost, and the worst call's frame latency p99 under {P99_LIMIT_MS:.0f} ms"
    ),
    "latency": (
        "gateway receive -> the actor's buffer, per call over its whole call; p50 is the median "
        "of the calls' p50s, p99 the median and the worst of their p99s"
    ),
    "cpu": "as in data_plane: /proc utime + stime over the steady window, % of one core",
}


def steps(max_calls: int, count: int = STEPS) -> list[int]:
    """Call counts to try, rising to ``max_calls``: ``count`` even steps, at least 1 apart."""
    if max_calls < 1:
        raise ValueError("data_plane_max needs at least one call")
    size = max(1, math.ceil(max_calls / count))
    return sorted({*range(size, max_calls, size), max_calls})


@dataclass(slots=True)
class Step:
    run: DataPlaneRun

    @property
    def worst_p99_ms(self) -> float | None:
        return self.run.latency()["p99_worst_call"]

    @property
    def holds(self) -> bool:
        run, worst = self.run, self.worst_p99_ms
        return (
            not run.note
            and run.answered == run.archived == run.streaming == run.calls
            and run.lost == 0
            and worst is not None
            and worst < P99_LIMIT_MS
        )

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.run.calls, "holds": self.holds, "data_plane": self.run.to_json()}


def largest_holding(measured: list[Step]) -> int | None:
    held = [s.run.calls for s in measured if s.holds]
    return max(held) if held else None


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(measured: list[Step]) -> str:
    header = ["calls", "frames/s", "gateway %/call", "actor % p50", "latency p50 / p99 / worst",
              "lost", "holds"]  # fmt: skip
    rows = []
    for s in measured:
        run, lat, actor = s.run, s.run.latency(), s.run.actor_cpu()
        rows.append([
            str(run.calls),
            f"{run.frame_rate:,.0f}",
            _cell(run.gateway_cpu_per_call, ".2f"),
            _cell(actor[len(actor) // 2] if actor else None, ".2f"),
            " / ".join(_cell(lat[k], ".1f") for k in
                       ("p50_median_of_calls", "p99_median_of_calls", "p99_worst_call")),
            f"{run.lost:,}",
            "yes" if s.holds else f"no{': ' + run.note if run.note else ''}",
        ])  # fmt: skip
    largest = largest_holding(measured)
    verdict = (
        f"  largest number of calls that holds: {largest}"
        if largest is not None
        else "  no step held"
    )
    return format_table(header, rows) + "\n" + verdict


async def run_data_plane_max(
    settings: Settings,
    max_calls: int,
    out: TextIO,
    *,
    talk_s: float | None = None,
    window_s: float | None = None,
) -> BenchResult:
    tried = steps(max_calls)
    talk, window = talk_and_window(max_calls, talk_s, window_s)
    started_at = datetime.now(UTC)
    measured: list[Step] = []
    with local_ray(settings, max(16, 3 * max_calls), out, NAME):
        for calls in tried:
            out.write(f"{NAME}: step {len(measured) + 1}/{len(tried)}, {calls} calls\n")
            out.flush()
            step = Step(await measure_data_plane(settings, calls, talk, window, out))
            measured.append(step)
            if not step.holds:
                break
    return BenchResult.of_run(
        NAME,
        max_calls,
        started_at,
        params={
            "max_calls": max_calls,
            "steps": tried,
            "talk_s": talk,
            "window_s": window,
            "p99_limit_ms": P99_LIMIT_MS,
            "load_generator": "python -m simulator.cli simulate (a subprocess)",
        },
        definitions=DEFINITIONS,
        runs=[
            {
                "largest_holding": largest_holding(measured),
                "steps": [s.to_json() for s in measured],
            }
        ],
        table=table(measured),
        # A step past the machine's capacity failing is the finding; the first must run.
        ok=bool(measured) and not measured[0].run.note,
    )


async def run(settings: Settings, options: BenchOptions, out: TextIO) -> BenchResult:
    return await run_data_plane_max(settings, options.calls or DEFAULT_CALLS, out)


BENCHMARK = Benchmark(name=NAME, default_calls=DEFAULT_CALLS, run=run)
