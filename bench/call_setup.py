"""``rtvoice bench call_setup``: a burst of N simultaneous IncomingCalls through the gateway and
the ACS stand-in, run twice: with cold actors (no pool) and with the warm pool (N spares).

The gateway runs in this process, the stand-in placing the calls in a subprocess
(bench/gateway_stack.py), as ACS is another service in production. Per call: IncomingCall
received -> the call's actor ready for media (the gateway's own measure,
``rtvoice_gateway_call_setup_seconds``), IncomingCall -> CallConnected (the stand-in's report),
and the frames held at call set-up (captured before the actor's stream endpoint was up: the
actor's ``backlog_frames`` and ``backlog_wait_ms_max``, read from the archived transcript's
metrics). Only ``run_mode`` starts anything; the records, summary and table are plain data.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bench.cpu_groups import CALL_ACTORS, GATEWAY, OTHER, STAND_IN, GroupCpu
from bench.gateway_stack import (
    ExternalAcs,
    GatewayStack,
    archived_transcripts,
    gateway_stack,
    load_generator,
    load_generator_command,
)
from bench.local_ray import local_ray
from bench.proc_stats import all_cpu_s
from bench.results import Benchmark, BenchOptions, BenchResult, Spread, format_table, spread
from gateway.app import Gateway
from gateway.metrics import GatewayMetrics
from simulator import CallerScript, CallReport, Scenario, ScriptLine
from storage.archive import open_archive
from storage.settings import Settings

NAME = "call_setup"
DEFAULT_CALLS = 20
PROGRESS_EVERY_S = 2.0
ARCHIVE_WAIT_S = 30.0  # actors archive after their call ends
BURST_POLL_S = 0.005  # how often the CPU watcher looks for the burst's start and end
BURST_TIMEOUT_S = 60.0
CALLER_LINE = "Hello, I am calling about my order."
# The stand-in serves ACS's token keys and starts with the burst: up this long first, the
# gateway (asking every second while they are out of reach) holds them before the first call,
# as a gateway long in service would. Otherwise the burst's first sockets wait for the fetch.
WARM_UP_S = 1.5

# How "actor ready" was measured for a call (CallSetup.ready_source).
READY_ACTIVATION = "activation"
READY_FIRST_FRAME = "first_frame"

DEFINITIONS = {
    "actor_ready_s": (
        "IncomingCall received by the gateway (all calls at once) -> the call's actor holds the "
        "call and its stream endpoint is registered, ready for media (the gateway's "
        "rtvoice_gateway_call_setup_seconds)"
    ),
    "actor_ready_s (first_frame)": (
        "used for a call whose set-up the gateway did not record: IncomingCall -> the first "
        "frame accepted by the actor, estimated as the stand-in's time to CallConnected plus the "
        "longest wait of a frame held for the actor (backlog_wait_ms_max)"
    ),
    "call_connected_s": "IncomingCall posted -> CallConnected accepted by the gateway (stand-in)",
    "held_frames": (
        "AudioData frames captured before the call's actor was up, which waited for it "
        "(the actor's backlog_frames, from the archived transcript's metrics)"
    ),
    "held_wait_ms": "the longest of those waits, per call (the actor's backlog_wait_ms_max)",
    "burst_cpu": (
        "CPU (utime + stime from /proc) of every process on the machine from the first "
        "IncomingCall to the last call's actor ready, by group, divided by the calls; "
        "cores_busy is that CPU over the window's length (a burst that keeps every core busy "
        "sets up no faster than its CPU divided by the cores)"
    ),
}



@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    warm: bool  # place the calls once the pool holds one spare per call

    def label(self, calls: int) -> str:
        return f"warm pool ({calls} spares)" if self.warm else "cold actors (no pool)"


COLD = Mode("cold", warm=False)
WARM_POOL = Mode("warm_pool", warm=True)
# Cold first: spares left by the warm run would otherwise share its Ray.
MODES = (COLD, WARM_POOL)


def call_slots(calls: int) -> int:
    """The burst's actors, the spares waiting for it, and the spares refilled behind it."""
    return max(16, 3 * calls)


