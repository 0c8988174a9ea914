"""ACS's end of one transcription WebSocket: TranscriptionMetadata, then scripted results.

Sends only; timing and text come from the caller's script. Never sends audio.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from websockets.exceptions import ConnectionClosed

from simulator import wire
from simulator.acs_socket import AcsSocket
from simulator.wire import CallIds


class TranscriptionSession(AcsSocket):
    def __init__(self, url: str, ids: CallIds, *, subscription_id: str, locale: str) -> None:
        super().__init__(url, ids)
        self.subscription_id = subscription_id
        self.locale = locale
        self.results_sent = 0
        self._drain: asyncio.Task[None] | None = None

    async def connect(self, token: str | None) -> None:
        """Open the socket (raises ``SocketRejected``) and send TranscriptionMetadata."""
        await self._open(token)
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

    async def close(self) -> None:
        await self._close_ws()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
