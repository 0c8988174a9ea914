"""``rtvoice bench archive``: CallDisconnected -> the call's transcript readable in the archive,
on the embedded SQLite store and on the Cosmos emulator.

Real ``CallActor``s on local Ray (cold, all activated first). Then, one call at a time: its
media and transcription streams connect, one final transcription line goes over the stream
and the actor records it (user turn and reply), ``CallDisconnected`` is delivered to the
actor as the gateway does (``handle_event``), the streams are closed right after it as the
gateway does when ACS closes its sockets, and the benchmark polls the archive
(``storage.archive.open_archive``) until the transcript is there. The actor reads on until the
streams close (at most ``end_drain_s``, 2 s), then checkpoints and archives. The Cosmos
emulator (``@vercel/cosmosdb-server`` from tests/cosmos_emulator) is skipped, with a note, when
it is not installed. Only ``run_archive`` starts anything; the records and table are plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from actors.activation import forget_actor
from actors.config import CallActorConfig
from actors.stream_client import open_stream
from bench.local_ray import activate_calls, local_ray, private_actor_config
from bench.results import Benchmark, BenchOptions, BenchResult, Spread, format_table, spread
from simulator.devstack.local_redis import (
    free_port,
    stop_process,
    wait_until_serving,
)
from simulator.wire import transcription_data
from storage.archive import ArchiveStore, open_archive
from storage.settings import Settings

NAME = "archive"
DEFAULT_CALLS = 20  # per store
POLL_S = 0.002  # archive polled this often for the transcript
READABLE_TIMEOUT_S = 30.0
TURNS_TIMEOUT_S = 20.0
TARGET_P99_MS = 100.0  # embedded store
# Between two calls: the ended call's actor exits and Ray reaps its worker process (and starts
# idle ones); without a gap that CPU lands on the next call's measurement on a small machine.
GAP_S = 1.0
CALLER = "+14255550177"
LINE = "That is all, thank you. Goodbye."

EMULATOR_DIR = Path(__file__).resolve().parent.parent / "tests" / "cosmos_emulator"
EMULATOR_BIN = EMULATOR_DIR / "node_modules" / ".bin" / "cosmosdb-server"
# The emulator accepts any key; the SDK only needs valid base64.
EMULATOR_KEY = "dGVzdC1rZXktZm9yLXRoZS1sb2NhbC1jb3Ntb3MtZW11bGF0b3I="

SQLITE = "sqlite"
COSMOS = "cosmos"
STORE_LABELS = {SQLITE: "embedded SQLite", COSMOS: "Cosmos emulator"}

DEFINITIONS = {
    "disconnected -> readable": (
        "handle_event(CallDisconnected) sent to the call's actor -> its transcript first read "
        f"back whole from the archive by the benchmark (polled every {POLL_S * 1000:.0f} ms); "
        "includes the actor waiting for the gateway to close the streams, which the benchmark "
        "does right after the event is delivered, its last checkpoint and the archive write"
    ),
    "event delivered": "the handle_event Ray call returned (the actor took the event)",
    "streams closed": "both stream connections closed by the benchmark (the gateway's part)",
    "calls": (
        f"one at a time, {GAP_S:g} s apart (the previous actor's exit settles), each actor "
        "activated (cold) before the first call ends"
    ),
}


@contextlib.contextmanager
def cosmos_emulator(port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """``@vercel/cosmosdb-server`` over HTTPS (self-signed), data in memory; its endpoint."""
    import socket
    import ssl

    port = port or free_port()
    proc = subprocess.Popen(
        [str(EMULATOR_BIN), "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def handshake() -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the local emulator's self-signed certificate only
        with (
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
            ctx.wrap_socket(raw),
        ):
            return True

    try:
        wait_until_serving(proc, handshake, timeout, "cosmosdb-server")
        yield f"https://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@dataclass(slots=True)
class CallEnd:
    call_id: str
    event_ms: float | None = None
    closed_ms: float | None = None
    readable_ms: float | None = None
    turns: int | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "call_id": self.call_id,
            "event_ms": r(self.event_ms),
            "streams_closed_ms": r(self.closed_ms),
            "readable_ms": r(self.readable_ms),
            "turns_archived": self.turns,
            "error": self.error,
        }


@dataclass(slots=True)
class StoreRun:
    store: str
    calls: int
    ends: list[CallEnd] = field(default_factory=list)
    note: str = ""  # why it was not measured

    @property
    def measured(self) -> int:
        return sum(e.readable_ms is not None for e in self.ends)

    @property
    def status(self) -> str:
        if self.note:
            return "skipped"
        return "ok" if self.measured == self.calls else "calls_failed"

    def spreads(self) -> dict[str, Spread | None]:
        def values(name: str) -> list[float]:
            return [v for e in self.ends if (v := getattr(e, name)) is not None]

        return {name: spread(values(name)) for name in ("readable_ms", "event_ms", "closed_ms")}

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "label": STORE_LABELS[self.store],
            "status": self.status,
            "note": self.note,
            "calls": self.calls,
            "measured": self.measured,
            "summary_ms": {
                k: None if v is None else v.to_json(3) for k, v in self.spreads().items()
            },
            "per_call": [e.to_json() for e in self.ends],
        }


def table(runs: list[StoreRun]) -> str:
    header = ["ms: p50 / p99 / max", *(STORE_LABELS[r.store] for r in runs)]
    rows = [["calls archived, read back", *(r.note or f"{r.measured}/{r.calls}" for r in runs)]]
    for title, key in (
        ("CallDisconnected -> transcript readable", "readable_ms"),
        ("CallDisconnected -> event delivered", "event_ms"),
        ("CallDisconnected -> streams closed", "closed_ms"),
    ):
        row = [title]
        for r in runs:
            value = r.spreads()[key]
            row.append("-" if value is None else value.cells(".1f"))
        rows.append(row)
    lines = [format_table(header, rows)]
    for r in runs:
        if r.store == SQLITE and (value := r.spreads()["readable_ms"]) is not None:
            met = "met" if value.p99 < TARGET_P99_MS and r.status == "ok" else "NOT met"
            lines.append(
                f"  target: p99 under {TARGET_P99_MS:.0f} ms on the embedded store: {met} "
                f"({value.p99:.1f} ms)"
            )
    return "\n".join(lines)


async def _wait_turns(handle: Any, n: int) -> int:
    async with asyncio.timeout(TURNS_TIMEOUT_S):
        while True:
            turns = int((await handle.info.remote())["turns"])
            if turns >= n:
                return turns
            await asyncio.sleep(0.02)


async def _end_one(handle: Any, endpoint: Any, call_id: str, store: ArchiveStore) -> CallEnd:
    end = CallEnd(call_id)
    media = await open_stream(endpoint.host, endpoint.port, endpoint.token, call_id, "media")
    text = await open_stream(endpoint.host, endpoint.port, endpoint.token, call_id, "transcription")
    await text.send_acs(orjson.dumps(transcription_data(LINE, 0.0, 1.0, "4:" + CALLER, final=True)))
    await _wait_turns(handle, 2)  # the caller's line and the reply, checkpointed
    event = {"id": uuid.uuid4().hex, "type": "Microsoft.Communication.CallDisconnected", "data": {}}
    started = time.perf_counter()
    await handle.handle_event.remote(event)
    end.event_ms = (time.perf_counter() - started) * 1000.0
    await media.close()
    await text.close()
    end.closed_ms = (time.perf_counter() - started) * 1000.0
    async with asyncio.timeout(READABLE_TIMEOUT_S):
        while (doc := await store.get_transcript(call_id)) is None:
            await asyncio.sleep(POLL_S)
    end.readable_ms = (time.perf_counter() - started) * 1000.0
    end.turns = len(doc.get("turns") or [])
    return end


async def run_store(
    base: CallActorConfig,
    store: str,
    calls: int,
    out: TextIO,
    cosmos_endpoint: str | None,
    gap_s: float = GAP_S,
) -> StoreRun:
    run = StoreRun(store, calls)
    config = base
    if store == COSMOS:
        assert cosmos_endpoint is not None
        config = base.with_changes(
            cosmos_endpoint=cosmos_endpoint,
            cosmos_key=EMULATOR_KEY,
            cosmos_verify_tls=False,
            cosmos_database=f"bench{uuid.uuid4().hex[:8]}",
        )
    async with open_archive(config.storage) as reader:
        await reader.get_transcript("bench-warm-up")  # the reader's own connection and database
        out.write(f"archive [{STORE_LABELS[store]}]: activating {calls} call actors\n")
        out.flush()
        begun = time.monotonic()
        activated = await activate_calls(config, "archive", calls, CALLER)
        out.write(f"  activated in {time.monotonic() - begun:.1f} s; ending calls one by one\n")
        out.flush()
        for i, (call_id, got) in enumerate(activated.items()):
            if isinstance(got, BaseException):
                run.ends.append(CallEnd(call_id, error=f"activation: {type(got).__name__}"))
                continue
            handle, endpoint = got
            try:
                run.ends.append(await _end_one(handle, endpoint, call_id, reader))
            except Exception as exc:
                run.ends.append(CallEnd(call_id, error=type(exc).__name__))
                await asyncio.to_thread(forget_actor, handle)
            await asyncio.sleep(gap_s)
            if (i + 1) % 5 == 0 or i + 1 == calls:
                last = run.spreads()["readable_ms"]
                out.write(
                    f"  {i + 1}/{calls} calls ended, readable p50 "
                    f"{last.p50 if last else 0.0:.1f} ms\n"
                )
                out.flush()
    return run


async def run_archive(
    settings: Settings, calls: int, out: TextIO, *, stores: tuple[str, ...] = (SQLITE, COSMOS)
) -> BenchResult:
    if calls < 1:
        raise ValueError("archive needs at least one call")
    started_at = datetime.now(UTC)
    slots = calls + 4
    runs: list[StoreRun] = []
    with (
        local_ray(settings, slots, out, NAME, own_namespace=True) as namespace,
        private_actor_config(settings, namespace, NAME) as base,
    ):
        for store in stores:
            if store == COSMOS and not EMULATOR_BIN.exists():
                note = (
                    "skipped: emulator not installed (make bench, or npm ci in "
                    "tests/cosmos_emulator)"
                )
                out.write(f"archive [{STORE_LABELS[store]}]: {note}\n")
                runs.append(StoreRun(store, calls, note=note))
                continue
            if store == COSMOS:
                try:
                    with cosmos_emulator() as endpoint:
                        runs.append(await run_store(base, store, calls, out, endpoint))
                except RuntimeError as exc:  # the emulator did not start
                    note = f"skipped: emulator did not start ({exc})"
                    out.write(f"archive [{STORE_LABELS[store]}]: {note}\n")
                    runs.append(StoreRun(store, calls, note=note))
            else:
                runs.append(await run_store(base, store, calls, out, None))
    return BenchResult.of_run(
        NAME,
        calls,
        started_at,
        params={
            "calls_per_store": calls,
            "stores": list(stores),
            "end_drain_s": base.end_drain_s,
            "poll_ms": POLL_S * 1000,
            "gap_s": GAP_S,
            "call_slots": slots,
        },
        definitions=DEFINITIONS,
        runs=[r.to_json() for r in runs],
        table=table(runs),
        ok=all(r.status in ("ok", "skipped") for r in runs),
    )


async def run(settings: Settings, options: BenchOptions, out: TextIO) -> BenchResult:
    return await run_archive(settings, options.calls or DEFAULT_CALLS, out)


BENCHMARK = Benchmark(name=NAME, default_calls=DEFAULT_CALLS, run=run)
