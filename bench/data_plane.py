"""``rtvoice bench data_plane``: N concurrent calls streaming real ACS AudioData JSON over real
WebSockets through the gateway into their call actors, at real time; and, in the same run, the
two baselines the data plane is judged against (one Ray actor method call per frame, and a raw
loopback socket pipe).

The gateway (with local Ray and a private Redis) runs in this process; the load generator, the
ACS stand-in placing the calls (``python -m simulator.cli simulate``), runs in a subprocess, so
this process's CPU is the gateway's. Over a steady window, while every call streams, the
benchmark reads ``/proc/<pid>/stat`` (utime + stime) of this process and of each call actor's
process (``info()["pid"]``), and a bare async Ray actor doing nothing (the floor of any actor
process). Loss is the frames the callers sent (the stand-in's report) against the frames the
actors counted (``frames_in``, from the archived transcripts' metrics). Only ``run`` and the
baselines start anything; the records and the table are plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import socket
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

import ray

from bench.cpu_groups import STAND_IN, GroupCpu
from bench.frame_floor import measure_floor
from bench.gateway_stack import (
    ExternalAcs,
    GatewayStack,
    archived_transcripts,
    gateway_stack,
    load_generator,
    load_generator_command,
)
from bench.local_ray import local_ray
from bench.machine import describe_machine
from bench.proc_stats import all_cpu_s, cpu_percent, proc_cpu_s
from bench.relay_floor import measure_relay_floor
from bench.results import Benchmark, BenchOptions, BenchResult, format_table
from storage.archive import open_archive
from storage.latency import percentile
from storage.settings import Settings

NAME = "data_plane"
DEFAULT_CALLS = 20
FRAME_BYTES = 640  # 20 ms of 16 kHz mono PCM16
FRAMES_PER_S = 50
TALK_S = 30.0  # each caller streams this long
SETTLE_S = 3.0  # after every call's actor is live, before the window opens
WINDOW_S = 15.0  # the steady window CPU and frame rates are measured over
SMALL_TALK_S = 8.0  # a smoke run (few calls) stays short
SMALL_WINDOW_S = 3.0
RAY_BASELINE_S = 5.0  # the Ray-call-per-frame baseline at the data plane's frame rate
RAY_SATURATE_FRAMES = 5000  # ... and as fast as it goes
SOCKET_PACED_S = 3.0
SOCKET_SATURATE_FRAMES = 200_000
ARCHIVE_WAIT_S = 30.0
LIVE_WAIT_S = 60.0
FLOOR_ACTORS = 4  # bare actors fed one call each for the floor
SATURATED_CALLS = 4  # callers sending their frames as fast as they can
SATURATED_AUDIO_S = 300.0  # of audio each of them sends: 15,000 frames
SMALL_SATURATED_AUDIO_S = 10.0
SATURATED_WINDOW = (0.1, 0.9)  # of the frames expected through the gateway: the steady middle
SATURATED_POLL_S = 0.005
SATURATED_TIMEOUT_S = 120.0

DEFINITIONS = {
    "gateway CPU per call": (
        "this process (the gateway replica, a Ray driver, with nothing else running in it: the "
        "callers and the ACS stand-in are a subprocess) over the steady window, utime + stime "
        "from /proc, divided by the calls streaming; % of one core"
    ),
    "actor CPU per call": (
        "each call actor's process (pid from info()) over the same window, % of one core; p50 "
        "/ max over the calls. 'bare Ray actor floor': an async Ray actor doing nothing, measured "
        "over the same window (Ray's own per-process cost)"
    ),
    "floor (frames)": (
        "the issue's floor: bare async Ray actors (bench/frame_floor.py) each reading one call's "
        "ACS AudioData JSON over TCP at 50 frames/s, parsing it (JSON, base64) and writing an "
        "outbound AudioData reply per frame; CPU from /proc over a window after the calls end, "
        "p50 over the floor actors. Target: a call actor within 1.3x of it"
    ),
    "relay floor": (
        "the gateway's floor: a bare relay process on uvloop (bench/relay_floor.py: its "
        "data_received only writes to its peer, no WebSocket, framing or parsing) between one "
        "caller process and a far-end process per call, 50 900-byte messages a second each way "
        "per call, as many calls as the run's; its CPU per call over the same window length"
    ),
    "frame latency": (
        "measured in each call actor: the AudioData capture timestamp (stamped by the caller in "
        "the load generator when it sends the frame, millisecond resolution: up to 1 ms high) to "
        "the frame's arrival in the actor's media path; so it spans caller WebSocket -> gateway "
        "-> TCP stream -> actor, not gateway receive -> actor. The actor keeps p50 and p99 per "
        "call (no p99.9): shown as the median of the calls' p50 and the calls' p99 p50 / max"
    ),
    "loss": "frames the callers sent (the stand-in's report) minus frames_in at the actors",
    "Ray call per frame": (
        "a trivial async Ray actor receiving each 640-byte frame as a method call from this "
        "process: paced at the data plane's total frame rate (achieved rate, latency from send "
        "to the method running), then as fast as it goes (saturated rate)"
    ),
    "raw socket": (
        "640-byte frames (4-byte length prefix) over one loopback TCP connection to a receiver "
        "process: paced at the same rate (latency), then as fast as it goes (saturated rate)"
    ),
    "data plane capacity (estimate)": (
        "from the real-time run: frames/s streamed in the window divided by the CPU the gateway "
        "and the actors spent on them (cores), times this machine's usable cores"
    ),
    "data plane, saturated": (
        "a few callers (the load generator) sending real AudioData JSON over real WebSockets as "
        "fast as they can, through the gateway into their call actors: frames the gateway "
        "forwarded per second between 10% and 90% of the frames expected (the steady middle). "
        "Measured with the load generator on the same cores, as the baselines' saturated rates "
        "are; 'load generator apart' divides the rate by the cores every other process used "
        "(gateway, call actors, Ray, Redis) and multiplies by this machine's usable cores. The "
        "targets are judged on the measured rate"
    ),
}


# -- /proc ----------------------------------------------------------------------------------------


def latency_summary(samples_ms: list[float]) -> dict[str, float | int | None]:
    ordered = sorted(samples_ms)
    if not ordered:
        return {"n": 0, "p50": None, "p99": None, "p99_9": None, "max": None}
    return {
        "n": len(ordered),
        "p50": round(percentile(ordered, 50), 3),
        "p99": round(percentile(ordered, 99), 3),
        "p99_9": round(percentile(ordered, 99.9), 3),
        "max": round(ordered[-1], 3),
    }


# -- records --------------------------------------------------------------------------------------


@dataclass(slots=True)
class CallMeasure:
    call_id: str
    pid: int | None
    cpu_pct: float | None  # the actor's process over the window
    frames_window: int | None  # frames_in during the window
    frames_sent: int = 0
    frames_in: int | None = None  # at the end of the call (archived metrics)
    backlog_frames: int | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None


@dataclass(slots=True)
class DataPlaneRun:
    calls: int
    talk_s: float
    window_s: float = 0.0
    streaming: int = 0  # calls whose actor was measured over the whole window
    answered: int = 0
    archived: int = 0
    gateway_cpu_pct: float | None = None
    floor_cpu_pct: float | None = None  # the bare Ray actor
    frame_floor_cpu_pct: float | None = None  # a bare Ray actor reading and answering frames
    relay_floor_cpu_pct: float | None = None  # per call: a bare Python relay (bench/relay_floor.py)
    per_call: list[CallMeasure] = field(default_factory=list)
    note: str = ""

    @property
    def window_frames(self) -> int:
        return sum(c.frames_window or 0 for c in self.per_call)

    @property
    def frame_rate(self) -> float:
        return self.window_frames / self.window_s if self.window_s else 0.0

    @property
    def frames_sent(self) -> int:
        return sum(c.frames_sent for c in self.per_call)

    @property
    def frames_in(self) -> int:
        return sum(c.frames_in or 0 for c in self.per_call)

    @property
    def lost(self) -> int:
        return self.frames_sent - self.frames_in

    def actor_cpu(self) -> list[float]:
        return sorted(c.cpu_pct for c in self.per_call if c.cpu_pct is not None)

    @property
    def gateway_cpu_per_call(self) -> float | None:
        if self.gateway_cpu_pct is None or not self.streaming:
            return None
        return self.gateway_cpu_pct / self.streaming

    def cores_used(self) -> float:
        return ((self.gateway_cpu_pct or 0.0) + sum(self.actor_cpu())) / 100.0

    def capacity_estimate(self, cores: int) -> float | None:
        used = self.cores_used()
        return self.frame_rate / used * cores if used > 0 and self.frame_rate else None

    def latency(self) -> dict[str, float | None]:
        p50s = sorted(c.latency_p50_ms for c in self.per_call if c.latency_p50_ms is not None)
        p99s = sorted(c.latency_p99_ms for c in self.per_call if c.latency_p99_ms is not None)
        return {
            "p50_median_of_calls": percentile(p50s, 50) if p50s else None,
            "p99_median_of_calls": percentile(p99s, 50) if p99s else None,
            "p99_worst_call": p99s[-1] if p99s else None,
        }

    def to_json(self) -> dict[str, Any]:
        actor = self.actor_cpu()
        return {
            "calls": self.calls,
            "talk_s": self.talk_s,
            "window_s": round(self.window_s, 3),
            "streaming": self.streaming,
            "note": self.note,
            "answered": self.answered,
            "archived": self.archived,
            "gateway_cpu_pct": _r(self.gateway_cpu_pct),
            "gateway_cpu_pct_per_call": _r(self.gateway_cpu_per_call),
            "actor_cpu_pct_p50": _r(percentile(actor, 50)) if actor else None,
            "actor_cpu_pct_max": _r(actor[-1]) if actor else None,
            "bare_ray_actor_cpu_pct": _r(self.floor_cpu_pct),
            "frame_floor_cpu_pct": _r(self.frame_floor_cpu_pct),
            "relay_floor_cpu_pct_per_call": _r(self.relay_floor_cpu_pct),
            "window_frames": self.window_frames,
            "window_frame_rate": round(self.frame_rate, 1),
            "frames_sent": self.frames_sent,
            "frames_in": self.frames_in,
            "frames_lost": self.lost,
            "latency_ms": {k: _r(v) for k, v in self.latency().items()},
            "per_call": [asdict(c) for c in self.per_call],
        }


@dataclass(slots=True)
class Baseline:
    name: str
    offered_rate: float  # frames/s asked for in the paced run
    paced_rate: float = 0.0  # frames/s achieved
    paced_latency_ms: dict[str, float | int | None] = field(default_factory=dict)
    saturated_rate: float = 0.0  # frames/s as fast as it goes
    note: str = ""


@dataclass(slots=True)
class SaturatedRun:
    """Callers sending frames as fast as they can, through the gateway into their actors."""

    calls: int
    audio_s: float  # of audio each caller sends
    window_s: float = 0.0
    window_frames: int = 0  # forwarded by the gateway to the actors within the window
    cpu: GroupCpu | None = None  # every process's CPU over the window, by group
    frames_sent: int = 0  # by the callers (the stand-in's report)
    frames_in: int = 0  # at the actors (the archived transcripts' metrics)
    note: str = ""

    @property
    def frames_expected(self) -> int:
        return int(self.calls * self.audio_s * FRAMES_PER_S)

    @property
    def rate(self) -> float:
        return self.window_frames / self.window_s if self.window_s else 0.0

    def data_plane_cores(self) -> float | None:
        """Cores busy over the window, the load generator's left out."""
        if self.cpu is None or self.window_s <= 0:
            return None
        spent = sum(cpu for group, cpu in self.cpu.cpu_s.items() if group != STAND_IN)
        return spent / self.window_s

    def rate_apart(self, cores: int) -> float | None:
        """The rate with every usable core the data plane's (the load generator apart)."""
        busy = self.data_plane_cores()
        return self.rate / busy * cores if busy and self.rate else None

    def to_json(self, cores: int) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "audio_s": self.audio_s,
            "frames_expected": self.frames_expected,
            "window_s": round(self.window_s, 3),
            "window_frames": self.window_frames,
            "rate": round(self.rate, 1),
            "rate_load_generator_apart": _r(self.rate_apart(cores), 1),
            "cpu": self.cpu.to_json(self.calls) if self.cpu else None,
            "frames_sent": self.frames_sent,
            "frames_in": self.frames_in,
            "frames_lost": self.frames_sent - self.frames_in,
            "note": self.note,
        }


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{suffix}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def table(
    run: DataPlaneRun, saturated: SaturatedRun, ray_b: Baseline, sock_b: Baseline, cores: int
) -> str:
    actor = run.actor_cpu()
    lat = run.latency()
    capacity = run.capacity_estimate(cores)
    busy = saturated.data_plane_cores()
    rows = [
        ("calls answered / archived", f"{run.answered}/{run.calls}, {run.archived}/{run.calls}"),
        ("steady window", f"{run.window_s:.1f} s, {run.frame_rate:,.0f} frames/s streamed"),
        ("gateway CPU, per call", _fmt(run.gateway_cpu_per_call, ".2f", "% of a core")
         + f"  (all calls: {_fmt(run.gateway_cpu_pct, '.1f', '%')})"),
        ("actor CPU, per call p50 / max",
         f"{_fmt(percentile(actor, 50) if actor else None, '.2f', '%')} / "
         f"{_fmt(actor[-1] if actor else None, '.2f', '%')}"),
        ("floor: bare Ray actor, same frames",
         f"{_fmt(run.frame_floor_cpu_pct, '.2f', '%')}  (actor p50 vs it: "
         f"{_ratio(percentile(actor, 50) if actor else None, run.frame_floor_cpu_pct)})"),
        ("bare Ray actor, idle", _fmt(run.floor_cpu_pct, ".2f", "%")),
        ("floor: bare Python relay, per call",
         f"{_fmt(run.relay_floor_cpu_pct, '.2f', '%')}  (gateway vs it: "
         f"{_ratio(run.gateway_cpu_per_call, run.relay_floor_cpu_pct)})"),
        ("frame latency p50 / p99 (ms)",
         f"{_fmt(lat['p50_median_of_calls'], '.1f')} / {_fmt(lat['p99_median_of_calls'], '.1f')}"
         f" (worst call p99 {_fmt(lat['p99_worst_call'], '.1f')}; p99.9 not kept)"),
        ("frames sent / at actors / lost",
         f"{run.frames_sent:,} / {run.frames_in:,} / {run.lost:,}"),
        ("saturated: callers, window",
         f"{saturated.calls} sending as fast as they can; {saturated.window_s:.2f} s, "
         f"{saturated.window_frames:,} frames through the gateway"),
        ("saturated: cores busy, load generator apart",
         f"{_fmt(busy, '.2f')} (estimate from the real-time run: "
         f"{_fmt(capacity, ',.0f', ' frames/s')})"),
        ("saturated: frames sent / at actors / lost",
         f"{saturated.frames_sent:,} / {saturated.frames_in:,} / "
         f"{saturated.frames_sent - saturated.frames_in:,}"),
    ]
    lines = [format_table(("data plane", f"{run.calls} calls, real time"), rows), ""]

    def paced(b: Baseline) -> str:
        lat_b = b.paced_latency_ms
        return (
            f"{b.paced_rate:,.0f}/s of {b.offered_rate:,.0f}; "
            f"{_fmt(lat_b.get('p50'), '.2f')} / {_fmt(lat_b.get('p99'), '.2f')} / "
            f"{_fmt(lat_b.get('p99_9'), '.2f')} ms"
        )

    through = [
        ("data plane", f"{run.frame_rate:,.0f}/s of {run.calls * FRAMES_PER_S:,}; see above",
         f"{saturated.rate:,.0f}/s ({_fmt(saturated.rate_apart(cores), ',.0f', '/s')} with "
         "the load generator apart)", "-"),
        ("Ray call per frame", paced(ray_b), f"{ray_b.saturated_rate:,.0f}/s",
         _ratio(saturated.rate, ray_b.saturated_rate)),
        ("raw loopback socket", paced(sock_b), f"{sock_b.saturated_rate:,.0f}/s",
         _ratio(saturated.rate, sock_b.saturated_rate)),
    ]
    header = ("path", "paced: achieved; latency p50 / p99 / p99.9", "saturated",
              "data plane vs it")
    lines.append(format_table(header, [list(row) for row in through]))
    for note in (run.note, saturated.note):
        if note:
            lines.append(f"  note: {note}")
    return "\n".join(lines)


