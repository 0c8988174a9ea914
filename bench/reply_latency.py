"""``rtvoice bench reply_latency``: the caller's final transcript -> the first audio frame of the
reply, with N live calls, the ``openai`` responder and a model of fixed speed.

Real ``CallActor``s on local Ray (cold, all activated first), a private Redis, the real
``openai`` client in each actor, and the model stand-in (simulator/llm_api.py) in a process of
its own: time to first token ``TTFT_S``, then one token per ``TOKEN_S``. Every reply is
``REPLY``, whose first sentence is one token, so the model's own time to the first sentence is
fixed at ``TTFT_S + TOKEN_S``; rtvoice's overhead is the measured latency minus that.

Each call streams quiet caller audio at real time on its media stream the whole time (50 frames
a second in, the reply's frames out), and says ``TURNS`` final transcription lines, each after
the previous reply has played out and a random pause; calls start at random offsets, as calls
do. The latency is timed by the benchmark on the stream (the gateway's end of it): the
transcription message sent -> the first AudioData frame of the reply received. Only
``run_reply_latency`` starts anything; the records and the table are plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import httpx
import numpy as np
import orjson

from actors.activation import forget_actor
from actors.outbound_audio import slice_frames
from actors.sentences import SentenceSplitter
from actors.speaker import synthesize
from actors.stream_client import StreamConnection, open_stream
from actors.stream_protocol import FrameKind
from bench.local_ray import activate_calls, local_ray, private_actor_config
from bench.results import Benchmark, BenchOptions, BenchResult, Spread, format_table, spread
from simulator.devstack.local_redis import (
    free_port,
    stop_process,
    wait_until_serving,
)
from simulator.llm_api import tokens
from simulator.wire import audio_data, transcription_data
from storage.settings import Settings

NAME = "reply_latency"
DEFAULT_CALLS = 20
TURNS = 5
TTFT_S = 0.2
TOKEN_S = 0.02
REPLY = "Sure. Let me check that for you right now."
MODEL_TIME_MS = (TTFT_S + TOKEN_S) * 1000.0  # the model's own time to the first sentence
TARGET_OVERHEAD_P99_MS = 50.0
START_SPREAD_S = 2.0  # calls start at random offsets within this
PAUSE_S = (0.3, 1.0)  # the caller's pause after a reply, random in this range
REPLY_GAP_TIMEOUT_S = 5.0  # no reply frame for this long: the rest of the reply is lost
FIRST_FRAME_TIMEOUT_S = 15.0
CALLER = "+14255550188"
FRAME_BYTES = 640  # 20 ms at 16 kHz

DEFINITIONS = {
    "final transcript -> first reply frame": (
        "a final TranscriptionData message sent on the call's transcription stream -> the first "
        "AudioData frame of the reply received on its media stream, both timed by the benchmark "
        "at the streams' gateway end (the gateway's own forwarding is not in it)"
    ),
    "overhead (as served)": (
        "the latency minus the model's time as the stand-in actually served that request: "
        "request received -> the token completing the first sentence sent, read from the "
        "stand-in's own records (same machine, same monotonic clock); on a loaded machine the "
        "stand-in's own lateness is the model's, not rtvoice's"
    ),
    "overhead": (
        f"that latency minus the model's fixed time to the first sentence, "
        f"{MODEL_TIME_MS:.0f} ms (time to first token {TTFT_S * 1000:.0f} ms, then one token "
        f"of {TOKEN_S * 1000:.0f} ms completes the sentence): prompt, request, stream parsing, "
        "sentence split, synthesis (TTS cache), the outbound queue and pacer, the stream"
    ),
    "in the actor": (
        "the actor's own reply_first_audio metric: the transcript handed to the actor -> the "
        "reply's first audio queued for the pacer (p50 and p99 over each call's own, worst call)"
    ),
    "event-loop lag": (
        "how late the benchmark's own asyncio loop (which times both ends, and plays the "
        "callers' audio) wakes from a 10 ms sleep: its share of the measured latency"
    ),
    "live calls": (
        "each call streams quiet caller audio at real time the whole run and says its lines "
        "one reply after another, so replies of different calls overlap at random"
    ),
}


def quiet_frame() -> str:
    """A 20 ms caller frame under the barge-in threshold (it never cuts a reply)."""
    rng = np.random.default_rng(7)
    pcm = rng.integers(-60, 60, FRAME_BYTES // 2, dtype=np.int16).astype("<i2").tobytes()
    return orjson.dumps(audio_data(pcm, "", "4:" + CALLER, silent=False)).decode()


@contextlib.contextmanager
def model_stand_in(ttft_s: float = TTFT_S, token_s: float = TOKEN_S) -> Iterator[str]:
    """The model stand-in in its own process (its pacing shares no event loop with the
    benchmark); yields its OpenAI-compatible base URL."""
    port = free_port()
    command = [sys.executable, "-m", "simulator.llm_api", "--port", str(port)]
    command += ["--ttft", str(ttft_s), "--token-s", str(token_s), "--reply", REPLY]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    try:
        wait_until_serving(proc, listening, 30.0, "model stand-in")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc)


@dataclass(slots=True)
class CallRun:
    call_id: str
    latencies_ms: list[float] = field(default_factory=list)
    error: str = ""
    actor: dict[str, Any] = field(default_factory=dict)  # the actor's reply metrics
    lines: list[str] = field(default_factory=list)  # what the caller said, turn by turn
    # The stand-in's own time, request in -> the token that completes the first sentence out,
    # per turn (None when it has no record of the request).
    model_ms: list[float | None] = field(default_factory=list)

    def own_overheads(self) -> list[float]:
        """Latency minus the model's time as the stand-in actually served it."""
        pairs = zip(self.latencies_ms, self.model_ms, strict=False)
        return [latency - model for latency, model in pairs if model is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "latency_ms": [round(v, 3) for v in self.latencies_ms],
            "model_ms": [None if v is None else round(v, 3) for v in self.model_ms],
            "error": self.error,
            "actor": self.actor,
        }


