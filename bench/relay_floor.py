"""The floor of a relay written in Python on this machine, the baseline for the gateway's CPU per
call: a bare relay process on uvloop (an ``asyncio.Protocol`` whose ``data_received`` only writes
to its peer: no WebSocket, no framing, no parsing) between a caller side (this process, as the
load generator is one process) and a far end per call (each its own process, as a call actor
is), 50 messages a second each way per call, each the size of an AudioData message.

Whatever the gateway spends per call above this figure is its own work; this much any relay in
Python pays here, mostly in the write system calls that, on loopback, run the receiver's TCP path
and wake the receiving process. Only ``measure_relay_floor`` starts anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from typing import cast

import uvloop

from bench.frame_floor import FRAME_S
from bench.proc_stats import cpu_percent, proc_cpu_s
from simulator.devstack.local_redis import free_port

MESSAGE = b"x" * 900  # about one AudioData JSON message with 640 bytes of PCM
CONNECT_TIMEOUT_S = 20.0
SETTLE_S = 1.0


class _Pipe(asyncio.Protocol):
    """One side of a relayed pair: whatever arrives goes to the other side's transport."""

    def __init__(self) -> None:
        self.peer: _Pipe | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)


class _Talker(asyncio.Protocol):
    """One end of a call: 50 messages a second from ``offset_s`` on; what arrives is dropped."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s
        self.talking: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        paced = _paced(cast(asyncio.Transport, transport), self.offset_s)
        self.talking = asyncio.get_running_loop().create_task(paced)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.talking is not None:
            self.talking.cancel()


async def _paced(transport: asyncio.Transport, offset_s: float) -> None:
    await asyncio.sleep(offset_s)
    next_at = time.monotonic()
    while not transport.is_closing():
        transport.write(MESSAGE)
        next_at += FRAME_S
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _connect(protocol: asyncio.Protocol, port: int) -> None:
    """Connect ``protocol`` to a loopback port, retrying while the other process starts
    listening."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            await loop.create_connection(lambda: protocol, "127.0.0.1", port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def _relay(port: int, far_ports: list[int]) -> None:
    """The relay process: the i-th connection accepted is piped to the i-th far end."""

    async def serve() -> None:
        accepted: asyncio.Queue[_Pipe] = asyncio.Queue()

        def inbound() -> _Pipe:
            pipe = _Pipe()
            accepted.put_nowait(pipe)
            return pipe

        server = await asyncio.get_running_loop().create_server(inbound, "127.0.0.1", port)
        async with server:
            for far_port in far_ports:
                near = await accepted.get()
                far = _Pipe()
                await _connect(far, far_port)
                near.peer, far.peer = far, near
            await asyncio.Event().wait()

    uvloop.run(serve())


def _far_end(port: int, offset_s: float) -> None:
    """A call's far end (where a call actor would be), in its own process."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Talker(offset_s), "127.0.0.1", port)
        async with server:
            await asyncio.Event().wait()

    uvloop.run(serve())


async def measure_relay_floor(pairs: int, window_s: float) -> float | None:
    """The relay process's CPU per pair, % of one core, over ``window_s``."""
    ctx = multiprocessing.get_context("spawn")  # this process runs Ray's threads: never fork
    far_ports = [free_port() for _ in range(pairs)]
    relay_port = free_port()
    procs = [
        ctx.Process(target=_far_end, args=(port, FRAME_S / 2 + i * FRAME_S / pairs), daemon=True)
        for i, port in enumerate(far_ports)
    ]
    relay = ctx.Process(target=_relay, args=(relay_port, far_ports), daemon=True)
    procs.append(relay)
    for proc in procs:
        proc.start()
    callers: list[_Talker] = []
    try:
        for i in range(pairs):  # the callers' side: one process, as the load generator is
            callers.append(_Talker(i * FRAME_S / pairs))
            await _connect(callers[-1], relay_port)
        await asyncio.sleep(SETTLE_S)
        before, started = proc_cpu_s(relay.pid or 0), time.monotonic()
        await asyncio.sleep(window_s)
        after = proc_cpu_s(relay.pid or 0)
        spent = cpu_percent(before, after, time.monotonic() - started)
        return None if spent is None else spent / pairs
    finally:
        for caller in callers:
            if caller.talking is not None:
                caller.talking.cancel()
        for proc in procs:
            proc.kill()
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.join(5)
