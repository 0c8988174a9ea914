"""The floor a call actor is judged against: a bare async Ray actor that reads the same ACS
frames over TCP at real time and writes the same replies, and nothing else.

Each floor actor listens on a loopback port; this process sends it real ACS AudioData JSON
(length-prefixed, 50 frames/s) and reads an outbound AudioData reply for every frame. The
floor's CPU is its process's (``/proc``) over a steady window, like the call actors' in
``data_plane``; the sender's own CPU is not counted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import ray

from actors.acs_media import outbound_audio
from bench.proc_stats import cpu_percent, proc_cpu_s
from simulator.wire import audio_data, iso_time

FRAME_BYTES = 640  # 20 ms of 16 kHz mono PCM16
FRAME_S = 0.02
SETTLE_S = 2.0
_HEADER = struct.Struct(">I")


class _FloorActor:
    """Reads length-prefixed ACS messages, parses each (JSON, base64 audio) and answers each
    with one outbound AudioData message: the per-frame work no call actor can avoid."""

    async def listen(self) -> tuple[int, int]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._server = server  # kept alive with the actor
        return int(server.sockets[0].getsockname()[1]), os.getpid()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                doc = orjson.loads(await reader.readexactly(size))
                pcm = base64.b64decode(doc["audioData"]["data"])
                reply = outbound_audio(pcm).encode()
                writer.write(_HEADER.pack(len(reply)) + reply)
                await writer.drain()
        writer.close()


@dataclass(slots=True)
class FloorRun:
    actors: int
    window_s: float
    cpu_pct: list[float]  # per floor actor, % of one core over the window
    frames: int  # replies read back in the window, all actors

    @property
    def cpu_p50(self) -> float | None:
        ordered = sorted(self.cpu_pct)
        return ordered[len(ordered) // 2] if ordered else None


def _frame(pcm: bytes) -> bytes:
    now = iso_time(datetime.now(UTC))
    body = orjson.dumps(audio_data(pcm, now, "4:+14255550100", silent=False))
    return _HEADER.pack(len(body)) + body


async def _feed(port: int, stop: asyncio.Event, counted: list[int]) -> None:
    """One call's worth of frames at real time until ``stop``; counts the replies read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pcm = bytes(range(256)) * 2 + bytes(FRAME_BYTES - 512)

    async def read_replies() -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                await reader.readexactly(size)
                counted[0] += 1

    replies = asyncio.create_task(read_replies())
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            writer.write(_frame(pcm))
            await writer.drain()
            next_at += FRAME_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        writer.close()
        replies.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await replies


async def measure_floor(actors: int, window_s: float) -> FloorRun:
    """``actors`` floor actors fed one call each; their CPU over ``window_s``."""
    remote: Any = ray.remote(num_cpus=0)(_FloorActor)
    handles = [remote.remote() for _ in range(actors)]
    try:
        endpoints = await asyncio.gather(*(h.listen.remote() for h in handles))
        stop = asyncio.Event()
        counted = [0]
        feeds = [asyncio.create_task(_feed(port, stop, counted)) for port, _ in endpoints]
        await asyncio.sleep(SETTLE_S)
        pids = [pid for _, pid in endpoints]
        before, frames_before, t0 = [proc_cpu_s(p) for p in pids], counted[0], time.monotonic()
        await asyncio.sleep(window_s)
        after, frames_after, t1 = [proc_cpu_s(p) for p in pids], counted[0], time.monotonic()
        stop.set()
        await asyncio.gather(*feeds, return_exceptions=True)
    finally:
        for handle in handles:
            ray.kill(handle)
    return FloorRun(
        actors=actors,
        window_s=t1 - t0,
        cpu_pct=[
            pct
            for a, b in zip(before, after, strict=True)
            if (pct := cpu_percent(a, b, t1 - t0)) is not None
        ],
        frames=frames_after - frames_before,
    )