def completing_token() -> int:
    """Which token of ``REPLY`` tells the splitter its first sentence is over (the next one)."""
    first = SentenceSplitter().feed(REPLY)[0]
    return len(tokens(first))


def model_times(run: CallRun, timings: list[dict[str, Any]]) -> list[float | None]:
    """Per turn, the stand-in's request in -> completing token out (ms), matched by the line."""
    by_line = {t["last_user_text"]: t for t in timings}
    index = completing_token()
    out: list[float | None] = []
    for line in run.lines[: len(run.latencies_ms)]:
        seen = by_line.get(line)
        if seen is None or len(seen["token_at"]) <= index:
            out.append(None)
        else:
            out.append((seen["token_at"][index] - seen["at"]) * 1000.0)
    return out


def overheads(latencies_ms: list[float]) -> list[float]:
    return [v - MODEL_TIME_MS for v in latencies_ms]


async def loop_lag(samples: list[float], stop: asyncio.Event, every_s: float = 0.01) -> None:
    """How late this process's event loop wakes (ms): the benchmark's own share of a latency."""
    while not stop.is_set():
        due = time.monotonic() + every_s
        await asyncio.sleep(every_s)
        samples.append((time.monotonic() - due) * 1000.0)


@dataclass(slots=True)
class Measured:
    calls: int
    turns: int
    runs: list[CallRun]
    lag_ms: list[float] = field(default_factory=list)  # the benchmark's own event loop

    @property
    def latencies(self) -> list[float]:
        return [v for r in self.runs for v in r.latencies_ms]

    @property
    def ok(self) -> bool:
        return len(self.latencies) == self.calls * self.turns

    def spreads(self) -> dict[str, Spread | None]:
        def actor(key: str) -> list[float]:
            return [float(r.actor[key]) for r in self.runs if r.actor.get(key) is not None]

        return {
            "latency": spread(self.latencies),
            "overhead": spread(overheads(self.latencies)),
            "own": spread([v for r in self.runs for v in r.own_overheads()]),
            "actor_p50": spread([v - MODEL_TIME_MS for v in actor("reply_first_audio_ms_p50")]),
            "actor_p99": spread([v - MODEL_TIME_MS for v in actor("reply_first_audio_ms_p99")]),
            "ttft": spread(actor("reply_ttft_ms_p50")),
            "lag": spread(self.lag_ms),
        }

    def failures(self) -> int:
        return sum(sum((r.actor.get("reply_failures") or {}).values()) for r in self.runs)


