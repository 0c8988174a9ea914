"""Helpers that cause real faults for the chaos tests (``tests/test_chaos_*.py``): a TCP proxy
that slows or stalls what a real server says (Redis behind it), or balances connections over
gateway processes the way a load balancer does; and a gateway replica run as its own process
(``rtvoice serve``), so that a test can SIGKILL it.

Not a test file: chaos tests import from here, never from each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from actors.activation import get_call_actor
from simulator import CallerScript, ScriptLine
from simulator.devstack.local_redis import free_port
from simulator.service import AcsStandIn
from storage.settings import Settings
from tests.helpers import archived_transcript, eventually

CHUNK = 65536
LIVE_TIMEOUT_S = 60.0  # generous: the machine is shared and actor processes start cold


def caller(
    number: str, voice: int, lines: list[str], pause_s: float = 0.4, tail_s: float = 0.6
) -> CallerScript:
    """A caller saying ``lines`` with ``pause_s`` after each (the moments a test causes faults)
    and listening ``tail_s`` after the last before hanging up."""
    return CallerScript(
        caller=number,
        voice=voice,
        lines=[ScriptLine(say=text, pause_s=pause_s) for text in lines],
        lead_in_s=0.2,
        tail_s=tail_s,
    )


async def live_call_id(acs: AcsStandIn, script: CallerScript) -> str:
    """The id of the stand-in's call playing ``script``, once a gateway has answered it."""
    found: list[str] = []

    def answered() -> bool:
        found.extend(i for i, call in acs.calls.items() if call.script == script)
        return bool(found)

    await eventually(answered, timeout=LIVE_TIMEOUT_S)
    return found[0]


async def user_turns_heard(call_id: str, namespace: str, n: int) -> bool:
    """True once the call's actor has recorded ``n`` caller turns (each answered but the last)."""
    handle = await asyncio.to_thread(get_call_actor, call_id, namespace)
    if handle is None:
        return False
    return bool((await handle.info.remote())["metrics"]["turns"] >= 2 * n - 1)


async def archived_user_lines(settings: Settings, call_id: str) -> list[str]:
    """The caller's lines in the call's archived transcript, once it is written."""
    doc = await archived_transcript(settings, call_id, timeout=LIVE_TIMEOUT_S)
    return [turn["text"] for turn in doc["turns"] if turn["role"] == "user"]




class TcpProxy:
    """Forwards each connection to the first upstream that accepts it (a load balancer with a
    health check, when there are several). ``reply_delay_s``: every chunk a server sends back
    arrives this much later, in order, up to ``reply_jitter_s`` more at random; ``stall``
    holds every reply for a while (a server busy, as with Redis's ``DEBUG SLEEP``, but only
    for the clients behind this proxy). Requests go through at once, so a request whose reply
    is held past the client's timeout still ran."""

    def __init__(self, upstreams: list[tuple[str, int]], *, seed: int = 0) -> None:
        self.upstreams = upstreams
        self.port = free_port()
        self.reply_delay_s = 0.0
        self.reply_jitter_s = 0.0
        self._random = random.Random(seed)
        self._stalled_until = 0.0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stall(self, seconds: float) -> None:
        self._stalled_until = time.monotonic() + seconds

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for host, port in self.upstreams:
            with contextlib.suppress(OSError):
                return await asyncio.open_connection(host, port)
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        upstream = await self._open_upstream()
        try:
            if upstream is None:
                writer.transport.abort()
                return
            up_reader, up_writer = upstream
            requests = asyncio.create_task(self._pipe(reader, up_writer, delayed=False))
            replies = asyncio.create_task(self._pipe(up_reader, writer, delayed=True))
            try:
                await asyncio.wait({requests, replies}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                requests.cancel()
                replies.cancel()
                # A lost peer (a killed process) is passed on as a reset, not a clean close.
                up_writer.transport.abort()
                writer.transport.abort()
        finally:
            self._pipes.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        due = 0.0
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(CHUNK):
                if delayed:
                    jitter = self._random.uniform(0.0, self.reply_jitter_s)
                    due = max(due, time.monotonic() + self.reply_delay_s + jitter)
                    while (wait := max(due, self._stalled_until) - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()


class GatewayProcess:
    """One gateway replica as its own process (``rtvoice serve``), joined to the test's Ray."""

    def __init__(self, env: Mapping[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, log_path: Path, timeout_s: float = 60.0) -> GatewayProcess:
        rtvoice = Path(sys.executable).with_name("rtvoice")
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(rtvoice), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        async with httpx.AsyncClient(trust_env=False) as http, asyncio.timeout(timeout_s):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rtvoice serve exited {self.proc.returncode}: {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return self
                await asyncio.sleep(0.2)

    async def warm(self, spares: int = 1, timeout_s: float = 60.0) -> None:
        """Until the replica sees ``spares`` spare actors in its pool (its /metrics), as
        `rtvoice demo` waits: on a busy machine, a call placed at once would start a cold actor
        past the activation timeout, and the gateway would hang it up."""
        prefix = "rtvoice_gateway_pool_spares "
        async with httpx.AsyncClient(trust_env=False) as http, asyncio.timeout(timeout_s):
            while True:
                lines = (await http.get(f"{self.url}/metrics")).text.splitlines()
                seen = [float(line[len(prefix) :]) for line in lines if line.startswith(prefix)]
                if seen and seen[0] >= spares:
                    return
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no clean-up, sockets reset, whatever was in flight is lost."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
