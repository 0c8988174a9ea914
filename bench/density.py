"""``rtvoice bench density``: what one live call costs its node while it is idle, against a bare
Ray actor started in the same run.

N call actors (real ``CallActor``s on local Ray, activated, their media and transcription streams
connected and silent, the production checkpoint and heartbeat cadence) and N bare actors
(``bench.bare_actor.BareActor``: a trivial async actor with the same ``num_cpus=0`` and one call
slot). Each Ray actor is its own worker process; per process: private memory (USS, the
``Private_*`` lines of ``/proc/<pid>/smaps_rollup``) and CPU (``utime + stime`` of
``/proc/<pid>/stat``) over a window. Only ``run_density`` starts anything; the readings and the
table are plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import ray

from actors.activation import forget_actor
from actors.stream_client import StreamConnection, open_stream
from bench.bare_actor import BareActor
from bench.local_ray import activate_calls, local_ray, private_actor_config
from bench.proc_stats import cpu_percent, private_kib, proc_cpu_s
from bench.results import Benchmark, BenchOptions, BenchResult, format_table
from storage.settings import Settings

NAME = "density"
DEFAULT_CALLS = 10
WINDOW_S = 20.0  # idle CPU measured over this long
SETTLE_S = 5.0  # after every actor is up, before measuring
PROGRESS_EVERY_S = 5.0
EXIT_WAIT_S = 30.0  # a call actor's process must be gone this long after its shutdown
EXIT_POLL_S = 0.005
TARGET_RATIO = 1.2  # per live call at most 1.2x a bare Ray actor (memory; CPU likewise)

CALLER = "+14255550199"

DEFINITIONS = {
    "call actor": (
        "a CallActor on local Ray, activated for a call (epoch claimed, caller profile looked "
        "up, stream endpoint up, first checkpoint), its media and transcription streams "
        "connected and silent; checkpoint every 2 s, heartbeat every 5 s (the defaults)"
    ),
    "bare Ray actor": (
        "a trivial async Ray actor (bench/bare_actor.py, imports only os) with num_cpus=0 and "
        "one call slot, like a call actor"
    ),
    "private memory (USS)": (
        "the sum of the Private_* lines of /proc/<pid>/smaps_rollup of the actor's worker "
        "process: memory no other process shares, at the end of the window"
    ),
    "idle CPU": "utime + stime of /proc/<pid>/stat over the window, as % of one core",
    "exit CPU": (
        "a call actor's CPU from its shutdown (after the window) until its process is gone: "
        "utime + stime read every 5 ms, the last reading before the process went; what its "
        "call's end costs the node beyond archiving"
    ),
}


@dataclass(slots=True)
class Reading:
    kind: str  # "call" or "bare"
    pid: int
    uss_mib: float | None = None
    cpu_percent: float | None = None
    exit_cpu_s: float | None = None  # call actors only

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pid": self.pid,
            "uss_mib": None if self.uss_mib is None else round(self.uss_mib, 2),
            "cpu_percent": None if self.cpu_percent is None else round(self.cpu_percent, 3),
            "exit_cpu_s": None if self.exit_cpu_s is None else round(self.exit_cpu_s, 3),
        }


def measure_window(readings: list[Reading], window_s: float, sleep: Any = time.sleep) -> None:
    """CPU over ``window_s`` and USS at its end, for every reading's process (blocking)."""
    before = {r.pid: proc_cpu_s(r.pid) for r in readings}
    started = time.monotonic()
    sleep(window_s)
    elapsed = time.monotonic() - started
    for r in readings:
        r.cpu_percent = cpu_percent(before[r.pid], proc_cpu_s(r.pid), elapsed)
        kib = private_kib(r.pid)
        r.uss_mib = None if kib is None else kib / 1024.0