def table(measured: Measured) -> str:
    s = measured.spreads()

    def cells(value: Spread | None) -> str:
        return "-" if value is None else value.cells(".1f")

    rows = [
        ["final transcript -> first reply frame", cells(s["latency"])],
        [f"  overhead (minus the model's {MODEL_TIME_MS:.0f} ms)", cells(s["overhead"])],
        ["  overhead (minus the stand-in's time as served)", cells(s["own"])],
        ["in the actor, overhead: each call's p50", cells(s["actor_p50"])],
        ["in the actor, overhead: each call's p99", cells(s["actor_p99"])],
        ["model time to first token, each call's p50", cells(s["ttft"])],
        ["the benchmark's own event-loop lag", cells(s["lag"])],
    ]
    header = [f"ms: p50 / p99 / max ({measured.calls} live calls)", "value"]
    lines = [format_table(header, rows)]
    measured_turns = len(measured.latencies)
    lines.append(
        f"  replies measured: {measured_turns}/{measured.calls * measured.turns}; "
        f"fallbacks spoken: {measured.failures()}"
    )
    if (overhead := s["overhead"]) is not None:
        met = "met" if overhead.p99 < TARGET_OVERHEAD_P99_MS and measured.ok else "NOT met"
        lines.append(
            f"  target: overhead p99 under {TARGET_OVERHEAD_P99_MS:.0f} ms with "
            f"{measured.calls} live calls: {met} ({overhead.p99:.1f} ms)"
        )
    return "\n".join(lines)


async def _talk(media: StreamConnection, frame: str, stop: asyncio.Event) -> None:
    """Caller audio at real time until ``stop``."""
    next_due = time.monotonic()
    while not stop.is_set():
        await media.send_acs(frame)
        next_due += 0.02
        await asyncio.sleep(max(0.0, next_due - time.monotonic()))


async def _listen(media: StreamConnection, frames: asyncio.Queue[float]) -> None:
    """Puts the arrival time of every reply frame (AudioData) the actor sends."""
    while (frame := await media.recv()) is not None:
        if frame.kind is FrameKind.ACS and b'"AudioData"' in frame.payload:
            frames.put_nowait(time.monotonic())


def reply_frames(voice: str, sample_rate: int) -> int:
    """The 20 ms frames of one reply, spoken sentence by sentence as the actor does: counting
    them tells the benchmark when a reply is over, however late the last frames come."""
    splitter = SentenceSplitter()
    sentences = [*splitter.feed(REPLY), splitter.flush()]
    frame_bytes = sample_rate * 20 // 1000 * 2
    return sum(
        len(slice_frames(synthesize(text.strip(), voice, sample_rate), frame_bytes))
        for text in sentences
        if text.strip()
    )


async def _reply_over(frames: asyncio.Queue[float], remaining: int) -> None:
    with contextlib.suppress(TimeoutError):
        for _ in range(remaining):
            await asyncio.wait_for(frames.get(), REPLY_GAP_TIMEOUT_S)


