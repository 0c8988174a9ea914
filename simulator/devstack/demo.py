"""``rtvoice demo``: the whole system on one machine, with simulated callers, ending in a table.

Builds the scenario and the summary as plain data (testable without servers); ``run_demo`` is the
only part that starts anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr

from actors.pool import WarmPool
from simulator import CallerScript, CallReport, Scenario, ScriptLine, run_scenario
from simulator.devstack.local_stack import LocalStack
from simulator.llm_api import LlmStandIn
from storage.archive import ArchiveStore, open_archive
from storage.latency import percentile
from storage.settings import Settings

CALLER_LINES = (
    "Hello, my name is Alex and I am calling about my order.",
    "It was supposed to arrive on Monday.",
    "Can you check where it is right now?",
    "Thank you, could you also send me an email?",
    "That is all, goodbye.",
)
ARCHIVE_WAIT_S = 20.0  # the actor archives after the call ends; give it time
PROGRESS_EVERY_S = 2.0
WARM_WAIT_S = 30.0  # plus 2 s per spare: after that, calls start cold actors as needed
STANDIN_TTFT_S = 0.2  # the model stand-in's time to first token (a fast hosted model's)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    calls: int = 3
    lines: int = 3
    port: int = 0
    dashboard: bool = True
    archive_path: str | None = None  # default: the settings' archive (``rtvoice transcript``)
    keep_running: bool = False  # after the table, wait for Ctrl-C (keeps the dashboard up)
    responder: str | None = None  # None: RTVOICE_RESPONDER; "openai" without a model: the stand-in


def demo_scenario(calls: int, lines: int) -> Scenario:
    """``calls`` callers, each with its own number and voice, saying ``lines`` scripted lines."""
    if calls < 1 or lines < 1:
        raise ValueError("the demo needs at least one call and one line")
    script = [
        ScriptLine(say=CALLER_LINES[i % len(CALLER_LINES)], pause_s=1.5) for i in range(lines)
    ]
    callers = [
        CallerScript(
            caller=f"+1425555{i:04d}",
            display_name=f"Demo Caller {i + 1}",
            voice=i,
            lines=script,
            tail_s=2.0,
            record_audio=False,
        )
        for i in range(calls)
    ]
    return Scenario(calls=calls, callers=callers, stagger_s=0.3)


@dataclass(frozen=True, slots=True)
class PoolFigures:
    spares: int  # ready when the calls were placed
    cold_starts: int
    bind_p50_ms: float | None
    bind_p99_ms: float | None

    @classmethod
    def of(cls, spares: int, pool: WarmPool) -> PoolFigures:
        binds = sorted(s * 1000.0 for s in pool.bind_seconds)
        return cls(
            spares,
            pool.cold_starts,
            percentile(binds, 50) if binds else None,
            percentile(binds, 99) if binds else None,
        )


@dataclass(frozen=True, slots=True)
class ReplyFigures:
    """The replies of all calls, from the archived metrics (median of p50s, worst p99)."""

    first_audio_p50_ms: float | None
    first_audio_p99_ms: float | None
    ttft_p50_ms: float | None
    cut: int
    fallbacks: int
    tokens_in: int
    tokens_out: int

    @classmethod
    def of(cls, metrics: list[dict[str, Any]]) -> ReplyFigures:
        def values(key: str) -> list[float]:
            return [m[key] for m in metrics if m.get(key) is not None]

        def total(key: str) -> int:
            return sum(int(m.get(key) or 0) for m in metrics)

        p50s, p99s = values("reply_first_audio_ms_p50"), values("reply_first_audio_ms_p99")
        ttfts = values("reply_ttft_ms_p50")
        return cls(
            statistics.median(p50s) if p50s else None,
            max(p99s) if p99s else None,
            statistics.median(ttfts) if ttfts else None,
            cut=total("replies_cut"),
            fallbacks=sum(sum((m.get("reply_failures") or {}).values()) for m in metrics),
            tokens_in=total("tokens_in"),
            tokens_out=total("tokens_out"),
        )

    def rows(self, ms: Callable[[float | None], str]) -> list[tuple[str, str]]:
        first = f"{ms(self.first_audio_p50_ms)} / {ms(self.first_audio_p99_ms)}"
        return [
            ("reply first audio p50 / p99", first),
            (
                "",
                f"(caller's final transcript -> reply audio queued; model TTFT p50 "
                f"{ms(self.ttft_p50_ms)})",
            ),
            (
                "replies",
                f"{self.cut} cut by the caller, {self.fallbacks} fallbacks; tokens "
                f"{self.tokens_in:,} in, {self.tokens_out:,} out",
            ),
        ]


@dataclass(slots=True)
class DemoSummary:
    calls: int
    answered: int
    frames_in: float
    frames_out: float
    archived: int
    user_turns: int
    assistant_turns: int
    latency_p50_ms: float | None  # median over calls of each call's p50
    latency_p99_ms: float | None  # the worst call's p99
    backlog_frames: int  # captured before their call's actor was up (waited for it to start)
    backlog_wait_ms_max: float
    connect_p50_s: float | None
    pool: PoolFigures
    archive: str
    dashboard_url: str | None
    replies: ReplyFigures = field(default_factory=lambda: ReplyFigures.of([]))
    call_ids: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        reports: list[CallReport],
        transcripts: list[dict[str, Any]],
        frames: tuple[float, float],
        pool: PoolFigures,
        archive: str,
        dashboard_url: str | None,
    ) -> DemoSummary:
        turns = [turn for doc in transcripts for turn in doc.get("turns", [])]
        metrics = [doc.get("metrics", {}) for doc in transcripts]
        p50s = [m["frame_latency_ms_p50"] for m in metrics if m.get("frame_latency_ms_p50")]
        p99s = [m["frame_latency_ms_p99"] for m in metrics if m.get("frame_latency_ms_p99")]
        connects = [r.time_to_connected_s for r in reports if r.time_to_connected_s is not None]
        return cls(
            calls=len(reports),
            answered=sum(r.answered for r in reports),
            frames_in=frames[0],
            frames_out=frames[1],
            archived=len(transcripts),
            user_turns=sum(turn.get("role") == "user" for turn in turns),
            assistant_turns=sum(turn.get("role") == "assistant" for turn in turns),
            latency_p50_ms=statistics.median(p50s) if p50s else None,
            latency_p99_ms=max(p99s) if p99s else None,
            backlog_frames=sum(int(m.get("backlog_frames") or 0) for m in metrics),
            backlog_wait_ms_max=max(
                (m.get("backlog_wait_ms_max") or 0.0 for m in metrics), default=0.0
            ),
            connect_p50_s=statistics.median(connects) if connects else None,
            pool=pool,
            archive=archive,
            dashboard_url=dashboard_url,
            replies=ReplyFigures.of(metrics),
            call_ids=[r.call_connection_id for r in reports if r.answered],
        )

    @property
    def ok(self) -> bool:
        return self.calls == self.answered == self.archived

    def table(self) -> str:
        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1f} ms"

        connect = "n/a" if self.connect_p50_s is None else f"{self.connect_p50_s:.2f} s"
        rows = [
            ("calls answered", f"{self.answered}/{self.calls}"),
            ("time to CallConnected p50", connect),
            ("frames routed", f"{self.frames_in:,.0f} in, {self.frames_out:,.0f} out"),
            ("frame latency p50 / p99", f"{ms(self.latency_p50_ms)} / {ms(self.latency_p99_ms)}"),
            ("", "(ACS capture timestamp -> call actor, once the actor is up)"),
            (
                "frames held at call set-up",
                f"{self.backlog_frames:,} (waited up to {self.backlog_wait_ms_max / 1000:.1f} s"
                " for the call's actor to start)",
            ),
            (
                "warm pool",
                f"{self.pool.spares} spares ready; {self.pool.cold_starts} calls started cold; "
                f"bind p50 / p99 {ms(self.pool.bind_p50_ms)} / {ms(self.pool.bind_p99_ms)}",
            ),
            ("turns", f"{self.user_turns} caller, {self.assistant_turns} assistant"),
            *self.replies.rows(ms),
            ("transcripts archived", f"{self.archived}/{self.calls} in {self.archive}"),
            ("Ray dashboard", self.dashboard_url or "off"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"  {name:<{width}}  {value}" for name, value in rows]
        if self.call_ids:
            lines.append(f"\n  see one: rtvoice transcript {self.call_ids[0]}")
        return "\n".join(lines)


async def _archived(archive: ArchiveStore, call_ids: list[str]) -> list[dict[str, Any]]:
    """The transcripts of ``call_ids``, waiting a while for actors still archiving."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + ARCHIVE_WAIT_S
    while len(found) < len(call_ids) and time.monotonic() < deadline:
        for call_id in call_ids:
            if call_id not in found and (doc := await archive.get_transcript(call_id)):
                found[call_id] = doc
        if len(found) < len(call_ids):
            await asyncio.sleep(0.25)
    return [found[c] for c in call_ids if c in found]


