"""CallActor: owns one ACS call connection — live state and audio in memory, conversation
checkpointed to Redis under an epoch fence, transcript archived when the call ends.

A plain class (Ray options live in activation.py). Nothing on the per-frame path awaits Redis or
the archive; frames only touch the in-memory rings, queues and counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np

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
from actors.audio_ring import ParticipantRings
from actors.call_state import CallEnded, CallState, event_name
from actors.config import FRAME_MS, CallActorConfig
from actors.metrics import LiveMetrics, RayMetricsExporter, frame_latency_s
from actors.outbound_audio import OutboundQueue, Pacer
from actors.responder import Responder, make_responder
from actors.speaker import AcsPlaySpeaker, PcmSpeaker, Speaker
from actors.stream_server import ServerConnection, StreamServer
from storage.archive import ArchiveStore, open_archive
from storage.archiver import Archiver, process_spool_path
from storage.conversation import ConversationManager
from storage.errors import (
    PayloadTooLargeError,
    RedisUnavailableError,
    SerializationError,
    StaleEpochError,
    StorageError,
)
from storage.keys import validate_identifier
from storage.profiles import ProfileRepository
from storage.redis_manager import AffinityRecord, AsyncAzureRedisManager, Endpoint

log = logging.getLogger(__name__)

T = TypeVar("T")

BARGE_IN_RMS = 500.0  # int16 RMS above which an inbound frame counts as caller speech
BARGE_IN_FRAMES = 3  # consecutive loud frames (60 ms) before playback is stopped
EXIT_GRACE_S = 0.5
SESSION_KEY = "actor"  # this actor's part of the call session
PLAY_DONE_EVENTS = frozenset({"PlayCompleted", "PlayFailed", "PlayCanceled"})


def _caller_id(incoming: dict[str, Any]) -> str | None:
    """The profile lookup id: E.164 number or ACS user id (``caller_id`` or ``caller.raw_id``)."""
    value = incoming.get("caller_id")
    if not isinstance(value, str) or not value:
        caller = incoming.get("caller")
        raw = caller.get("raw_id") if isinstance(caller, dict) else None
        if not isinstance(raw, str) or not raw:
            return None
        value = raw[2:] if raw.startswith("4:") else raw
    return value


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def _in_ray_actor() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


class CallActor:
    def __init__(self, call_id: str, config: CallActorConfig) -> None:
        self.call_id = validate_identifier(call_id, "call id")
        self.config = config
        self.state = CallState(call_id, created_at=time.time())
        self.metrics = LiveMetrics()
        self._ready_at = float("inf")  # when the stream endpoint opened (epoch seconds)
        self.rings = ParticipantRings(
            capacity=int(config.ring_seconds * config.sample_rate),
            max_participants=config.max_participants,
        )
        self.outbound = OutboundQueue(
            config.frame_bytes, max_frames=int(config.outbound_max_seconds * 1000 / FRAME_MS)
        )
        self.responder: Responder = make_responder(config.responder)
        self.epoch = 0
        self.incoming: dict[str, Any] = {}
        self.restarts = 0
        self.dtmf: list[str] = []
        self.audit: list[dict[str, Any]] = []
        self._token = secrets.token_urlsafe(24)
        self._redis: AsyncAzureRedisManager | None = None
        self._archive: ArchiveStore | None = None
        self._archiver: Archiver | None = None
        self._cm: ConversationManager | None = None
        self._server: StreamServer | None = None
        self._speaker: Speaker | None = None
        self._pacer: Pacer | None = None
        self._exporter: RayMetricsExporter | None = None
        self._endpoint: Endpoint | None = None
        self._node_id = ""
        self._media: list[ServerConnection] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._activation_lock = asyncio.Lock()
        self._turn_lock = asyncio.Lock()
        self._ending: asyncio.Task[None] | None = None
        self._accepting_turns = True  # False once the end of call has taken the last turn
        self._session_dirty = False
        self._loud_frames = 0
        self._last_activity = time.monotonic()
        self.finished = asyncio.Event()

    def __repr__(self) -> str:
        return f"CallActor(call={self.call_id}, state={self.state.status.value})"

    # -- activation ---------------------------------------------------------------------------

    async def activate(self, incoming: dict[str, Any] | None = None) -> Endpoint:
        """Claim the call (new epoch), reload its conversation, open the stream endpoint.

        Idempotent: later calls return the same endpoint. CallEnded for a call that is over.
        """
        async with self._activation_lock:
            if self._endpoint is not None:
                return self._endpoint
            if self._ending is not None:
                raise CallEnded(self.call_id)
            try:
                return await self._activate(incoming or {})
            except BaseException:
                self._endpoint = None
                for task in self._loops:
                    task.cancel()
                self._loops.clear()
                await self._release_resources()
                raise

    async def _activate(self, incoming: dict[str, Any]) -> Endpoint:
        cfg = self.config
        redis = self._redis = AsyncAzureRedisManager.from_settings(cfg.storage)
        archive = self._archive = open_archive(cfg.storage)
        self._archiver = Archiver(archive, redis, spool_path=process_spool_path(cfg.storage))
        # The call session holds the gateway's fields (the IncomingCall) at the top level and
        # this actor's own state under "actor" once an actor has run for the call.
        session = await redis.load_call_session(self.call_id) or {}
        found = session.get(SESSION_KEY)
        mine: dict[str, Any] = found if isinstance(found, dict) else {}
        restart = bool(mine)
        if mine.get("ended"):
            raise CallEnded(self.call_id)
        cm = self._cm = await ConversationManager.from_redis(self.call_id, redis)
        self.epoch = await cm.claim_epoch()
        self.incoming = {k: v for k, v in session.items() if k != SESSION_KEY}
        if restart:  # this process replaces a dead one
            self.restarts = int(mine.get("restarts", 0)) + 1
            self.state = CallState.from_dict(mine["state"])
            self.dtmf = list(mine.get("dtmf") or [])
            self.audit = list(mine.get("audit") or [])
        if incoming:
            self.incoming = dict(incoming)
        await self._load_caller(cm)
        self._node_id = self._ray_node_id()
        await self._open_endpoint()
        self._ready_at = time.time()
        self._speaker = self._make_speaker(redis)
        self._audit("restarted" if restart else "activated", epoch=self.epoch)
        await self._store_session()
        await self.checkpoint()
        self._start_loops()
        assert self._endpoint is not None
        log.info("%r activated at epoch %d", self, self.epoch)
        return self._endpoint

    async def _load_caller(self, cm: ConversationManager) -> None:
        """Caller profile into the context, once per call (a restart finds it already there)."""
        if "caller" in cm.context:
            return
        assert self._archive is not None and self._redis is not None
        caller_id = _caller_id(self.incoming)
        profile: dict[str, Any] | None = None
        if caller_id:
            try:
                profile = await ProfileRepository(self._archive, self._redis).get(caller_id)
            except StorageError as exc:  # the call goes on without personalisation
                log.warning("profile lookup failed: %s", type(exc).__name__)
        await cm.update_context(
            {
                "call_id": self.call_id,
                "caller": {
                    "id": caller_id,
                    "display_name": self.incoming.get("caller_display_name") or None,
                },
                "profile": profile,
            }
        )

    async def _open_endpoint(self) -> None:
        cfg = self.config
        assert self._redis is not None
        self._server = StreamServer(
            self,
            call_id=self.call_id,
            token=self._token,
            host=cfg.stream_host,
            max_frame_bytes=cfg.max_frame_bytes,
            handshake_timeout_s=cfg.handshake_timeout_s,
        )
        port = await self._server.start()
        host = cfg.advertise_host or cfg.stream_host
        if host in ("0.0.0.0", "::"):
            import ray

            host = ray.util.get_node_ip_address()
        self._endpoint = Endpoint(host, port, self._token, self.epoch)
        if not await self._redis.claim_affinity(self._affinity_record(), lease_s=cfg.lease_s):
            raise StaleEpochError(f"a newer owner holds call {self.call_id}")

    def _affinity_record(self) -> AffinityRecord:
        assert self._endpoint is not None
        return AffinityRecord.of(self.call_id, self._endpoint, self._node_id, time.time())

    def _make_speaker(self, redis: AsyncAzureRedisManager) -> Speaker:
        cfg = self.config
        if cfg.speaker == "acs":
            acs = cfg.settings.acs
            assert acs.endpoint and acs.access_key
            return AcsPlaySpeaker(
                acs.endpoint, acs.access_key.get_secret_value(), self.call_id, voice=cfg.voice
            )
        return PcmSpeaker(
            redis,
            self.outbound,
            voice=cfg.voice,
            audio_format=cfg.audio_format,
            sample_rate=cfg.sample_rate,
        )

    def _ray_node_id(self) -> str:
        if not _in_ray_actor():
            return ""
        import ray

        node_id = str(ray.get_runtime_context().get_node_id())
        self._exporter = RayMetricsExporter(node_id)
        return node_id

    def _start_loops(self) -> None:
        self._pacer = Pacer(self.outbound, self._send_outbound)
        for coro in (
            self._pacer.run(),
            self._heartbeat_loop(),
            self._checkpoint_loop(),
            self._idle_watchdog(),
        ):
            task = asyncio.get_running_loop().create_task(coro)
            task.add_done_callback(self._loop_done)
            self._loops.append(task)

    def _loop_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%r: background loop failed", self, exc_info=task.exception())

    # -- control plane (Ray methods) ----------------------------------------------------------

    async def handle_event(self, event: dict[str, Any]) -> None:
        """One Call Automation CloudEvent (``{"id","type","data"}``); duplicates are ignored."""
        if self._ending is not None:
            return
        if self._endpoint is None:
            await self.activate(None)
        event_id = str(event.get("id") or "")
        if self.state.seen(event_id):
            self.metrics.duplicate_events += 1
            return
        self.metrics.events += 1
        self._touch()
        event_type = str(event.get("type") or "")
        data = event.get("data")
        name = event_name(event_type)
        if self.state.apply(event_type, data if isinstance(data, dict) else {}, time.time()):
            if name in ("CallConnected", "CallDisconnected"):
                self._audit(name)
            await self._store_session()  # control events are rare: a restart must see them
        if name in PLAY_DONE_EVENTS and self._speaker is not None:
            self._speaker.play_finished()
        if name == "CallDisconnected":
            self._end_call("disconnected")

    async def info(self) -> dict[str, Any]:
        self._sync_metrics()
        cm = self._cm
        return {
            "call_id": self.call_id,
            "state": self.state.status.value,
            "epoch": self.epoch,
            "restarts": self.restarts,
            "participants": list(self.state.participants),
            "ring_participants": self.rings.participants(),
            "metrics": self.metrics.snapshot(),
            "endpoint": self._endpoint,
            "turns": len(cm.history) if cm else 0,
            "outbound_queued": len(self.outbound),
            "speaking": bool(self._speaker and self._speaker.speaking),
            "context": dict(cm.context) if cm else {},
            "pid": os.getpid(),
            "node_id": self._node_id,
        }

    async def ring_snapshot(self, participant: str | None = None) -> bytes:
        return self.rings.snapshot_bytes(participant)

    async def checkpoint(self) -> bool:
        """Persist pending turns and context now (one round trip); False if Redis is down."""
        cm = self._cm
        if cm is None or not cm.dirty:
            return True
        started = time.perf_counter()
        try:
            await cm.persist()
        except StaleEpochError:
            self._fenced()
            return False
        except StorageError as exc:
            self.metrics.checkpoint_failures += 1
            if not isinstance(exc, RedisUnavailableError):
                log.warning("%r: checkpoint failed: %s", self, type(exc).__name__)
            return False  # pending turns stay in memory; the loop retries
        self.metrics.checkpoint_done(time.perf_counter() - started)
        return True

    async def shutdown(self, reason: str = "shutdown") -> None:
        """End the call as CallDisconnected does (archive, release), then exit."""
        if self._endpoint is None and self._ending is None and self._cm is None:
            await self.activate(None)
        await asyncio.shield(self._end_call(reason))

    # -- data plane: StreamHandler ------------------------------------------------------------

    def on_open(self, conn: ServerConnection) -> None:
        self.metrics.connections += 1
        self._touch()
        if conn.stream == "media":
            self._media.append(conn)

    def on_close(self, conn: ServerConnection) -> None:
        if conn in self._media:
            self._media.remove(conn)

    def on_refused(self, reason: str) -> None:
        self.metrics.protocol_errors[reason] += 1

    def on_message(self, conn: ServerConnection, payload: bytes) -> None:
        self._touch()
        cfg = self.config
        try:
            msg = parse_message(
                payload,
                frame_bytes=cfg.frame_bytes,
                sample_rate=cfg.sample_rate,
                max_bytes=cfg.max_message_bytes,
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
            self._session_dirty = True
        # AudioMetadata: the parser checked it against the negotiated format; nothing to change.

    def _on_audio(self, msg: AudioData) -> None:
        self.metrics.frames_in += 1
        now = time.time()
        latency = frame_latency_s(msg.timestamp, now)
        if latency is not None:
            self.metrics.frame_seen(latency, captured_before_ready=now - latency < self._ready_at)
        overwritten = self.rings.write(msg.participant, msg.pcm)
        if overwritten < 0:
            self.metrics.frames_dropped += 1
        elif overwritten:
            frames = -(-overwritten * 2 // self.config.frame_bytes)
            self.metrics.ring_overwritten_frames += frames
        speaking = self._speaker is not None and self._speaker.speaking
        if speaking and not msg.silent and _rms(msg.pcm) >= BARGE_IN_RMS:
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
        self._session_dirty = True

    def _on_transcription(self, msg: TranscriptionData) -> None:
        if msg.truncated:
            self.metrics.transcripts_truncated += 1
        if not msg.text.strip():
            return
        if self._speaker is not None and self._speaker.speaking:
            self._barge_in()
        if msg.final:
            self._spawn(self._user_turn(msg))

    def _barge_in(self) -> None:
        """Caller speech during playback: drop queued audio now, tell ACS to flush its queue."""
        self._loud_frames = 0
        self.metrics.barge_ins += 1
        self.outbound.clear()
        self._spawn(self._stop_playback())

    async def _stop_playback(self) -> None:
        if self._speaker is not None:
            try:
                await self._speaker.stop()
            except Exception as exc:  # an ACS REST failure must not break the call
                log.warning("stopping playback failed: %s", type(exc).__name__)
        text = stop_audio()
        for conn in list(self._media):
            await conn.send_acs(text)

    async def _send_outbound(self, frame: bytes) -> bool:
        conn = self._media[-1] if self._media else None
        if conn is None or not await conn.send_acs(outbound_audio(frame)):
            self.metrics.frames_dropped += 1
            return False
        return True

    # -- conversation -------------------------------------------------------------------------

    async def _user_turn(self, msg: TranscriptionData) -> None:
        async with self._turn_lock:  # FIFO: turns keep the order they were heard in
            cm = self._cm
            if cm is None or not self._accepting_turns:
                return
            await cm.append_to_history(
                "user",
                msg.text,
                participant=msg.participant,
                confidence=msg.confidence,
                offset_ticks=msg.offset,
                duration_ticks=msg.duration,
            )
            self.metrics.turns += 1
            await self.checkpoint()
            reply = await self.responder.respond(dict(cm.context), cm.history)
            if not reply:
                return
            await cm.append_to_history("assistant", reply, participant=None)
            self.metrics.turns += 1
            await self.checkpoint()
            if self._speaker is not None:
                try:
                    await self._speaker.speak(reply)
                except Exception as exc:  # the turn is recorded even if playback fails
                    log.warning("speaking failed: %s", type(exc).__name__)

    # -- background loops ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        assert self._redis is not None and self._endpoint is not None
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            try:
                if await self._redis.renew_affinity(
                    self.call_id, self.epoch, lease_s=self.config.lease_s
                ):
                    continue
                current = await self._redis.get_affinity(self.call_id)
                if current is not None and current.epoch > self.epoch:
                    self._fenced()
                    return
                # The lease lapsed (a Redis outage, or a restart that lost every key): claim it
                # again, and rewrite the session the gateway needs to accept new sockets.
                record = self._affinity_record()
                await self._redis.claim_affinity(record, lease_s=self.config.lease_s)
                await self._store_session()
            except RedisUnavailableError:
                log.info("heartbeat: redis unavailable; serving from memory")
            except StorageError as exc:
                self._storage_failed("heartbeat", exc)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_interval_s)
            await self.checkpoint()
            if self._session_dirty:
                await self._store_session()
            self._sync_metrics()
            if self._exporter is not None:
                self._exporter.flush(self.metrics, self.state.status.value)

    async def _idle_watchdog(self) -> None:
        timeout = self.config.idle_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            if len(self.outbound):
                self._touch()  # still talking to the caller
            if time.monotonic() - self._last_activity > timeout:
                self._audit("idle_timeout")
                self._end_call("idle")
                return

    # -- end of call --------------------------------------------------------------------------

    def _end_call(self, reason: str) -> asyncio.Task[None]:
        if self._ending is None:
            self._ending = asyncio.get_running_loop().create_task(self._finish(reason))
        return self._ending

    async def _finish(self, reason: str) -> None:
        try:
            await self._archive_call(reason)
        except Exception:
            log.exception("%r: end of call failed", self)
        finally:
            await self._mark_ended()
            await self._release_resources()
            self.finished.set()
            self._exit_soon()

    async def _drain_streams(self) -> None:
        """Read on until the gateway closes the streams (it does when ACS closes its sockets)."""
        server = self._server
        if server is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.end_drain_s):
                while server.connections:
                    await asyncio.sleep(0.05)

    async def _archive_call(self, reason: str) -> None:
        now = time.time()
        self.state.disconnect(now)
        self._audit("ended", reason=reason)
        if reason == "disconnected":
            await self._drain_streams()
        if self._server is not None:
            await self._server.close()
        await asyncio.sleep(0)  # turns spawned by the last messages reach the turn lock first
        async with self._turn_lock:  # FIFO: every turn already heard is recorded before this
            self._accepting_turns = False
        current = asyncio.current_task()
        for task in [*self._loops, *self._tasks]:
            if task is not current:
                task.cancel()
        self._sync_metrics()
        for delay in (0.0, 0.2, 0.5):  # best effort: the archive below has every turn anyway
            await asyncio.sleep(delay)
            if await self.checkpoint():
                break
        cm, archiver, redis = self._cm, self._archiver, self._redis
        assert cm is not None and archiver is not None and redis is not None
        turns = [t.to_dict() for t in cm.history]
        started = self.state.connected_at or self.state.created_at
        metrics = self.metrics.snapshot()
        metadata = {
            "caller": cm.context.get("caller"),
            "incoming": self.incoming,
            "participants": [p.to_dict() for p in self.state.participants.values()],
            "epoch": self.epoch,
            "restarts": self.restarts,
            "dtmf": self.dtmf,
            "audio_format": self.config.audio_format,
        }
        transcript = {
            "call_id": self.call_id,
            "started_at": started,
            "ended_at": now,
            "end_reason": reason,
            "turns": turns,
            "metadata": metadata,
            "metrics": metrics,
        }
        destination = await self._guarded("transcript", archiver.submit_transcript(transcript))
        summary = {
            "call_id": self.call_id,
            "started_at": started,
            "ended_at": now,
            "duration_s": round(now - started, 3),
            "end_reason": reason,
            "turns": len(turns),
            "caller_id": (cm.context.get("caller") or {}).get("id"),
            "archived_to": str(destination) if destination is not None else "failed",
        }
        await self._guarded("summary", redis.set_call_summary(self.call_id, summary))
        analytics = {
            "id": f"{self.call_id}-analytics",
            **summary,
            "user_turns": sum(1 for t in turns if t["role"] == "user"),
            "assistant_turns": sum(1 for t in turns if t["role"] == "assistant"),
            "metrics": metrics,
        }
        await self._guarded("analytics", archiver.submit("analytics", analytics))
        for entry in self.audit:
            await self._guarded("audit", archiver.submit("audit", entry))
        log.info("%r archived (%s) to %s", self, reason, destination)

    async def _mark_ended(self) -> None:
        """Whatever happened to the archive: the session says ended, the lease is released, so
        the call can neither be activated again nor keep the gateway routing to this process."""
        await self._store_session(ended=True)
        if self._redis is not None:
            release = self._redis.release_affinity(self.call_id, self.epoch)
            await self._guarded("release_affinity", release)

    def _fenced(self) -> None:
        """A newer epoch owns the call: this instance is a zombie and must stop writing."""
        log.warning("%r fenced by a newer epoch; exiting without archiving", self)
        if self._ending is None:
            self._ending = asyncio.get_running_loop().create_task(self._exit_fenced())

    async def _exit_fenced(self) -> None:
        for task in self._loops:
            task.cancel()
        await self._release_resources()
        self.finished.set()
        self._exit_soon()

    async def _release_resources(self) -> None:
        if self._server is not None:
            await self._server.close()
        if self._speaker is not None:
            with contextlib.suppress(Exception):
                await self._speaker.close()
        if self._archive is not None:
            with contextlib.suppress(Exception):
                await self._archive.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.close()

    def _exit_soon(self) -> None:
        """Exit the Ray actor after a grace period, so that a ``shutdown`` awaiting the end of
        the call gets its reply before the process goes (an exit fails running methods)."""
        if _in_ray_actor():
            asyncio.get_running_loop().call_later(EXIT_GRACE_S, self._exit)

    def _exit(self) -> None:
        import ray

        # Marks the actor to exit once running methods return; the exception it raises only
        # concerns this task.
        with contextlib.suppress(ray.exceptions.AsyncioActorExit):
            ray.actor.exit_actor()

    # -- helpers ------------------------------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _audit(self, action: str, **details: Any) -> None:
        n = len(self.audit) + 1
        self.audit.append(
            {
                "id": f"{self.call_id}-e{self.epoch}-{n}-{action}",
                "call_id": self.call_id,
                "action": action,
                "at": time.time(),
                "epoch": self.epoch,
                **details,
            }
        )
        self._session_dirty = True

    def _sync_metrics(self) -> None:
        """Copy the counters kept by the pacer and the speaker into the live metrics."""
        if self._pacer is not None:
            self.metrics.frames_out = self._pacer.frames_sent
            self.metrics.frames_late = self._pacer.frames_late
        if isinstance(self._speaker, PcmSpeaker):
            self.metrics.tts_hits = self._speaker.hits
            self.metrics.tts_misses = self._speaker.misses

    def _session(self, *, ended: bool) -> dict[str, Any]:
        return {
            **self.incoming,
            "call_id": self.call_id,
            SESSION_KEY: {
                "epoch": self.epoch,
                "restarts": self.restarts,
                "state": self.state.to_dict(),
                "dtmf": self.dtmf,
                "audit": self.audit,
                "ended": ended,
            },
        }

    def _core_session(self, *, ended: bool) -> dict[str, Any]:
        """What a restart and the end mark need, without the parts whose size others decide
        (the IncomingCall, participants, tones, audit): stored when the whole session cannot be."""
        return {
            "call_id": self.call_id,
            SESSION_KEY: {
                "epoch": self.epoch,
                "restarts": self.restarts,
                "state": self.state.to_dict() | {"participants": []},
                "ended": ended,
            },
        }

    async def _store_session(self, *, ended: bool = False) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.store_call_session(self.call_id, self._session(ended=ended))
        except (PayloadTooLargeError, SerializationError) as exc:
            self._storage_failed("store_session", exc)
            await self._store_core_session(ended=ended)
        except StorageError as exc:
            self._storage_failed("store_session", exc)
        else:
            self._session_dirty = False

    async def _store_core_session(self, *, ended: bool) -> None:
        assert self._redis is not None
        try:
            await self._redis.store_call_session(self.call_id, self._core_session(ended=ended))
        except StorageError as exc:
            self._storage_failed("store_core_session", exc)
        else:
            # Retried when the session changes: as it is, the whole of it would fail again.
            self._session_dirty = False

    async def _guarded(self, step: str, op: Awaitable[T]) -> T | None:
        """Await one storage step of the call; a failure is counted and logged, never raised."""
        try:
            return await op
        except StorageError as exc:
            self._storage_failed(step, exc)
            return None

    def _storage_failed(self, step: str, exc: StorageError) -> None:
        self.metrics.storage_failures[step] += 1
        # The type only: storage messages may quote the data they refused.
        log.warning("%r: %s failed: %s", self, step, type(exc).__name__)
