"""ACS's end of one transcription WebSocket: TranscriptionMetadata, then scripted results.

Sends only; timing and text come from the caller's script. Never sends audio.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from simulator import wire
from simulator.acs_socket import connect_as_acs
from simulator.wire import CallIds


class TranscriptionSession:
    def __init__(self, url: str, ids: CallIds, *, subscription_id: str, locale: str) -> None:
        self.url = url
        self.ids = ids
        self.subscription_id = subscription_id
        self.locale = locale
        self.results_sent = 0
        self._ws: ClientConnection | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def close_code(self) -> int | None:
        return None if self._ws is None else self._ws.close_code

    async def connect(self, token: str | None) -> None:
        """Open the socket (raises ``SocketRejected``) and send TranscriptionMetadata."""
        self._ws = await connect_as_acs(self.url, self.ids, token)
        self._drain = asyncio.create_task(self._ignore_incoming())
        await self._send(
            wire.transcription_metadata(
                self.subscription_id,
                self.locale,
                self.ids.call_connection_id,
                self.ids.correlation_id,
            )
        )

    async def send_result(
        self, text: str, offset_s: float, duration_s: float, participant: str, final: bool
    ) -> bool:
        sent = await self._send(
            wire.transcription_data(text, offset_s, duration_s, participant, final)
        )
        self.results_sent += sent
        return sent

    async def _send(self, message: wire.Json) -> bool:
        if self._ws is None:
            return False
        try:
            await self._ws.send(orjson.dumps(message).decode())
        except ConnectionClosed:
            return False
        return True

    async def _ignore_incoming(self) -> None:
        # Read so close frames are processed; the gateway has nothing to say on this socket.
        assert self._ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for _ in self._ws:
                pass

    async def wait_closed(self, timeout_s: float) -> bool:
        """Whether the gateway closes the socket within ``timeout_s`` (it should, on a bad token)."""
        if self._ws is None:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ws.wait_closed()
        return self._ws.close_code is not None

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await self._ws.close()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
