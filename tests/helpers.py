"""Plain helpers shared by test modules (not a test file: tests import from here, never from
each other). Fixtures live in ``conftest.py``; server helpers in ``servers.py`` and
``fake_gateway.py``."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from actors.pool import WarmPool
from actors.stream_server import ServerConnection, StreamServer
from simulator.service import AcsStandIn
from storage.archive import open_archive
from storage.settings import Settings
from tests.servers import CosmosEmulator

# The per-operation timeout of the shared ``redis_mgr`` fixture (conftest.py).
REDIS_OP_TIMEOUT_S = 1.0


async def eventually(
    check: Callable[[], Awaitable[object] | object],
    timeout: float = 30.0,
    *,
    interval: float = 0.05,
) -> None:
    """Poll ``check()`` (plain or async) until it returns something truthy.

    Fails with ``TimeoutError`` after ``timeout`` seconds.
    """
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)


async def spares_ready(pool: WarmPool, n: int, timeout: float = 60.0) -> None:
    """Wait until the pool holds at least ``n`` spare actors (they start in the background:
    on a busy machine, a test that places calls at once would meet cold starts instead)."""

    async def enough() -> bool:
        return await pool.spare_count() >= n

    await eventually(enough, timeout)


@contextlib.asynccontextmanager
async def http_server(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free loopback port for the block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Recorder:
    """A call actor's stream handler that records what its StreamServer hands it."""

    epoch = 7

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.refused: list[str] = []
        self.open: list[ServerConnection] = []

    def on_open(self, conn: ServerConnection) -> None:
        self.open.append(conn)

    def on_message(self, conn: ServerConnection, payload: bytes) -> None:
        self.messages.append((conn.stream, payload))

    def on_close(self, conn: ServerConnection) -> None:
        self.open.remove(conn)

    def on_refused(self, reason: str) -> None:
        self.refused.append(reason)


def cosmos_settings(emulator: CosmosEmulator, key: str) -> dict[str, str]:
    """Environment for an archive on the emulator, in a database of its own."""
    if not emulator.running:  # a fault test may have stopped it
        emulator.start()
    return {
        "RTVOICE_COSMOS_ENDPOINT": emulator.endpoint,
        "RTVOICE_COSMOS_KEY": key,
        "RTVOICE_COSMOS_VERIFY_TLS": "false",
        "RTVOICE_COSMOS_DATABASE": f"t{uuid.uuid4().hex[:12]}",
    }


def transcript(call_id: str, turns: int, *, text_bytes: int = 40, **meta: Any) -> dict[str, Any]:
    """An archive transcript document with ``turns`` alternating turns of ``text_bytes`` each."""
    body = "é" * (text_bytes // 2)  # non-ASCII: its escaped form is larger than its UTF-8
    return {
        "call_id": call_id,
        "started_at": 1000.0,
        "ended_at": meta.pop("ended_at", 2000.0),
        "turns": [
            {"seq": i + 1, "role": "user" if i % 2 else "assistant", "text": f"{i}:{body}"}
            for i in range(turns)
        ],
        **meta,
    }


def serve_env(acs: AcsStandIn, event_grid_secret: str, redis_url: str, tmp: Path) -> dict[str, str]:
    """What every ``rtvoice serve`` replica of a test is configured with: the ACS stand-in, a
    gateway secret, Redis and a private archive. Callers add Ray, the pool and the rest."""
    return {
        "RTVOICE_REDIS_URL": redis_url,
        "RTVOICE_ACS_ENDPOINT": acs.endpoint,
        "RTVOICE_ACS_ACCESS_KEY": acs.access_key,
        "RTVOICE_ACS_JWT_ISSUER": acs.issuer,
        "RTVOICE_ACS_JWKS_URL": acs.jwks_url,
        "RTVOICE_ACS_AUDIENCE": acs.audience,
        "RTVOICE_EVENTGRID_SECRET": event_grid_secret,
        "RTVOICE_GATEWAY_SECRET": secrets.token_urlsafe(32),
        "RTVOICE_ARCHIVE_PATH": str(tmp / "archive.sqlite3"),
        "RTVOICE_SPOOL_DIR": str(tmp / "spool"),
    }


async def archived_transcript(
    settings: Settings, call_id: str, *, timeout: float = 30.0
) -> dict[str, Any]:
    """The call's archived transcript, once its actor has written it (after the call ends)."""
    async with open_archive(settings.storage) as archive:
        doc: dict[str, Any] | None = None

        async def written() -> bool:
            nonlocal doc
            doc = await archive.get_transcript(call_id)
            return doc is not None

        await eventually(written, timeout=timeout)
    assert doc is not None
    return doc


@contextlib.asynccontextmanager
async def serving(handler: Any, **options: Any) -> AsyncIterator[int]:
    """A StreamServer for ``handler`` on a free loopback port; yields the port."""
    server = StreamServer(handler, **options)
    port = await server.start()
    try:
        yield port
    finally:
        await server.close()
