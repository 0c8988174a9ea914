"""Frame pacing on absolute deadlines, checked with an injected clock (no wall-clock asserts)."""

from __future__ import annotations

import pytest

from simulator.pacing import Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.oversleep = 0.0  # every sleep overshoots by this much, like a busy loop

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.oversleep


async def test_ticks_are_due_on_an_absolute_schedule() -> None:
    clock = FakeClock()
    pacer = Pacer(0.02, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await pacer.wait()
    assert pacer.deadline(4) == 100.08
    assert clock.now == 100.08


async def test_oversleeping_does_not_accumulate_drift() -> None:
    clock = FakeClock()
    clock.oversleep = 0.005
    pacer = Pacer(0.02, clock=clock, sleep=clock.sleep)
    for _ in range(51):
        await pacer.wait()
    # Each sleep is shortened by the previous overshoot, so tick 50 lands near t0 + 1 s.
    assert abs(clock.now - 101.0) < 0.006
    assert all(abs(s - 0.015) < 1e-9 for s in clock.sleeps[1:])


async def test_a_long_stall_resyncs_instead_of_bursting() -> None:
    clock = FakeClock()
    pacer = Pacer(0.02, max_lag_s=0.5, clock=clock, sleep=clock.sleep)
    await pacer.wait()
    clock.now += 2.0  # the process was descheduled for 2 s
    await pacer.wait()
    await pacer.wait()
    assert pacer.resyncs == 1
    assert clock.sleeps[-1] == pytest.approx(0.02)


async def test_fast_mode_never_sleeps() -> None:
    clock = FakeClock()
    pacer = Pacer(0.02, realtime=False, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        await pacer.wait()
    assert clock.sleeps == [] and pacer.ticks == 100