class _Idle:
    """The floor: an async Ray actor doing nothing."""

    async def pid(self) -> int:
        return os.getpid()


async def _info(handle: Any, timeout_s: float) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = await asyncio.wait_for(handle.info.remote(), timeout_s)
    except Exception:  # starting, retired or gone: not a live call
        return None
    return info


async def live_calls(namespace: str, timeout_s: float = 2.0) -> dict[str, tuple[Any, int]]:
    """Call id -> (actor handle, pid) of every actor of ``namespace`` holding a connected call."""
    names = [
        entry["name"]
        for entry in await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        if entry.get("namespace") == namespace
    ]
    handles = []
    for name in names:
        with contextlib.suppress(ValueError):  # ended between the listing and now
            handles.append(ray.get_actor(name, namespace=namespace))
    infos = await asyncio.gather(*(_info(h, timeout_s) for h in handles))
    return {
        info["call_id"]: (handle, int(info["pid"]))
        for handle, info in zip(handles, infos, strict=True)
        if info and info.get("call_id") and info.get("state") == "connected" and info.get("pid")
    }


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


async def measure_data_plane(
    settings: Settings, calls: int, talk_s: float, window_s: float, out: TextIO
) -> DataPlaneRun:
    run = DataPlaneRun(calls=calls, talk_s=talk_s)
    namespace = settings.actors.ray_namespace
    acs = ExternalAcs.fresh()
    idle: Any = ray.remote(num_cpus=0)(_Idle).remote()
    idle_pid = int(await idle.pid.remote())
    report_path = Path(tempfile.mkdtemp(prefix="rtvoice-bench-")) / "calls.json"
    _say(out, "data_plane: starting Redis and the gateway; warming the pool")
    async with gateway_stack(settings, acs, spares=calls) as stack:
        await _warm_then_hold(stack, calls)
        _say(out, f"  pool: {await stack.pool.spare_count()}/{calls} spares; placing {calls} "
                  f"calls of {talk_s:.0f} s (the stand-in and callers in a subprocess)")
        command = load_generator_command(
            acs, stack.gateway_url, calls, report_path, talk_s=talk_s
        )
        async with load_generator(command, report_path) as generator:
            begun = time.monotonic()
            live: dict[str, tuple[Any, int]] = {}
            while time.monotonic() - begun < LIVE_WAIT_S and generator.running:
                live.update(await live_calls(namespace, timeout_s=5.0))  # once live, kept
                if len(live) >= calls:
                    break
                await asyncio.sleep(0.5)
            _say(out, f"  {time.monotonic() - begun:5.1f} s  {len(live)}/{calls} calls live; "
                      f"steady window of {window_s:.0f} s in {SETTLE_S:.0f} s")
            if len(live) < calls:
                run.note = f"only {len(live)}/{calls} calls live after {LIVE_WAIT_S:.0f} s"
            await asyncio.sleep(SETTLE_S)
            handles = {cid: handle for cid, (handle, _) in live.items()}
            before_info = {
                cid: info
                for cid, info in zip(handles, await asyncio.gather(
                    *(_info(h, 5.0) for h in handles.values())), strict=True)
                if info is not None
            }
            me, t0 = os.getpid(), time.monotonic()
            cpu0 = {cid: proc_cpu_s(i["pid"]) for cid, i in before_info.items()}
            gw0, idle0 = proc_cpu_s(me), proc_cpu_s(idle_pid)
            await asyncio.sleep(window_s)
            gw1, idle1 = proc_cpu_s(me), proc_cpu_s(idle_pid)
            cpu1 = {cid: proc_cpu_s(i["pid"]) for cid, i in before_info.items()}
            t1 = time.monotonic()
            after_info = dict(zip(before_info, await asyncio.gather(
                *(_info(handles[cid], 5.0) for cid in before_info)), strict=True))
            run.window_s = t1 - t0
            run.gateway_cpu_pct = cpu_percent(gw0, gw1, run.window_s)
            run.floor_cpu_pct = cpu_percent(idle0, idle1, run.window_s)
            for cid, info in before_info.items():
                later = after_info[cid]
                cpu = cpu_percent(cpu0[cid], cpu1[cid], run.window_s)
                if later is None or cpu is None:  # its call ended in the window: not steady
                    continue
                run.per_call.append(CallMeasure(
                    call_id=cid,
                    pid=info["pid"],
                    cpu_pct=cpu,
                    frames_window=later["metrics"]["frames_in"] - info["metrics"]["frames_in"],
                ))
            run.streaming = len(run.per_call)
            if run.streaming < calls:
                run.note = (run.note + "; " if run.note else "") + (
                    f"{calls - run.streaming} calls not streaming through the whole window")
            _say(out, f"  window done: gateway {_fmt(run.gateway_cpu_pct, '.1f', '%')}, "
                      f"{run.frame_rate:,.0f} frames/s; waiting for the calls to end")
            report, err = await generator.report()
        if report is None:
            run.note = (run.note + "; " if run.note else "") + "no load-generator report: " + err
            return run
        sent = {c["call_connection_id"]: int(c["frames_sent"]) for c in report["calls"]}
        run.answered = sum(bool(c["answered"]) for c in report["calls"])
        by_id = {c.call_id: c for c in run.per_call}
        for cid in sent:
            if cid and cid not in by_id:  # not live in the window: still counted for loss
                by_id[cid] = CallMeasure(cid, None, None, None)
                run.per_call.append(by_id[cid])
        async with open_archive(stack.settings.storage) as store:
            transcripts = await archived_transcripts(store, sent, ARCHIVE_WAIT_S)
        for cid, doc in transcripts.items():
            metrics = doc.get("metrics") or {}
            c = by_id[cid]
            c.frames_in = metrics.get("frames_in")
            c.backlog_frames = metrics.get("backlog_frames")
            c.latency_p50_ms = metrics.get("frame_latency_ms_p50")
            c.latency_p99_ms = metrics.get("frame_latency_ms_p99")
        for cid, n in sent.items():
            by_id[cid].frames_sent = n
        run.archived = sum(c.frames_in is not None for c in run.per_call)
    ray.kill(idle)
    return run