def cpu_until_gone(
    readings: list[Reading],
    before: dict[int, float | None],
    timeout_s: float,
    sleep: Any = time.sleep,
) -> None:
    """Each reading's CPU from ``before`` until its process is gone (blocking; polled every
    5 ms, so a process's last few ms may go unseen); None for one still there at the timeout."""
    last = dict(before)
    waiting = {r.pid for r in readings}
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            if (now := proc_cpu_s(pid)) is None:
                waiting.discard(pid)
            else:
                last[pid] = now
        sleep(EXIT_POLL_S)
    for r in readings:
        start, end = before.get(r.pid), last.get(r.pid)
        gone = r.pid not in waiting
        r.exit_cpu_s = end - start if gone and start is not None and end is not None else None


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    mean: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Summary | None:
        return Summary(len(values), statistics.fmean(values), max(values)) if values else None


def summaries(readings: list[Reading]) -> dict[str, dict[str, Summary | None]]:
    out: dict[str, dict[str, Summary | None]] = {}
    for kind in ("call", "bare"):
        mine = [r for r in readings if r.kind == kind]
        out[kind] = {
            "uss_mib": Summary.of([r.uss_mib for r in mine if r.uss_mib is not None]),
            "cpu_percent": Summary.of([r.cpu_percent for r in mine if r.cpu_percent is not None]),
            "exit_cpu_s": Summary.of([r.exit_cpu_s for r in mine if r.exit_cpu_s is not None]),
        }
    return out


def ratio(call: Summary | None, bare: Summary | None) -> float | None:
    if call is None or bare is None or bare.mean <= 0:
        return None
    return call.mean / bare.mean


def table(readings: list[Reading], calls: int, window_s: float) -> str:
    s = summaries(readings)
    header = [
        "per actor: mean / max",
        f"call actor ({calls} live)",
        f"bare Ray actor ({calls})",
        "ratio (means)",
    ]
    rows = []
    verdicts = []
    for title, key, fmt, label in (
        ("private memory, USS (MB)", "uss_mib", ".1f", "memory"),
        (f"idle CPU, {window_s:.0f} s (% of a core)", "cpu_percent", ".2f", "idle CPU"),
    ):
        call, bare = s["call"][key], s["bare"][key]
        r = ratio(call, bare)

        def cell(x: Summary | None, fmt: str = fmt) -> str:
            return "-" if x is None else f"{x.mean:{fmt}} / {x.max:{fmt}}"

        rows.append([title, cell(call), cell(bare), "-" if r is None else f"{r:.2f}x"])
        verdicts.append(f"{label} {'met' if r is not None and r <= TARGET_RATIO else 'NOT met'}")
    exits = s["call"]["exit_cpu_s"]
    rows.append(
        [
            "CPU from shutdown to exit (s)",
            "-" if exits is None else f"{exits.mean:.3f} / {exits.max:.3f}",
            "-",
            "-",
        ]
    )
    lines = [format_table(header, rows)]
    lines.append(f"  target: at most {TARGET_RATIO:g}x a bare Ray actor: " + "; ".join(verdicts))
    return "\n".join(lines)


async def _pids_of_calls(handles: list[Any]) -> list[int]:
    infos = await asyncio.gather(*(h.info.remote() for h in handles))
    return [int(i["pid"]) for i in infos]


