"""ACS's end of one media WebSocket: AudioMetadata and AudioData out, outbound audio played back.

Sends what it is handed (pacing is the caller's job) and plays outbound audio at real time into a
``Playout``; never decides what the caller says.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from websockets.exceptions import ConnectionClosed

from simulator import wire
from simulator.acs_socket import AcsSocket
from simulator.audio import FRAME_MS, AudioFormat
from simulator.pacing import Pacer
from simulator.playout import Playout
from simulator.wire import CallIds, MalformedOutbound, OutboundStop, parse_outbound


class MediaSession(AcsSocket):
    def __init__(
        self,
        url: str,
        ids: CallIds,
        fmt: AudioFormat,
        playout: Playout,
        *,
        subscription_id: str,
        realtime: bool = True,
    ) -> None:
        super().__init__(url, ids)
        self.fmt = fmt
        self.playout = playout
        self.subscription_id = subscription_id
        self.realtime = realtime
        self.outbound_messages = 0
        self.stop_audio = 0
        self.malformed_outbound: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._audio_arrived = asyncio.Event()

    async def connect(self, token: str | None) -> None:
        """Open the socket (raises ``SocketRejected``), send AudioMetadata, start listening."""
        await self._open(token)
        self._tasks = [asyncio.create_task(self._receive())]
        if self.realtime:
            self._tasks.append(asyncio.create_task(self._play_out()))
        await self.send_json(
            wire.audio_metadata(self.subscription_id, self.fmt.sample_rate, self.fmt.frame_bytes)
        )

    async def send_json(self, message: wire.Json) -> bool:
        return await self.send_raw(orjson.dumps(message).decode())

    async def send_raw(self, message: str | bytes) -> bool:
        """Send one message; ``False`` once the gateway has closed the socket."""
        if self._ws is None:
            return False
        try:
            await self._ws.send(message)
        except ConnectionClosed:
            return False
        return True

    async def send_frame(
        self, pcm: bytes, timestamp: str, participant: str | None, silent: bool
    ) -> bool:
        return await self.send_json(wire.audio_data(pcm, timestamp, participant, silent))

    async def send_dtmf(self, tone: str) -> bool:
        return await self.send_json(wire.dtmf_data(tone))

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                self.outbound_messages += 1
                try:
                    parsed = parse_outbound(message)
                except MalformedOutbound as exc:
                    self.malformed_outbound.append(exc.reason)
                    continue
                if isinstance(parsed, OutboundStop):
                    self.stop_audio += 1
                    self.playout.clear()
                else:
                    self.playout.enqueue(parsed.pcm)
                    if not self.realtime:
                        self.playout.play_all()
                    self._audio_arrived.set()
        except ConnectionClosed:
            pass

    async def _play_out(self) -> None:
        """One frame's worth of queued audio per 20 ms, like a loudspeaker."""
        while True:
            if not self.playout.pending_bytes:
                self._audio_arrived.clear()
                await self._audio_arrived.wait()
            pacer = Pacer(FRAME_MS / 1000)  # restart the clock at each burst of speech
            while self.playout.pending_bytes:
                await pacer.wait()
                self.playout.play(self.fmt.frame_bytes)

    async def drain(self, timeout_s: float) -> None:
        """Let queued outbound audio finish playing (bounded), e.g. before the caller hangs up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.playout.pending_bytes and self.open:
                    await asyncio.sleep(FRAME_MS / 1000)

    async def abort(self) -> None:
        """Drop the connection without a closing handshake (a network failure, not a hang-up)."""
        if self._ws is not None:
            self._ws.transport.abort()
        await self._stop_tasks()

    async def close(self) -> None:
        await self._close_ws()
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