async def _warm_then_hold(stack: GatewayStack, calls: int) -> None:
    """Until the pool has a spare per call (bounded); then no refill: spares starting would
    share the measured CPU."""
    deadline = time.monotonic() + 30.0 + 2.0 * calls
    while await stack.pool.spare_count() < calls and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    stack.pool.min_spares = stack.pool.max_spares = 0


async def _saturated_window(
    stack: GatewayStack, run: SaturatedRun, timeout_s: float
) -> None:
    """The steady middle of the run: from SATURATED_WINDOW[0] to [1] of the frames expected
    through the gateway, its length, its frames and every process's CPU over it."""
    metrics = stack.gateway.metrics

    def forwarded() -> float:
        return metrics.frames_routed("media", "in")

    low, high = (run.frames_expected * share for share in SATURATED_WINDOW)
    deadline = time.monotonic() + timeout_s
    while forwarded() < low:
        if time.monotonic() > deadline:
            run.note = f"only {forwarded():,.0f} frames reached the gateway"
            return
        await asyncio.sleep(SATURATED_POLL_S)
    n0, t0, cpu0 = forwarded(), time.monotonic(), all_cpu_s()
    while forwarded() < high and time.monotonic() < deadline:
        await asyncio.sleep(SATURATED_POLL_S)
    n1, t1, cpu1 = forwarded(), time.monotonic(), all_cpu_s()
    run.window_s, run.window_frames = t1 - t0, int(n1 - n0)
    run.cpu = GroupCpu.between(cpu0, cpu1, run.window_s, os.getpid())