def warm_timeout_s(calls: int) -> float:
    return 30.0 + 2.0 * calls


def burst_scenario(calls: int) -> Scenario:
    """``calls`` short callers, all ringing at once (one line, then hang up)."""
    callers = [
        CallerScript(
            caller=f"+1425556{i:04d}",
            display_name=f"Bench Caller {i + 1}",
            voice=i,
            lines=[ScriptLine(say=CALLER_LINE, pause_s=0.5)],
            lead_in_s=0.2,
            tail_s=1.0,
            record_audio=False,
        )
        for i in range(calls)
    ]
    return Scenario(calls=calls, callers=callers, stagger_s=0.0, validate_subscription=False)


@dataclass(slots=True)
class CallSetup:
    index: int
    call_id: str
    answered: bool
    rejected: bool  # refused by the gateway's admission (busy) instead of answered
    archived: bool
    call_connected_s: float | None
    actor_ready_s: float | None
    ready_source: str | None  # READY_ACTIVATION or READY_FIRST_FRAME
    held_frames: int | None
    held_wait_ms: float | None
    frames_sent: int
    frames_at_actor: int | None
    hung_up_by: str | None = None
    unexpected: list[str] = field(default_factory=list)

    @property
    def held_throughout(self) -> bool:
        """The call was over before its actor was ready: every frame it sent was held."""
        return bool(self.frames_sent) and self.held_frames == self.frames_sent

    @classmethod
    def build(
        cls, report: CallReport, activated_s: float | None, transcript: dict[str, Any] | None
    ) -> CallSetup:
        metrics: dict[str, Any] = (transcript or {}).get("metrics") or {}
        held = metrics.get("backlog_frames")
        wait = metrics.get("backlog_wait_ms_max")
        connected = report.time_to_connected_s
        ready, source = activated_s, READY_ACTIVATION if activated_s is not None else None
        if ready is None and connected is not None and held is not None:
            ready = connected + (float(wait or 0.0) / 1000.0 if held else 0.0)
            source = READY_FIRST_FRAME
        frames_in = metrics.get("frames_in")
        return cls(
            index=report.index,
            call_id=report.call_connection_id,
            answered=report.answered,
            rejected=report.rejected,
            archived=transcript is not None,
            call_connected_s=connected,
            actor_ready_s=ready,
            ready_source=source,
            held_frames=None if held is None else int(held),
            held_wait_ms=None if wait is None else float(wait),
            frames_sent=report.frames_sent,
            frames_at_actor=None if frames_in is None else int(frames_in),
            hung_up_by=report.hung_up_by,
            unexpected=list(report.unexpected),
        )

    def to_json(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "index": self.index,
            "call_id": self.call_id,
            "answered": self.answered,
            "rejected": self.rejected,
            "archived": self.archived,
            "call_connected_s": r(self.call_connected_s),
            "actor_ready_s": r(self.actor_ready_s),
            "ready_source": self.ready_source,
            "held_frames": self.held_frames,
            "held_wait_ms": r(self.held_wait_ms),
            "frames_sent": self.frames_sent,
            "frames_at_actor": self.frames_at_actor,
            "hung_up_by": self.hung_up_by,
            "unexpected": self.unexpected,
        }


