"""The per-frame path of one call: the StreamHandler its stream server calls for every message.

Owns parsing, inbound audio into the rings, frame metrics, barge-in, DTMF (capped), the hand-off
of transcription results and outbound frames to the newest media connection. A plain object the
call actor holds, so that frames never pass through the Ray actor class's wrapped methods; it
never awaits Redis or the archive, and never writes the conversation (final results go to the
actor's ``on_final`` callback).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from actors.acs_media import (
    AudioData,
    DtmfData,
    InvalidMessage,
    TranscriptionData,
    TranscriptionMetadata,
    outbound_audio,
    parse_message,
    stop_audio,
)
from actors.audio_ring import ParticipantRings, pcm16_samples
from actors.config import FRAME_MS, CallActorConfig
from actors.metrics import LiveMetrics, frame_latency_s
from actors.outbound_audio import OutboundQueue
from actors.speaker import Speaker
from actors.stream_server import ServerConnection

log = logging.getLogger(__name__)

BARGE_IN_RMS = 500.0  # int16 RMS above which an inbound frame counts as caller speech
BARGE_IN_FRAMES = 3  # consecutive loud frames (60 ms) before playback is stopped
FRAME_S = FRAME_MS / 1000.0
# ACS sends a frame every 20 ms: frames that arrive faster are a backlog delivered late (held
# while the actor was stopped, starting or behind), said before they arrived, and do not count
# toward barge-in. Up to this much audio ahead of real time is a live stream's jitter.
BACKLOG_ALLOWANCE_S = 0.1
# The most audio ahead of real time the estimate holds: it drains at twice real time, so once
# frames come at their pace again, barge-in by loudness is back within about this long.
BACKLOG_MAX_S = 1.0


def rms(pcm: bytes) -> float:
    samples = pcm16_samples(pcm)
    # hypot is the root of the sum of squares, in C: about 7 us a frame, against 16 in Python.
    return math.hypot(*samples) / math.sqrt(len(samples)) if samples else 0.0


class MediaPath:
    """Inbound ACS messages in, outbound frames out, for one call.

    ``on_final`` receives each final transcription result (the actor makes it a user turn; the
    media path runs it as a task, in arrival order); ``on_session_change`` is called when
    something the call session stores changed (a tone, the transcription metadata). ``clock``
    (monotonic seconds) times the frames' arrival.
    """

    def __init__(
        self,
        config: CallActorConfig,
        metrics: LiveMetrics,
        *,
        on_final: Callable[[TranscriptionData], Coroutine[Any, Any, None]],
        on_session_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.rings = ParticipantRings(
            capacity=int(config.ring_seconds * config.sample_rate),
            max_participants=config.max_participants,
        )
        self.outbound = OutboundQueue(
            config.frame_bytes, max_frames=int(config.outbound_max_seconds * 1000 / FRAME_MS)
        )
        self.speaker: Speaker | None = None  # set once the call is active
        self.epoch = 0  # the owner's epoch, told to each connection in the handshake
        self.ready_at = float("inf")  # when the stream endpoint opened (epoch seconds)
        self.dtmf: list[str] = []
        self.last_activity = time.monotonic()
        self.tasks: set[asyncio.Task[Any]] = set()  # turns and playback stops in flight
        self._on_final = on_final
        self._on_session_change = on_session_change
        self._clock = clock
        # Read once: the config derives them from settings, and every frame needs them.
        self._frame_bytes = config.frame_bytes
        self._sample_rate = config.sample_rate
        self._max_message_bytes = config.max_message_bytes
        self._media: list[ServerConnection] = []  # open media connections, the newest last
        self._loud_frames = 0
        self._arrived = -math.inf  # when the last frame arrived (clock)
        self._ahead_s = 0.0  # seconds of audio that arrived ahead of real time (see BACKLOG_*)

    def touch(self) -> None:
        """Something happened on the call: the idle watchdog starts over."""
        self.last_activity = time.monotonic()

    # -- StreamHandler ------------------------------------------------------------------------

    def on_open(self, conn: ServerConnection) -> None:
        self.metrics.connections += 1
        self.touch()
        if conn.stream == "media":
            self._media.append(conn)

    def on_close(self, conn: ServerConnection) -> None:
        if conn in self._media:
            self._media.remove(conn)

    def on_refused(self, reason: str) -> None:
        self.metrics.protocol_errors[reason] += 1

    def on_message(self, conn: ServerConnection, payload: bytes) -> None:
        self.touch()
        try:
            msg = parse_message(
                payload,
                frame_bytes=self._frame_bytes,
                sample_rate=self._sample_rate,
                max_bytes=self._max_message_bytes,
            )
        except InvalidMessage as exc:
            self.metrics.invalid_messages[exc.reason] += 1
            return
        if isinstance(msg, AudioData):
            self._on_audio(msg)
        elif isinstance(msg, TranscriptionData):
            self._on_transcription(msg)
        elif isinstance(msg, DtmfData):
            self._on_dtmf(msg)
        elif isinstance(msg, TranscriptionMetadata):
            self._on_session_change()
        # AudioMetadata: the parser checked it against the negotiated format; nothing to change.

    # -- inbound ------------------------------------------------------------------------------

    def _on_audio(self, msg: AudioData) -> None:
        self.metrics.frames_in += 1
        now = time.time()
        # ACS's capture time: for the latency metrics only. Its clock is not ours (skewed, or
        # recorded traffic replayed), so what barges in is decided by arrival, below.
        latency = frame_latency_s(msg.timestamp, now)
        if latency is not None:
            self.metrics.frame_seen(latency, captured_before_ready=now - latency < self.ready_at)
        overwritten = self.rings.write(msg.participant, msg.pcm)
        if overwritten < 0:
            self.metrics.frames_dropped += 1
        elif overwritten:
            frames = -(-overwritten * 2 // self._frame_bytes)
            self.metrics.ring_overwritten_frames += frames
        # Each frame adds its 20 ms; the time since the previous frame drains twice its length,
        # so frames at their pace (even two at a time) keep it at a frame or two.
        arrived = self._clock()
        ahead = max(0.0, self._ahead_s - 2.0 * (arrived - self._arrived))
        self._ahead_s = min(ahead + FRAME_S, BACKLOG_MAX_S)
        self._arrived = arrived
        # A backlog (held while the actor started, or queued behind a stall) was said before
        # it arrived, and before a reply that started meanwhile: it does not interrupt it.
        fresh = self._ahead_s <= BACKLOG_ALLOWANCE_S
        speaking = self.speaker is not None and self.speaker.speaking
        if speaking and fresh and not msg.silent and rms(msg.pcm) >= BARGE_IN_RMS:
            self._loud_frames += 1
            if self._loud_frames >= BARGE_IN_FRAMES:
                self._barge_in()
        else:
            self._loud_frames = 0

    def _on_dtmf(self, msg: DtmfData) -> None:
        if len(self.dtmf) >= self.config.max_dtmf_tones:
            # The tones live in the call session, which Redis stores under a size limit.
            self.metrics.invalid_messages["dtmf_limit"] += 1
            return
        self.dtmf.append(msg.data)
        self._on_session_change()

    def _on_transcription(self, msg: TranscriptionData) -> None:
        if msg.truncated:
            self.metrics.transcripts_truncated += 1
        if not msg.text.strip():
            return
        if self.speaker is not None and self.speaker.speaking:
            self._barge_in()
        if msg.final:
            self._spawn(self._on_final(msg))

    def _barge_in(self) -> None:
        """Caller speech during playback: drop queued audio now, tell ACS to flush its queue."""
        self._loud_frames = 0
        self.metrics.barge_ins += 1
        self.outbound.clear()
        self._spawn(self.stop_playback())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- outbound -----------------------------------------------------------------------------

    async def stop_playback(self) -> None:
        if self.speaker is not None:
            try:
                await self.speaker.stop()
            except Exception as exc:  # an ACS REST failure must not break the call
                log.warning("stopping playback failed: %s", type(exc).__name__)
        text = stop_audio()
        for conn in list(self._media):
            await conn.send_acs(text)

    async def send_outbound(self, frame: bytes) -> bool:
        """The pacer's send: one frame to the newest media connection; False (and counted as
        dropped) when there is none or it is gone."""
        conn = self._media[-1] if self._media else None
        if conn is None or not await conn.send_acs(outbound_audio(frame)):
            self.metrics.frames_dropped += 1
            return False
        return True