async def measure_saturated(
    settings: Settings, calls: int, audio_s: float, out: TextIO
) -> SaturatedRun:
    """``calls`` callers send ``audio_s`` of audio each as fast as they can (the load generator
    with ``--fast``), through a fresh gateway into warm call actors."""
    run = SaturatedRun(calls=calls, audio_s=audio_s)
    acs = ExternalAcs.fresh()
    report_path = Path(tempfile.mkdtemp(prefix="rtvoice-bench-")) / "calls.json"
    async with gateway_stack(settings, acs, spares=calls) as stack:
        await _warm_then_hold(stack, calls)
        _say(out, f"  saturated: {calls} callers sending {run.frames_expected:,} frames as fast "
                  "as they can")
        command = load_generator_command(
            acs, stack.gateway_url, calls, report_path, talk_s=audio_s, fast=True
        )
        async with load_generator(command, report_path) as generator:
            await _saturated_window(stack, run, SATURATED_TIMEOUT_S)
            report, err = await generator.report()
        if report is None:
            run.note = "no load-generator report: " + err
            return run
        sent = {
            c["call_connection_id"]: int(c["frames_sent"])
            for c in report["calls"]
            if c["call_connection_id"]
        }
        run.frames_sent = sum(sent.values())
        async with open_archive(stack.settings.storage) as store:
            transcripts = await archived_transcripts(store, sent, ARCHIVE_WAIT_S)
        run.frames_in = sum(
            int((doc.get("metrics") or {}).get("frames_in") or 0) for doc in transcripts.values()
        )
    return run


