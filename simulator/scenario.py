"""Scenarios: N callers against one gateway, run concurrently, summarised per call and overall.

Owns the scenario file format and the fan-out; each call's behaviour belongs to ``simulator.call``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from simulator.audio import prepare_speech
from simulator.report import CallReport
from simulator.script import CallerScript
from simulator.service import AcsStandIn


class Scenario(BaseModel):
    """``calls`` calls; call i plays ``callers[i % len(callers)]`` (made unique when reused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calls: int = Field(default=1, ge=1)
    callers: list[CallerScript] = Field(default_factory=lambda: [CallerScript()], min_length=1)
    stagger_s: float = Field(default=0.05, ge=0.0)  # between call arrivals
    validate_subscription: bool = True  # do Event Grid's handshake before the first call

    @classmethod
    def from_file(cls, path: Path) -> Scenario:
        return cls.model_validate_json(path.read_text())

    def caller_for(self, index: int) -> CallerScript:
        base = self.callers[index % len(self.callers)]
        if index < len(self.callers):
            return base
        # A reused script gets its own number and voice, so calls stay distinguishable.
        caller = base.caller
        if base.caller_is_phone and len(caller) > 5:
            caller = f"{caller[:-4]}{index % 10_000:04d}"
        else:
            caller = f"{caller}-{index}"
        return base.model_copy(update={"caller": caller, "voice": base.voice + index})


@dataclass(slots=True)
class ScenarioReport:
    calls: list[CallReport] = field(default_factory=list)
    subscription_validated: bool | None = None
    wall_s: float = 0.0

    @property
    def answered(self) -> int:
        return sum(report.answered for report in self.calls)

    @property
    def rejected(self) -> int:
        return sum(report.rejected for report in self.calls)

    @property
    def ok(self) -> bool:
        return self.subscription_validated is not False and all(r.ok for r in self.calls)

    def connect_times(self) -> list[float]:
        return sorted(
            r.time_to_connected_s for r in self.calls if r.time_to_connected_s is not None
        )

    def summary(self) -> dict[str, Any]:
        times = self.connect_times()
        return {
            "calls": len(self.calls),
            "answered": self.answered,
            "rejected": self.rejected,
            "ok": sum(r.ok for r in self.calls),
            "subscription_validated": self.subscription_validated,
            "connect_p50_s": round(statistics.median(times), 4) if times else None,
            "connect_max_s": round(times[-1], 4) if times else None,
            "frames_sent": sum(r.frames_sent for r in self.calls),
            "heard_s": round(sum(r.heard_s for r in self.calls), 3),
            "unexpected": sum(len(r.unexpected) for r in self.calls),
            "wall_s": round(self.wall_s, 3),
        }


async def run_scenario(
    acs: AcsStandIn,
    gateway_url: str,
    scenario: Scenario,
    on_call_done: Callable[[CallReport], None] | None = None,
) -> ScenarioReport:
    """Place every call (staggered arrivals, all concurrent) and collect their reports in order."""
    report = ScenarioReport()
    prepare_speech(
        (line.say, caller.voice)
        for caller in (scenario.caller_for(i) for i in range(scenario.calls))
        for line in caller.lines
        if line.say is not None and line.wav is None
    )
    started = time.monotonic()
    if scenario.validate_subscription:
        report.subscription_validated = await acs.validate_subscription(gateway_url)

    async def one(index: int) -> CallReport:
        await asyncio.sleep(index * scenario.stagger_s)
        call_report = await acs.place_call(gateway_url, scenario.caller_for(index), index)
        if on_call_done is not None:
            on_call_done(call_report)
        return call_report

    report.calls = list(await asyncio.gather(*(one(i) for i in range(scenario.calls))))
    report.wall_s = time.monotonic() - started
    return report