async def _warm_up(pool: WarmPool, spares: int, out: TextIO) -> int:
    """Wait for the pool's spares (a progress line each second); returns how many are ready."""
    started = time.monotonic()
    deadline = started + WARM_WAIT_S + 2.0 * spares
    ready = await pool.spare_count()
    while ready < spares and time.monotonic() < deadline:
        out.write(f"  warming the pool: {ready}/{spares} spare call actors ready\n")
        out.flush()
        await asyncio.sleep(1.0)
        ready = await pool.spare_count()
    out.write(f"  warm pool: {ready}/{spares} spares in {time.monotonic() - started:.1f} s\n")
    return ready


async def _progress(stack: LocalStack, scenario: Scenario, out: TextIO) -> None:
    started = time.monotonic()
    metrics = stack.running[0].gateway.metrics
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        routed = metrics.frames_routed("media", "in")
        out.write(
            f"  {time.monotonic() - started:5.1f} s  frames routed {routed:>7,.0f}"
            f"  (of ~{scenario.calls} calls x {_frames_per_call(scenario):,} frames)\n"
        )
        out.flush()


def _frames_per_call(scenario: Scenario) -> int:
    return round(scenario.callers[0].expected_duration_s() / 0.02)


@contextlib.asynccontextmanager
async def demo_model(
    settings: Settings, responder: str | None, out: TextIO
) -> AsyncIterator[Settings]:
    """The settings the calls run with: ``responder`` applied, and for ``openai`` with no model
    configured (no endpoint, base URL or key), the model stand-in started for them."""
    if responder is not None:
        settings = settings.replace(responder=responder)
    model = settings.assistant
    if model.responder != "openai" or model.azure_endpoint or model.base_url or model.api_key:
        yield settings
        return
    async with LlmStandIn(ttft_s=STANDIN_TTFT_S) as llm:
        out.write(
            f"model stand-in {llm.base_url} (time to first token {STANDIN_TTFT_S * 1000:.0f} ms)\n"
        )
        yield settings.replace(llm_base_url=llm.base_url, llm_api_key=SecretStr("demo"))