# -- baseline (a): one Ray actor method call per frame ----------------------------------------


class _FrameSink:
    """A trivial async Ray actor: each frame is one method call."""

    def __init__(self) -> None:
        self.latency_ms: list[float] = []
        self.first = 0.0
        self.last = 0.0

    async def frame(self, payload: bytes, sent_at: float) -> None:
        now = time.time()
        self.first = self.first or now
        self.last = now
        self.latency_ms.append((now - sent_at) * 1000.0)

    async def take(self) -> tuple[list[float], float, float]:
        taken = (self.latency_ms, self.first, self.last)
        self.latency_ms, self.first, self.last = [], 0.0, 0.0
        return taken


async def ray_call_baseline(calls: int, paced_s: float, saturate: int) -> Baseline:
    rate = calls * FRAMES_PER_S
    result = Baseline("ray_call_per_frame", offered_rate=float(rate))
    sink: Any = ray.remote(num_cpus=0)(_FrameSink).remote()
    payload = bytes(FRAME_BYTES)
    try:
        await sink.take.remote()  # up
        refs: list[Any] = []
        start = time.monotonic()
        ticks = int(paced_s * FRAMES_PER_S)
        for tick in range(ticks):
            refs.extend(sink.frame.remote(payload, time.time()) for _ in range(calls))
            await asyncio.sleep(max(0.0, start + (tick + 1) * 0.02 - time.monotonic()))
        await asyncio.gather(*refs)
        latency, first, last = await sink.take.remote()
        span = max(last - first, 1e-9)
        result.paced_rate = (len(latency) - 1) / span if len(latency) > 1 else 0.0
        result.paced_rate = min(result.paced_rate, len(latency) / paced_s)
        result.paced_latency_ms = latency_summary(latency)
        began = time.time()
        refs = [sink.frame.remote(payload, time.time()) for _ in range(saturate)]
        await asyncio.gather(*refs)
        _, _, last = await sink.take.remote()
        result.saturated_rate = saturate / max(last - began, 1e-9)
    finally:
        ray.kill(sink)
    return result