@dataclass(slots=True)
class ModeResult:
    mode: Mode
    calls: int  # calls meant to be placed
    setups: list[CallSetup] = field(default_factory=list)
    note: str = ""  # why nothing was measured ("pool not warm: ...")
    spares: int | None = None  # spares in the pool when the calls were placed (warm runs)
    warm_s: float | None = None  # how long the pool took to hold them
    cold_starts: int | None = None  # calls the gateway's pool gave a cold actor (if it counts)
    burst_cpu: GroupCpu | None = None
    wall_s: float = 0.0

    @property
    def answered(self) -> int:
        return sum(s.answered for s in self.setups)

    @property
    def archived(self) -> int:
        return sum(s.archived for s in self.setups)

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.setups)

    def outcome(self) -> str:
        """``answered/N, archived/N`` (and the rejected), or why nothing was measured."""
        if self.note:
            return self.note
        text = f"{self.answered}/{self.calls}, {self.archived}/{self.calls}"
        return text + (f", {self.rejected} rejected" if self.rejected else "")

    @property
    def status(self) -> str:
        if self.note:
            return "not_measured"
        if self.answered == self.archived == self.calls:
            return "ok"
        return "calls_failed"

    def spreads(self) -> dict[str, Spread | None]:
        def values(name: str) -> list[float]:
            return [v for s in self.setups if (v := getattr(s, name)) is not None]

        return {
            name: spread(values(name))
            for name in ("actor_ready_s", "call_connected_s", "held_frames", "held_wait_ms")
        }

    def ready_sources(self) -> dict[str, int]:
        sources: dict[str, int] = {}
        for s in self.setups:
            key = s.ready_source or "none"
            sources[key] = sources.get(key, 0) + 1
        return sources

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.name,
            "label": self.mode.label(self.calls),
            "status": self.status,
            "note": self.note,
            "pool_min_spares": self.calls if self.mode.warm else 0,
            "spares_at_start": self.spares,
            "pool_warm_s": None if self.warm_s is None else round(self.warm_s, 3),
            "cold_starts": self.cold_starts,
            "calls": self.calls,
            "answered": self.answered,
            "rejected": self.rejected,
            "archived": self.archived,
            "held_frames_total": sum(s.held_frames or 0 for s in self.setups),
            "calls_held_throughout": sum(s.held_throughout for s in self.setups),
            "ready_sources": self.ready_sources(),
            "burst_cpu": None if self.burst_cpu is None else self.burst_cpu.to_json(self.calls),
            "wall_s": round(self.wall_s, 3),
            "summary": {
                name: None if value is None else value.to_json()
                for name, value in self.spreads().items()
            },
            "per_call": [s.to_json() for s in self.setups],
        }


def table(results: list[ModeResult], calls: int) -> str:
    """Metrics down, runs across; each cell ``p50 / p99 / max``."""
    measures = (
        ("IncomingCall -> actor ready (s)", "actor_ready_s", ".2f"),
        ("IncomingCall -> CallConnected (s)", "call_connected_s", ".2f"),
        ("frames held at set-up, per call", "held_frames", ".0f"),
        ("longest hold, per call (ms)", "held_wait_ms", ".0f"),
    )
    header = ["p50 / p99 / max", *(r.mode.label(r.calls) for r in results)]
    rows = [["calls answered, archived", *(r.outcome() for r in results)]]
    for title, name, fmt in measures:
        row = [title]
        for r in results:
            value = r.spreads()[name]
            row.append("-" if value is None else value.cells(fmt))
        rows.append(row)
    rows.append(["frames held, all calls"])
    for r in results:
        rows[-1].append("-" if r.note else f"{sum(s.held_frames or 0 for s in r.setups):,}")
    rows.append(["burst: length (s), cores busy"])
    for r in results:
        cpu = r.burst_cpu
        rows[-1].append("-" if cpu is None else f"{cpu.seconds:.2f}, {cpu.cores_busy:.2f}")
    for group in (GATEWAY, CALL_ACTORS, STAND_IN, OTHER):
        rows.append([f"burst CPU per call (ms): {group}"])
        for r in results:
            cpu = r.burst_cpu
            rows[-1].append("-" if cpu is None else f"{cpu.per_call_ms(r.calls)[group]:.1f}")
    lines = [format_table(header, rows)]
    for r in results:
        if over := sum(s.held_throughout for s in r.setups):
            lines.append(
                f"  {r.mode.label(r.calls)}: {over} of {len(r.setups)} calls were over before "
                "their actor was ready (every frame held)"
            )
        if r.mode.warm and r.cold_starts:
            lines.append(
                f"  {r.mode.label(r.calls)}: the pool counted {r.cold_starts} cold starts "
                "(activations with no spare left)"
            )
    estimated = sum(r.ready_sources().get(READY_FIRST_FRAME, 0) for r in results)
    if estimated:
        lines.append(
            f"  ({estimated} calls' actor ready estimated from their first frame: "
            "the gateway reported no activation)"
        )
    return "\n".join(lines)