async def _one_call(
    handle: Any, endpoint: Any, call_id: str, turns: int, frames_per_reply: int, rng: random.Random
) -> CallRun:
    run = CallRun(call_id, lines=[f"Where is my order {call_id} {i}?" for i in range(turns)])
    host, port, token = endpoint.host, endpoint.port, endpoint.token
    media = await open_stream(host, port, token, call_id, "media")
    text = await open_stream(host, port, token, call_id, "transcription")
    frames: asyncio.Queue[float] = asyncio.Queue()
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(_talk(media, quiet_frame(), stop)),
        asyncio.create_task(_listen(media, frames)),
    ]
    try:
        await asyncio.sleep(rng.uniform(0.0, START_SPREAD_S))
        for i in range(turns):
            sent = time.monotonic()
            line = transcription_data(run.lines[i], 0.0, 1.0, "4:" + CALLER, final=True)
            await text.send_acs(orjson.dumps(line))
            first = await asyncio.wait_for(frames.get(), FIRST_FRAME_TIMEOUT_S)
            run.latencies_ms.append((first - sent) * 1000.0)
            await _reply_over(frames, frames_per_reply - 1)
            await asyncio.sleep(rng.uniform(*PAUSE_S))
        info = await handle.info.remote()
        metrics = info["metrics"]
        run.actor = {k: v for k, v in metrics.items() if k.startswith(("repl", "tokens"))}
    except Exception as exc:
        run.error = type(exc).__name__
    finally:
        stop.set()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)  # close reads the stream too
        await media.close()
        await text.close()
    return run


async def run_reply_latency(
    settings: Settings, calls: int, out: TextIO, *, turns: int = TURNS, seed: int = 1
) -> BenchResult:
    if calls < 1 or turns < 1:
        raise ValueError("reply_latency needs at least one call and one turn")
    started_at = datetime.now(UTC)
    slots = calls + 4
    rng = random.Random(seed)
    with (
        local_ray(settings, slots, out, NAME, own_namespace=True) as namespace,
        model_stand_in() as base_url,
        private_actor_config(
            settings,
            namespace,
            NAME,
            responder="openai",
            llm_base_url=base_url,
            llm_api_key="bench",
        ) as config,
    ):
        out.write(f"{NAME}: activating {calls} call actors (openai responder, model stand-in)\n")
        out.flush()
        begun = time.monotonic()
        activated = await activate_calls(config, "reply", calls, CALLER)
        out.write(
            f"  activated in {time.monotonic() - begun:.1f} s; {calls} live calls, "
            f"{turns} replies each\n"
        )
        out.flush()
        jobs = []
        runs: list[CallRun] = []
        for call_id, got in activated.items():
            if isinstance(got, BaseException):
                runs.append(CallRun(call_id, error=f"activation: {type(got).__name__}"))
                continue
            handle, endpoint = got
            frames = reply_frames(config.voice, config.sample_rate)
            jobs.append((handle, _one_call(handle, endpoint, call_id, turns, frames, rng)))
        lag: list[float] = []
        stop = asyncio.Event()
        probe = asyncio.create_task(loop_lag(lag, stop))
        runs += await asyncio.gather(*(job for _, job in jobs))
        stop.set()
        await probe
        async with httpx.AsyncClient(trust_env=False) as http:
            timings = (await http.get(base_url.removesuffix("/v1") + "/standin/requests")).json()
        for run in runs:
            run.model_ms = model_times(run, timings)
        for handle, _ in jobs:
            await asyncio.to_thread(forget_actor, handle)
    measured = Measured(calls, turns, runs, lag)
    if (latency := measured.spreads()["latency"]) is not None:
        out.write(f"  {latency.n} replies measured, p50 {latency.p50:.1f} ms\n")
    return BenchResult.of_run(
        NAME,
        calls,
        started_at,
        params={
            "calls": calls,
            "turns_per_call": turns,
            "ttft_ms": TTFT_S * 1000,
            "token_ms": TOKEN_S * 1000,
            "model_time_to_first_sentence_ms": MODEL_TIME_MS,
            "reply": REPLY,
            "call_slots": slots,
        },
        definitions=DEFINITIONS,
        runs=[
            {
                "summary_ms": {
                    k: None if v is None else v.to_json(3) for k, v in measured.spreads().items()
                },
                "per_call": [r.to_json() for r in runs],
            }
        ],
        table=table(measured),
        ok=measured.ok,
    )


async def run(settings: Settings, options: BenchOptions, out: TextIO) -> BenchResult:
    return await run_reply_latency(settings, options.calls or DEFAULT_CALLS, out)


BENCHMARK = Benchmark(name=NAME, default_calls=DEFAULT_CALLS, run=run)