# -- baseline (b): a raw loopback socket pipe ---------------------------------------------------

_HEADER = struct.Struct("!Id")  # length, send time (time.time())


def _socket_receiver(port: int, conn: Connection) -> None:
    """Receiver process: read frames until EOF, report (count, first, last, latencies ms)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        stream = sock.makefile("rb", buffering=1 << 20)
        latency: list[float] = []
        first = last = 0.0
        while True:
            head = stream.read(_HEADER.size)
            if len(head) < _HEADER.size:
                break
            size, sent_at = _HEADER.unpack(head)
            stream.read(size)
            last = time.time()
            first = first or last
            latency.append((last - sent_at) * 1000.0)
    conn.send((len(latency), first, last, latency))
    conn.close()


def _socket_pipe(frames_per_tick: int, ticks: int | None, total: int | None) -> tuple[
    int, float, float, list[float], float
]:
    """Send paced (``ticks`` of ``frames_per_tick`` every 20 ms) or ``total`` back to back."""
    ctx = multiprocessing.get_context("spawn")
    with socket.create_server(("127.0.0.1", 0)) as server:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_socket_receiver, args=(server.getsockname()[1], child))
        proc.start()
        sock, _ = server.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = bytes(FRAME_BYTES)
        began = time.time()
        with sock:
            if ticks is not None:
                start = time.monotonic()
                for tick in range(ticks):
                    for _ in range(frames_per_tick):
                        sock.sendall(_HEADER.pack(FRAME_BYTES, time.time()) + payload)
                    time.sleep(max(0.0, start + (tick + 1) * 0.02 - time.monotonic()))
            else:
                batch = 64
                for _ in range(0, total or 0, batch):
                    sock.sendall(b"".join(
                        _HEADER.pack(FRAME_BYTES, time.time()) + payload for _ in range(batch)))
        count, first, last, latency = parent.recv()
        proc.join(10)
    return count, first, last, latency, began


async def socket_baseline(calls: int, paced_s: float, saturate: int) -> Baseline:
    rate = calls * FRAMES_PER_S
    result = Baseline("raw_loopback_socket", offered_rate=float(rate))
    count, first, last, latency, _ = await asyncio.to_thread(
        _socket_pipe, calls, int(paced_s * FRAMES_PER_S), None
    )
    result.paced_rate = min((count - 1) / max(last - first, 1e-9), count / paced_s)
    result.paced_latency_ms = latency_summary(latency)
    count, _, last, _, began = await asyncio.to_thread(_socket_pipe, 0, None, saturate)
    result.saturated_rate = count / max(last - began, 1e-9)
    return result


# -- the benchmark ------------------------------------------------------------------------------


def targets(
    run: DataPlaneRun, saturated: SaturatedRun, ray_b: Baseline, sock_b: Baseline
) -> dict[str, Any]:
    actor = run.actor_cpu()
    actor_p50 = percentile(actor, 50) if actor else None
    capacity = saturated.rate or None
    floor = run.frame_floor_cpu_pct
    return {
        "actor_within_1_3x_of_floor": (
            None if actor_p50 is None or not floor else actor_p50 <= 1.3 * floor
        ),
        "actor_vs_floor": None if actor_p50 is None or not floor else actor_p50 / floor,
        "actor_vs_idle_bare_ray_actor": (
            None if actor_p50 is None or not run.floor_cpu_pct
            else actor_p50 / run.floor_cpu_pct
        ),
        "gateway_at_most_0_3pct_core_per_call": (
            None if run.gateway_cpu_per_call is None else run.gateway_cpu_per_call <= 0.3
        ),
        "gateway_vs_relay_floor": (
            None if run.gateway_cpu_per_call is None or not run.relay_floor_cpu_pct
            else run.gateway_cpu_per_call / run.relay_floor_cpu_pct
        ),
        "data_plane_at_least_20x_ray_call": (
            None if capacity is None else capacity >= 20 * ray_b.saturated_rate
        ),
        "data_plane_vs_ray_call": (
            None if capacity is None or not ray_b.saturated_rate
            else capacity / ray_b.saturated_rate
        ),
        "data_plane_at_least_half_raw_socket": (
            None if capacity is None else capacity >= 0.5 * sock_b.saturated_rate
        ),
        "data_plane_vs_raw_socket": (
            None if capacity is None or not sock_b.saturated_rate
            else capacity / sock_b.saturated_rate
        ),
    }


def talk_and_window(
    calls: int, talk_s: float | None, window_s: float | None
) -> tuple[float, float]:
    """How long each caller talks and the steady window: as given, else shorter for a smoke
    run of a few calls."""
    small = calls < 5
    talk = talk_s if talk_s is not None else (SMALL_TALK_S if small else TALK_S)
    return talk, window_s if window_s is not None else (SMALL_WINDOW_S if small else WINDOW_S)


async def run_data_plane(
    settings: Settings,
    calls: int,
    out: TextIO,
    *,
    talk_s: float | None = None,
    window_s: float | None = None,
) -> BenchResult:
    if calls < 1:
        raise ValueError("data_plane needs at least one call")
    small = calls < 5
    talk, window = talk_and_window(calls, talk_s, window_s)
    ray_s = 1.0 if small else RAY_BASELINE_S
    ray_n = 500 if small else RAY_SATURATE_FRAMES
    sock_n = 10_000 if small else SOCKET_SATURATE_FRAMES
    started_at = datetime.now(UTC)
    with local_ray(settings, max(16, 3 * calls), out, NAME):
        run = await measure_data_plane(settings, calls, talk, window, out)
        audio = SMALL_SATURATED_AUDIO_S if small else SATURATED_AUDIO_S
        saturated = await measure_saturated(settings, min(calls, SATURATED_CALLS), audio, out)
        floor_actors = min(calls, FLOOR_ACTORS)
        _say(out, f"  floor: {floor_actors} bare Ray actors reading the same frames, writing "
                  "the same replies")
        run.frame_floor_cpu_pct = (await measure_floor(floor_actors, window)).cpu_p50
        _say(out, f"  baseline: one Ray actor call per frame ({calls * FRAMES_PER_S}/s, then "
                  "saturated)")
        ray_b = await ray_call_baseline(calls, ray_s, ray_n)
        _say(out, "  baseline: raw loopback socket (paced, then saturated)")
        sock_b = await socket_baseline(calls, 1.0 if small else SOCKET_PACED_S, sock_n)
        _say(out, f"  floor: a bare Python relay for {calls} calls")
        run.relay_floor_cpu_pct = await measure_relay_floor(calls, window)
    machine = describe_machine()
    cores = int(machine.get("usable_cores") or machine.get("cores") or 1)
    ok = (
        not run.note
        and not saturated.note
        and run.answered == calls
        and run.archived == calls
    )
    return BenchResult.of_run(
        NAME,
        calls,
        started_at,
        machine=machine,
        params={
            "calls": calls,
            "talk_s": talk,
            "settle_s": SETTLE_S,
            "window_s": window,
            "frame_bytes": FRAME_BYTES,
            "ray_paced_s": ray_s,
            "ray_saturate_frames": ray_n,
            "socket_saturate_frames": sock_n,
            "load_generator": "python -m simulator.cli simulate (a subprocess)",
            "pool": "one warm spare per call, then no refill (no actor starts in the window)",
            "load_average": os.getloadavg(),
        },
        definitions=DEFINITIONS,
        runs=[{
            "data_plane": run.to_json(),
            "data_plane_capacity_estimate": _r(run.capacity_estimate(cores), 1),
            "data_plane_saturated": saturated.to_json(cores),
            "ray_call_per_frame": asdict(ray_b),
            "raw_loopback_socket": asdict(sock_b),
            "targets": targets(run, saturated, ray_b, sock_b),
        }],
        table=table(run, saturated, ray_b, sock_b, cores),
        ok=ok,
    )


async def run(settings: Settings, options: BenchOptions, out: TextIO) -> BenchResult:
    return await run_data_plane(settings, options.calls or DEFAULT_CALLS, out)


BENCHMARK = Benchmark(name=NAME, default_calls=DEFAULT_CALLS, run=run)
