"""``rtvoice bench arrivals``: calls arriving one per second, each talking for a minute, against
a gateway whose local Ray offers this machine's own call slots (actors/capacity.py).

Past capacity a call must be rejected busy at once, never answered and then dropped. Each call
ends in one of: served whole (answered, hung up by its caller, nothing unexpected), rejected
busy, or dropped (answered, then ended by the app or with something unexpected). Only ``run``
starts anything (one ``LocalStack``); the outcome counts and the table are plain data.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TextIO

from actors.capacity import node_call_slots
from bench.results import Benchmark, BenchOptions, BenchResult, format_table
from simulator import CallerScript, CallReport, Scenario, run_scenario
from simulator.devstack.local_stack import LocalStack
from storage.settings import Settings

NAME = "arrivals"
DEFAULT_CALLS = 40
ARRIVAL_EVERY_S = 1.0
TALK_S = 60.0
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Outcomes:
    served: int
    rejected_busy: int
    dropped: int
    other: int  # neither answered nor rejected (e.g. no answer within the stand-in's timeout)

    @classmethod
    def of(cls, reports: list[CallReport]) -> Outcomes:
        served = sum(r.ok and r.hung_up_by == "caller" for r in reports)
        rejected = sum(r.rejected and r.reject_reason == "busy" for r in reports)
        dropped = sum(r.answered and not (r.ok and r.hung_up_by == "caller") for r in reports)
        return cls(served, rejected, dropped, len(reports) - served - rejected - dropped)


def arrivals_scenario(calls: int, talk_s: float = TALK_S) -> Scenario:
    callers = [
        CallerScript.talking_for(
            talk_s, voice=i % 20, caller=f"+1425557{i:04d}", record_audio=False
        )
        for i in range(calls)
    ]
    return Scenario(calls=calls, callers=callers, stagger_s=ARRIVAL_EVERY_S)


def table(outcomes: Outcomes, calls: int, slots: int) -> str:
    rows = [
        ("calls placed", f"{calls} ({ARRIVAL_EVERY_S:.0f} per second)"),
        ("call slots (this machine)", str(slots)),
        ("served whole", str(outcomes.served)),
        ("rejected busy at once", str(outcomes.rejected_busy)),
        ("answered, then dropped", str(outcomes.dropped)),
        ("other", str(outcomes.other)),
    ]
    return format_table(("", "result"), rows)


async def run(settings: Settings, options: BenchOptions, out: TextIO) -> BenchResult:
    calls = options.calls or DEFAULT_CALLS
    talk_s = TALK_S if calls >= 10 else 5.0  # a smoke run stays short
    started_at = datetime.now(UTC)
    slots = node_call_slots(settings)
    scenario = arrivals_scenario(calls, talk_s)
    out.write(f"arrivals: {calls} calls, one per second, {talk_s:.0f} s each; {slots} slots\n")
    async with LocalStack(base=settings.replace(redis_url=None), call_slots=slots) as stack:
        assert stack.acs is not None
        begun = time.monotonic()
        done: list[CallReport] = []

        async def progress() -> None:
            while True:
                await asyncio.sleep(PROGRESS_EVERY_S)
                elapsed = time.monotonic() - begun
                out.write(f"  {elapsed:5.0f} s  calls ended {len(done)}/{calls}\n")
                out.flush()

        ticker = asyncio.create_task(progress())
        try:
            result = await run_scenario(
                stack.acs, stack.gateway_url, scenario, on_call_done=done.append
            )
        finally:
            ticker.cancel()
    outcomes = Outcomes.of(result.calls)
    return BenchResult.of_run(
        NAME,
        calls,
        started_at,
        params={
            "calls": calls,
            "arrival_every_s": ARRIVAL_EVERY_S,
            "talk_s": talk_s,
            "call_slots": slots,
        },
        definitions={
            "served whole": "answered, hung up by its caller, nothing unexpected",
            "rejected busy at once": "refused through Call Automation (reject, busy)",
            "answered, then dropped": "answered, then ended by the app or with a fault",
        },
        runs=[{"outcomes": asdict(outcomes), "calls": [r.summary() for r in result.calls]}],
        table=table(outcomes, calls, slots),
        ok=outcomes.dropped == 0 and outcomes.other == 0,
    )


BENCHMARK = Benchmark(name=NAME, default_calls=DEFAULT_CALLS, run=run)