async def wait_for_spares(
    count: Callable[[], Awaitable[int]],
    want: int,
    timeout_s: float,
    on_progress: Callable[[int, float], None],
    *,
    poll_s: float = 0.25,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> int:
    """Poll ``count()`` until it reaches ``want`` or ``timeout_s`` passes; the last count.

    ``on_progress(spares, elapsed_s)`` is called every ``progress_every_s``."""
    started = last_progress = time.monotonic()
    have = await count()
    while have < want:
        now = time.monotonic()
        if now - started >= timeout_s:
            break
        if now - last_progress >= progress_every_s:
            on_progress(have, now - started)
            last_progress = now
        await asyncio.sleep(poll_s)
        have = await count()
    return have


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


async def _progress(out: TextIO, mode: Mode, metrics: GatewayMetrics, calls: int) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        _say(
            out,
            f"  {mode.name}: {time.monotonic() - started:5.1f} s  actors ready "
            f"{len(metrics.recent_setups)}/{calls}",
        )


async def _watch_burst_cpu(gw: Gateway, calls: int) -> GroupCpu:
    """The machine's CPU from the gateway's first IncomingCall to its ``calls``-th set-up."""
    while not gw.answered:
        await asyncio.sleep(BURST_POLL_S)
    before, started = all_cpu_s(), time.monotonic()
    while len(gw.metrics.recent_setups) < calls and time.monotonic() - started < BURST_TIMEOUT_S:
        await asyncio.sleep(BURST_POLL_S)
    seconds = time.monotonic() - started
    return GroupCpu.between(before, all_cpu_s(), seconds, os.getpid())


def finished_or_cancel(watcher: asyncio.Task[GroupCpu]) -> GroupCpu | None:
    """The watcher's reading if it saw every set-up; else None, and it is cancelled (some call
    never got its actor: there is no burst to account)."""
    if watcher.done() and not watcher.cancelled():
        return watcher.result()
    watcher.cancel()
    return None


async def _place_calls(
    stack: GatewayStack, acs: ExternalAcs, calls: int, workdir: Path
) -> tuple[list[CallReport], str]:
    """The burst, placed by the stand-in in a subprocess; its call reports (and its stderr's
    tail when it wrote none)."""
    scenario = workdir / "burst.json"
    scenario.write_text(burst_scenario(calls).model_dump_json())
    report_path = workdir / "calls.json"
    command = load_generator_command(
        acs, stack.gateway_url, calls, report_path, scenario=scenario, warm_up_s=WARM_UP_S
    )
    async with load_generator(command, report_path) as generator:
        doc, err = await generator.report()
    if doc is None:
        return [], err
    return [CallReport.from_summary(c) for c in doc["calls"]], ""


async def run_mode(
    settings: Settings,
    mode: Mode,
    calls: int,
    out: TextIO,
    *,
    warm_timeout: float | None = None,
) -> ModeResult:
    """One burst on a fresh gateway stack (its own Redis and archive; Ray is shared)."""
    result = ModeResult(mode, calls)
    started = time.monotonic()
    acs = ExternalAcs.fresh()
    workdir = Path(tempfile.mkdtemp(prefix="rtvoice-bench-"))
    _say(out, f"call_setup [{mode.label(calls)}]: starting Redis and the gateway")
    async with gateway_stack(settings, acs, spares=calls if mode.warm else 0) as stack:
        if mode.warm:
            timeout = warm_timeout if warm_timeout is not None else warm_timeout_s(calls)
            _say(out, f"  warming the pool: waiting for {calls} spares (up to {timeout:.0f} s)")
            warming = time.monotonic()
            result.spares = await wait_for_spares(
                stack.pool.spare_count,
                calls,
                timeout,
                lambda have, elapsed: _say(
                    out, f"  warm pool: {have}/{calls} spares  ({elapsed:.0f} s)"
                ),
            )
            result.warm_s = time.monotonic() - warming
            if result.spares < calls:
                result.note = (
                    f"pool not warm ({result.spares}/{calls} spares after {timeout:.0f} s)"
                )
                _say(out, f"  {result.note}: no calls placed")
                result.wall_s = time.monotonic() - started
                return result
            _say(out, f"  pool warm: {result.spares} spares in {result.warm_s:.1f} s")
        metrics = stack.gateway.metrics
        _say(out, f"  placing {calls} calls at once (the stand-in in a subprocess)")
        ticker = asyncio.create_task(_progress(out, mode, metrics, calls))
        watcher = asyncio.create_task(_watch_burst_cpu(stack.gateway, calls))
        try:
            reports, err = await _place_calls(stack, acs, calls, workdir)
        finally:
            ticker.cancel()
            result.burst_cpu = finished_or_cancel(watcher)
        if not reports:
            result.note = f"no load-generator report: {err}"
            _say(out, f"  {result.note}")
            result.wall_s = time.monotonic() - started
            return result
        result.cold_starts = stack.pool.cold_starts
        set_up = dict(metrics.recent_setups)
        call_ids = [r.call_connection_id for r in reports if r.answered]
        async with open_archive(stack.settings.storage) as store:
            transcripts = await archived_transcripts(store, call_ids, ARCHIVE_WAIT_S)
        result.setups = [
            CallSetup.build(
                r, set_up.get(r.call_connection_id), transcripts.get(r.call_connection_id)
            )
            for r in reports
        ]
    result.wall_s = time.monotonic() - started
    _say(
        out,
        f"  done: {result.answered}/{calls} answered, {result.archived}/{calls} archived "
        f"({result.wall_s:.1f} s)",
    )
    return result


def _definitions(results: list[ModeResult]) -> dict[str, str]:
    """What each measure means; the first-frame estimate only when a call needed it."""
    estimated = any(r.ready_sources().get(READY_FIRST_FRAME) for r in results)
    return {k: v for k, v in DEFINITIONS.items() if estimated or READY_FIRST_FRAME not in k}


async def run_call_setup(
    settings: Settings,
    calls: int,
    out: TextIO,
    *,
    modes: tuple[Mode, ...] = MODES,
    warm_timeout: float | None = None,
) -> BenchResult:
    """Every mode in turn on one local Ray (reused if already initialized)."""
    if calls < 1:
        raise ValueError("call_setup needs at least one call")
    started_at = datetime.now(UTC)
    with local_ray(settings, call_slots(calls), out, NAME):
        results = [
            await run_mode(settings, mode, calls, out, warm_timeout=warm_timeout)
            for mode in modes
        ]
    return BenchResult.of_run(
        NAME,
        calls,
        started_at,
        params={
            "calls": calls,
            "modes": [m.name for m in modes],
            "caller": {"line": CALLER_LINE, "lead_in_s": 0.2, "tail_s": 1.0, "realtime": True},
            "call_slots": call_slots(calls),
            "warm_timeout_s": warm_timeout if warm_timeout is not None else warm_timeout_s(calls),
        },
        definitions=_definitions(results),
        runs=[r.to_json() for r in results],
        table=table(results, calls),
        ok=all(r.status == "ok" for r in results),
    )


async def run(settings: Settings, options: BenchOptions, out: TextIO) -> BenchResult:
    return await run_call_setup(settings, options.calls or DEFAULT_CALLS, out)


BENCHMARK = Benchmark(name=NAME, default_calls=DEFAULT_CALLS, run=run)