async def run_density(
    settings: Settings,
    calls: int,
    out: TextIO,
    *,
    window_s: float = WINDOW_S,
    settle_s: float = SETTLE_S,
) -> BenchResult:
    if calls < 1:
        raise ValueError("density needs at least one call")
    started_at = datetime.now(UTC)
    slots = 2 * calls + 2
    slot = settings.actors.call_slot_resource
    handles: list[Any] = []
    bare: list[Any] = []
    streams: list[StreamConnection] = []
    readings: list[Reading] = []
    with local_ray(settings, slots, out, NAME, own_namespace=True) as namespace:
        try:
            with private_actor_config(
                settings, namespace, NAME, call_idle_timeout_s=max(600.0, 10 * window_s)
            ) as config:
                out.write(f"density: activating {calls} call actors and {calls} bare actors\n")
                out.flush()
                begun = time.monotonic()
                activated = await activate_calls(config, "density", calls, CALLER)
                remote = ray.remote(BareActor).options(num_cpus=0, resources={slot: 1})
                bare = [remote.remote() for _ in range(calls)]
                bare_pids = await asyncio.gather(*(b.pid.remote() for b in bare))
                for got in activated.values():
                    if isinstance(got, BaseException):
                        raise got
                    handle, ep = got
                    handles.append(handle)
                    call_id = (await handle.info.remote())["call_id"]
                    for stream in ("media", "transcription"):
                        streams.append(
                            await open_stream(ep.host, ep.port, ep.token, call_id, stream)
                        )
                out.write(
                    f"  all up in {time.monotonic() - begun:.1f} s; settling {settle_s:.0f} s\n"
                )
                out.flush()
                await asyncio.sleep(settle_s)
                readings = [Reading("call", pid) for pid in await _pids_of_calls(handles)]
                readings += [Reading("bare", int(pid)) for pid in bare_pids]
                out.write(f"  measuring {len(readings)} processes over {window_s:.0f} s\n")
                out.flush()

                async def progress() -> None:
                    t0 = time.monotonic()
                    while True:
                        await asyncio.sleep(PROGRESS_EVERY_S)
                        out.write(f"  {time.monotonic() - t0:5.1f} s of {window_s:.0f} s\n")
                        out.flush()

                ticker = asyncio.create_task(progress())
                try:
                    await asyncio.to_thread(measure_window, readings, window_s)
                finally:
                    ticker.cancel()
                still = await _pids_of_calls(handles)  # every call actor still alive and the same
                if sorted(still) != sorted(r.pid for r in readings if r.kind == "call"):
                    raise RuntimeError("a call actor restarted during the window")
                for conn in streams:
                    with contextlib.suppress(Exception):
                        await conn.close()
                calls_read = [r for r in readings if r.kind == "call"]
                before = {r.pid: proc_cpu_s(r.pid) for r in calls_read}
                exits = asyncio.create_task(
                    asyncio.to_thread(cpu_until_gone, calls_read, before, EXIT_WAIT_S)
                )
                await asyncio.gather(
                    *(asyncio.wait_for(h.shutdown.remote("bench"), 30) for h in handles),
                    return_exceptions=True,
                )
                await exits
        finally:
            for handle in [*handles, *bare]:
                await asyncio.to_thread(forget_actor, handle)
    s = summaries(readings)
    ok = (
        all(r.uss_mib is not None and r.cpu_percent is not None for r in readings)
        and len(readings) == 2 * calls
    )
    return BenchResult.of_run(
        NAME,
        calls,
        started_at,
        params={"calls": calls, "window_s": window_s, "settle_s": settle_s, "call_slots": slots},
        definitions=DEFINITIONS,
        runs=[
            {
                "summary": {
                    kind: {
                        key: None
                        if v is None
                        else {"n": v.n, "mean": round(v.mean, 3), "max": round(v.max, 3)}
                        for key, v in by_key.items()
                    }
                    for kind, by_key in s.items()
                },
                "ratio_uss": ratio(s["call"]["uss_mib"], s["bare"]["uss_mib"]),
                "ratio_cpu": ratio(s["call"]["cpu_percent"], s["bare"]["cpu_percent"]),
                "per_actor": [r.to_json() for r in readings],
            }
        ],
        table=table(readings, calls, window_s),
        ok=ok,
    )


async def run(settings: Settings, options: BenchOptions, out: TextIO) -> BenchResult:
    return await run_density(settings, options.calls or DEFAULT_CALLS, out)


BENCHMARK = Benchmark(name=NAME, default_calls=DEFAULT_CALLS, run=run)