async def run_demo(settings: Settings, options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Start everything locally, place the calls, print the table; 0 when every call archived."""
    scenario = demo_scenario(options.calls, options.lines)
    archive = str(Path(options.archive_path or settings.storage.archive_path).resolve())
    out.write("rtvoice demo: starting Redis, Ray, the gateway and the ACS stand-in...\n")
    out.flush()
    # One spare per call, so that every call of the burst finds its actor started.
    spares = max(options.calls, settings.actors.pool_min_spares)
    settings = settings.replace(
        pool_min_spares=spares, pool_max_spares=max(spares, settings.actors.pool_max_spares)
    )
    async with (
        demo_model(settings, options.responder, out) as settings,
        LocalStack(
            base=settings,
            port=options.port,
            dashboard=options.dashboard,
            archive_path=archive,
        ) as stack,
    ):
        assert stack.acs is not None and stack.settings is not None
        out.write(f"gateway {stack.gateway_url}  ACS stand-in {stack.acs.endpoint}\n")
        ready = await _warm_up(stack.pool, spares, out)
        out.write(f"placing {options.calls} calls, {options.lines} caller lines each...\n")
        out.flush()

        def done(report: CallReport) -> None:
            state = "answered" if report.answered else "NOT answered"
            problems = f", unexpected: {report.unexpected}" if report.unexpected else ""
            out.write(
                f"  call {report.index + 1} {state}: {report.frames_sent} frames sent, "
                f"{report.heard_s:.1f} s of reply heard, hung up by {report.hung_up_by}"
                f"{problems}\n"
            )
            out.flush()

        ticker = asyncio.create_task(_progress(stack, scenario, out))
        try:
            result = await run_scenario(stack.acs, stack.gateway_url, scenario, on_call_done=done)
        finally:
            ticker.cancel()
        call_ids = [r.call_connection_id for r in result.calls if r.answered]
        async with open_archive(stack.settings.storage) as store:
            transcripts = await _archived(store, call_ids)
        metrics = stack.running[0].gateway.metrics
        frames = (metrics.frames_routed("media", "in"), metrics.frames_routed("media", "out"))
        pool = PoolFigures.of(ready, stack.pool)
        summary = DemoSummary.build(
            result.calls, transcripts, frames, pool, archive, stack.dashboard_url
        )
        out.write("\n" + summary.table() + "\n")
        out.flush()
        if options.keep_running:
            out.write("\nrunning until Ctrl-C (the dashboard stays up)\n")
            out.flush()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
    return 0 if summary.ok else 1
