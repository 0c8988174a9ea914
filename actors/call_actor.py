"""CallActor: owns one ACS call connection's lifecycle — activation, control events, the
background loops, the end of the call and the exit.

A plain class (Ray options live in activation.py) that puts its pieces together: the per-frame
path (media_path.MediaPath, which the stream server calls directly), the affinity lease
(affinity_lease.AffinityLease), the conversation checkpointed to Redis under an epoch fence, and
the session and end-of-call documents (call_documents). Nothing per frame runs in this class's
methods, and none of them awaits Redis or the archive for a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import time
import warnings
from collections.abc import Awaitable
from typing import Any, TypeVar

from actors.acs_media import TranscriptionData
from actors.affinity_lease import AffinityLease
from actors.call_documents import (
    AuditEntry,
    CallSession,
    analytics_record,
    call_session,
    call_summary,
    caller_lookup_id,
    transcript_document,
)
from actors.call_state import CallEnded, CallState, event_name
from actors.config import CallActorConfig
from actors.media_path import MediaPath
from actors.metrics import LiveMetrics, RayMetricsExporter
from actors.outbound_audio import Pacer
from actors.replies import Replies
from actors.responder import Responder, make_responder
from actors.speaker import AcsPlaySpeaker, PcmSpeaker, Speaker
from actors.stream_protocol import HandshakeRefused
from actors.stream_server import StreamServer
from storage.affinity import Endpoint
from storage.archive import ArchiveStore, open_archive
from storage.archiver import Archiver, process_spool_path
from storage.conversation import ConversationManager
from storage.errors import (
    InvalidKeyError,
    PayloadTooLargeError,
    RedisUnavailableError,
    SerializationError,
    StaleEpochError,
    StorageError,
)
from storage.keys import validate_identifier
from storage.profiles import ProfileRepository
from storage.redis_manager import AsyncAzureRedisManager

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_GRACE_S = 0.5
PREWARM_PROBE_ID = "rtvoice-prewarm-probe"  # read by spares, never written: no call has it
ARCHIVE_WARM_S = 2.0  # a spare's first archive read waits this long at most
# Activation's second half (caller profile, session record, first checkpoint: about 1.7 ms of
# CPU) waits this long unless something needs it sooner: in a burst, the other calls' set-ups
# on the same cores go first. A caller's first reply is seconds away.
SETTLE_DELAY_S = 0.25
PLAY_DONE_EVENTS = frozenset({"PlayCompleted", "PlayFailed", "PlayCanceled"})


def _in_ray_actor() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def _freeze_what_the_process_holds() -> None:
    """Take every object the actor's process holds now (modules, clients, the server) out of the
    cyclic collector's reach. It would walk them in every full collection and once more when the
    process exits after its call: 0.27 s of CPU per exit, 0.06 s frozen (bench density)."""
    if _in_ray_actor():
        gc.freeze()


def _restarted_by_ray() -> bool:
    if not _in_ray_actor():
        return False
    import ray

    with warnings.catch_warnings():  # Ray reads its own deprecated actor_id property here
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class SpareTaken(Exception):
    """This spare's process already serves another call (a process serves one call only)."""


class CallActor:
    def __init__(self, call_id: str | None, config: CallActorConfig) -> None:
        # None: a spare of the warm pool (actors/pool.py), bound to its one call by ``bind``.
        self.call_id = validate_identifier(call_id, "call id") if call_id else ""
        self.config = config
        self.state = CallState(self.call_id, created_at=time.time())
        self.metrics = LiveMetrics()
        self.media = MediaPath(
            config, self.metrics, on_final=self._user_turn, on_session_change=self._session_changed
        )
        self.responder: Responder = make_responder(config.settings.assistant)
        self.replies = Replies(self.responder, self.metrics)
        self.epoch = 0
        self._lease_pending = False  # activated while Redis was down: the heartbeat claims it
        self.incoming: dict[str, Any] = {}
        self.restarts = 0
        self.audit: list[AuditEntry] = []
        self._token = secrets.token_urlsafe(24)
        self._redis: AsyncAzureRedisManager | None = None
        self._archive: ArchiveStore | None = None
        self._archiver: Archiver | None = None
        self._cm: ConversationManager | None = None
        self._lease: AffinityLease | None = None
        self._server: StreamServer | None = None
        self._speaker: Speaker | None = None
        self._pacer: Pacer | None = None
        self._exporter: RayMetricsExporter | None = None
        self._endpoint: Endpoint | None = None
        self._address: tuple[str, int] | None = None  # where the stream server listens
        self._settling: asyncio.Task[None] | None = None  # activation's unhurried half
        self._settle_now = asyncio.Event()  # something waits for that half: run it at once
        self._node_id = ""
        self._loops: list[asyncio.Task[Any]] = []
        self._activation_lock = asyncio.Lock()
        self._turn_lock = asyncio.Lock()
        self._ending: asyncio.Task[None] | None = None
        self._accepting_turns = True  # False once the end of call has taken the last turn
        self._orphan_check: asyncio.Task[None] | None = None
        if not self.call_id and _restarted_by_ray():
            # Pool actors are created without a call, so a restarted one knows none either. A
            # live call's gateway binds it again within seconds (its stream reconnect), a
            # queued spare waits its turn; otherwise its call is over and it only holds a slot.
            self._orphan_check = asyncio.get_running_loop().create_task(self._exit_if_orphaned())
        # Changes to the call session, and how many of them the stored session holds.
        self._session_changes = 0
        self._session_written = 0
        self._session_lock = asyncio.Lock()  # one session write at a time, in order
        self.finished = asyncio.Event()
        _freeze_what_the_process_holds()

    def __repr__(self) -> str:
        if not self.call_id:
            return "CallActor(spare)"
        return f"CallActor(call={self.call_id}, state={self.state.status.value})"

    # -- warm pool ----------------------------------------------------------------------------

    async def prewarm(self) -> Endpoint:
        """What a spare does before any call: its process is up and its modules imported (Ray
        did that); connect the storage clients, listen for the gateway and look up the node
        now, so that ``bind`` costs a few Redis round trips and nothing else. Returns where
        the spare listens (epoch 0): the pool binds it there (``bind_spare``)."""
        redis, archive = self._connect_storage()
        # The reads activation makes, run once on a call id no call has: the client then holds
        # the two connections activation uses at once, and its first-use costs are paid here
        # (about 2 of the 4 ms of CPU a bind took, measured in a 20-call burst). The scripts
        # too: in a burst on a Redis that lacks them, every actor would meet NOSCRIPT at once.
        await asyncio.gather(
            redis.load_call_session(PREWARM_PROBE_ID),
            redis.load_conversation(PREWARM_PROBE_ID),
            redis.load_scripts(),
        )
        # The archive's first read opens its client (the embedded store's connection and
        # thread; Cosmos's TLS connection, account and container reads), so the caller profile
        # read after a bind does not. An archive outage must not keep spares from the pool.
        try:
            await asyncio.wait_for(archive.get_profile(PREWARM_PROBE_ID), ARCHIVE_WARM_S)
        except (StorageError, TimeoutError) as exc:
            log.warning("spare could not reach the archive: %s", type(exc).__name__)
        host, port = await self._listen()
        self._node_id = self._node_id or self._ray_node_id()
        _freeze_what_the_process_holds()  # and what prewarm made
        return Endpoint(host, port, self._token, 0)

    async def bind(self, call_id: str, incoming: dict[str, Any] | None = None) -> Endpoint:
        """Make this spare the actor of ``call_id`` and activate it; idempotent for that call
        (after a restart of this process, the gateway binds it again to the same call)."""
        call_id = validate_identifier(call_id, "call id")
        if not self.call_id:
            self.call_id = call_id
            self.state = CallState(call_id, created_at=time.time())
        elif self.call_id != call_id:
            raise SpareTaken(self.call_id)
        return await self.activate(incoming)

    async def _bind_from_stream(self, call_id: str, incoming: dict[str, Any]) -> int:
        """``bind`` for a bind frame on the stream endpoint (StreamServer's binder): the epoch,
        or HandshakeRefused with the code the gateway gets back."""
        try:
            return (await self.bind(call_id, incoming)).epoch
        except CallEnded:
            raise HandshakeRefused("call_ended") from None
        except SpareTaken:
            raise HandshakeRefused("spare_taken") from None
        except InvalidKeyError:  # not a valid call id
            raise HandshakeRefused("bad_call") from None

    async def bound_call(self) -> str:
        """The call this process serves ("" while it is a spare)."""
        return self.call_id

    async def live(self) -> str:
        """Runs while this process serves its call; returns the call id once it has ended.

        Ray takes an actor's repr once, at creation, when a spare has no call yet. The pool
        starts this method once per bind as a task named ``call:<id>``, so the dashboard and
        the state API show the call on this actor, its node and its logs, and show it finished
        once the call is over (README, Operator views)."""
        await self.finished.wait()
        return self.call_id

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
        """Claim the call and publish the endpoint: what the first frame waits for. The caller
        profile, the session record and the first checkpoint follow in ``_settle``."""
        cfg = self.config
        redis, archive = self._connect_storage()  # a spare connected them in prewarm
        self._archiver = Archiver(archive, redis, spool_path=process_spool_path(cfg.storage))
        try:
            stored, cm = await asyncio.gather(  # two round trips at once: set-up waits on them
                redis.load_call_session(self.call_id),
                ConversationManager.claimed(self.call_id, redis),
            )
        except RedisUnavailableError:
            if not incoming:  # a restart: what it must reload is in Redis
                raise
            # A new call (the gateway's answer hands its fields) while Redis is down: nothing
            # of it is stored yet. Epoch 1 is what the first claim gives; the heartbeat
            # publishes the endpoint and the checkpoint writes the conversation once Redis is
            # back, and a newer epoch still fences this one.
            stored, cm = None, ConversationManager(self.call_id, redis)
            cm.epoch, self._lease_pending = 1, True
        session = CallSession.from_dict(self.call_id, stored)
        mine = session.actor  # set once an actor has run for the call
        if mine is not None and mine.ended:
            raise CallEnded(self.call_id)
        self._cm = cm
        self.epoch = self.media.epoch = cm.epoch
        self._lease = AffinityLease(redis, self.call_id, self.epoch, lease_s=cfg.lease_s)
        self.incoming = session.incoming
        if mine is not None:  # this process replaces a dead one
            self.restarts = mine.restarts + 1
            self.state = CallState.from_dict(mine.state)
            self.media.dtmf = list(mine.dtmf or [])
            self.audit = list(mine.audit or [])
        if incoming:
            self.incoming = dict(incoming)
        host, port = await self._listen()
        self._node_id = self._node_id or self._ray_node_id()
        endpoint = self._endpoint = Endpoint(host, port, self._token, self.epoch)
        try:
            await self._lease.claim(endpoint, self._node_id)  # the gateway routes here now
        except RedisUnavailableError:
            if not self._lease_pending:
                raise
        self.media.ready_at = time.time()
        self._speaker = self.media.speaker = self._make_speaker(redis)
        self._audit("restarted" if mine is not None else "activated", epoch=self.epoch)
        self._start_loops()
        self._settling = asyncio.get_running_loop().create_task(self._settle(cm))
        log.info("%r activated at epoch %d", self, self.epoch)
        return endpoint

    async def _settle(self, cm: ConversationManager) -> None:
        """Activation's second half, off the caller's path: turns wait for it (the reply needs
        the caller profile), the end of the call too."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settle_now.wait(), SETTLE_DELAY_S)
        try:
            await self._load_caller(cm)
            await self._store_session()
            await self.checkpoint()
        except Exception:  # the call goes on; the checkpoint loop retries what is pending
            log.exception("%r: settling the activation failed", self)

    async def _settled(self) -> None:
        if self._settling is not None and not self._settling.done():
            self._settle_now.set()
            await asyncio.wait([self._settling])  # neither raises nor cancels it

    async def _load_caller(self, cm: ConversationManager) -> None:
        """Caller profile into the context, once per call (a restart finds it already there)."""
        if "caller" in cm.context:
            return
        assert self._archive is not None and self._redis is not None
        caller_id = caller_lookup_id(self.incoming)
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

    def _connect_storage(self) -> tuple[AsyncAzureRedisManager, ArchiveStore]:
        storage = self.config.storage
        self._redis = self._redis or AsyncAzureRedisManager.from_settings(storage)
        self._archive = self._archive or open_archive(storage)
        return self._redis, self._archive

    async def _listen(self) -> tuple[str, int]:
        """The stream server's address, started once (a spare's refuses every hello until it is
        bound: no call id matches, and nobody knows its token before the lease publishes it)."""
        if self._server is None or self._address is None:
            cfg = self.config
            self._server = StreamServer(
                self.media,
                call_id=self.call_id,
                token=self._token,
                host=cfg.stream_host,
                max_frame_bytes=cfg.max_frame_bytes,
                handshake_timeout_s=cfg.handshake_timeout_s,
                binder=self._bind_from_stream,
            )
            port = await self._server.start()
            host = cfg.advertise_host or cfg.stream_host
            if host in ("0.0.0.0", "::"):
                import ray

                host = ray.util.get_node_ip_address()
            self._address = (host, port)
        self._server.call_id = self.call_id
        return self._address

    def _make_speaker(self, redis: AsyncAzureRedisManager) -> Speaker:
        """The call's speaker as the media path sees it: the replies, spoken through a voice."""
        self.replies.start(self._make_voice(redis))
        return self.replies

    def _make_voice(self, redis: AsyncAzureRedisManager) -> Speaker:
        cfg = self.config
        if cfg.speaker == "acs":
            credentials = cfg.settings.acs.rest_credentials()
            assert credentials is not None  # CallActorConfig refuses speaker 'acs' without
            endpoint, key = credentials
            return AcsPlaySpeaker(endpoint, key, self.call_id, voice=cfg.voice)
        return PcmSpeaker(
            redis,
            self.media.outbound,
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
        assert self._lease is not None
        self._pacer = Pacer(self.media.outbound, self.media.send_outbound)
        heartbeat = self._lease.heartbeat(
            self.config.heartbeat_interval_s,
            on_reclaimed=self._store_session,
            on_fenced=self._fenced,
            on_failure=self._storage_failed,
        )
        for coro in (self._pacer.run(), heartbeat, self._checkpoint_loop(), self._idle_watchdog()):
            task = asyncio.get_running_loop().create_task(coro)
            task.add_done_callback(self._loop_done)
            self._loops.append(task)

    def _loop_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%r: background loop failed", self, exc_info=task.exception())

    # -- control plane (Ray methods) ----------------------------------------------------------

    async def handle_event(self, event: dict[str, Any], call_id: str | None = None) -> None:
        """One Call Automation CloudEvent (``{"id","type","data"}``); duplicates are ignored.

        ``call_id``: the call the gateway delivers it for. A spare is created without a call, so
        a spare's process that Ray restarted knows none until it is bound again, and an event
        (the caller's CallDisconnected) can reach it before the gateway's stream reconnect
        does: the event binds it then, as ``bind`` does."""
        if self._ending is not None:
            return
        if self._endpoint is None:
            await (self.bind(call_id) if call_id else self.activate(None))
        event_id = str(event.get("id") or "")
        if self.state.seen(event_id):
            self.metrics.duplicate_events += 1
            return
        self.metrics.events += 1
        self.media.touch()
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
        await self._settled()  # the caller's context is loaded
        self._sync_metrics()
        cm = self._cm
        return {
            "call_id": self.call_id,
            "state": self.state.status.value,
            "started_at": self.state.created_at,  # bound (a spare) or created, epoch seconds
            "epoch": self.epoch,
            "restarts": self.restarts,
            "participants": list(self.state.participants),
            "ring_participants": self.media.rings.participants(),
            "metrics": self.metrics.snapshot(),
            "endpoint": self._endpoint,
            "turns": len(cm.history) if cm else 0,
            "outbound_queued": len(self.media.outbound),
            "speaking": bool(self._speaker and self._speaker.speaking),
            "context": dict(cm.context) if cm else {},
            "pid": os.getpid(),
            "node_id": self._node_id,
        }

    async def ring_snapshot(self, participant: str | None = None) -> bytes:
        return self.media.rings.snapshot_bytes(participant)

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

    # -- conversation (the media path hands over final transcription results) -----------------

    async def _user_turn(self, msg: TranscriptionData) -> None:
        heard_at = time.monotonic()  # the reply's latency counts from here
        async with self._turn_lock:  # FIFO: turns keep the order they were heard in
            # Inside the lock: a turn heard later, once the activation has settled, must not
            # overtake one still waiting for it.
            await self._settled()  # the reply needs the caller profile
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
            # Persisted while the model thinks, so the reply does not wait for Redis.
            saved = asyncio.ensure_future(self.checkpoint())
            # Spoken sentence by sentence as it is generated; returns once played or cut.
            said = await self.replies.reply(dict(cm.context), cm.history, heard_at=heard_at)
            await saved
            if said is None:  # the call is ending
                return
            await cm.append_to_history("assistant", said.text, participant=None, **said.meta())
            self.metrics.turns += 1
            await self.checkpoint()

    # -- background loops ---------------------------------------------------------------------

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
            if len(self.media.outbound):
                self.media.touch()  # still talking to the caller
            if time.monotonic() - self.media.last_activity > timeout:
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
            await self._settled()  # the session record and the caller are in place first
            await self._archive_call(reason)
        except Exception:
            log.exception("%r: end of call failed", self)
        finally:
            await self._mark_ended()
            await self._release_resources()
            self.finished.set()
            self._exit_soon()

    async def _drain_streams(self) -> None:
        """Read on until the gateway closes the streams (it does when ACS closes its sockets).

        A restarted process that no stream has reached yet first waits for one: the gateway
        reconnects to replay what ACS sent while the process was down, and when the caller
        hung up meanwhile, that is the call's last words."""
        server = self._server
        if server is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.end_drain_s):
                if self.restarts:
                    await server.wait_reached()
                await server.wait_idle()

    async def _archive_call(self, reason: str) -> None:
        now = time.time()
        self.state.disconnect(now)
        self._audit("ended", reason=reason)
        if reason == "disconnected":
            await self._drain_streams()
        if self._server is not None:
            await self._server.close()
        await asyncio.sleep(0)  # turns spawned by the last messages reach the turn lock first
        self.replies.end()  # nobody listens any more: a reply in progress is cut, none starts
        async with self._turn_lock:  # FIFO: every turn already heard is recorded before this
            self._accepting_turns = False
        current = asyncio.current_task()
        for task in [*self._loops, *self.media.tasks]:
            if task is not current:
                task.cancel()
        self._sync_metrics()
        for delay in (0.0, 0.2, 0.5):  # best effort: the archive below has every turn anyway
            await asyncio.sleep(delay)
            if await self.checkpoint():
                break
        cm, archiver, redis = self._cm, self._archiver, self._redis
        assert cm is not None and archiver is not None and redis is not None
        transcript = transcript_document(
            self.call_id,
            state=self.state,
            history=cm.history,
            caller=cm.context.get("caller"),
            incoming=self.incoming,
            epoch=self.epoch,
            restarts=self.restarts,
            dtmf=self.media.dtmf,
            audio_format=self.config.audio_format,
            metrics=self.metrics.snapshot(),
            ended_at=now,
            end_reason=reason,
        )
        submitted = archiver.submit_transcript(transcript.to_dict())
        destination = await self._guarded("transcript", submitted)
        summary = call_summary(transcript, destination)
        await self._guarded("summary", redis.set_call_summary(self.call_id, summary.to_dict()))
        analytics = analytics_record(transcript, summary).to_dict()
        await self._guarded("analytics", archiver.submit("analytics", analytics))
        for entry in self.audit:
            await self._guarded("audit", archiver.submit("audit", entry.to_dict()))
        log.info("%r archived (%s) to %s", self, reason, destination)

    async def _mark_ended(self) -> None:
        """Whatever happened to the archive: the session says ended, the lease is released, so
        the call can neither be activated again nor keep the gateway routing to this process."""
        await self._store_session(ended=True)
        if self._lease is not None:
            await self._guarded("release_affinity", self._lease.release())

    def _fenced(self) -> None:
        """A newer epoch owns the call: this instance is a zombie and must stop writing."""
        log.warning("%r fenced by a newer epoch; exiting without archiving", self)
        if self._ending is None:
            self._ending = asyncio.get_running_loop().create_task(self._exit_fenced())

    async def _exit_fenced(self) -> None:
        for task in [*self._loops, *filter(None, [self._settling])]:
            task.cancel()
        await self._release_resources()
        self.finished.set()
        self._exit_soon()

    async def _release_resources(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._address = None  # a later activation listens again
        if self._speaker is not None:
            with contextlib.suppress(Exception):
                await self._speaker.close()
        if self._archive is not None:
            with contextlib.suppress(Exception):
                await self._archive.close()
            self._archive = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.close()
            self._redis = None

    def _exit_soon(self) -> None:
        """Exit the Ray actor after a grace period, so that a ``shutdown`` awaiting the end of
        the call gets its reply before the process goes (an exit fails running methods)."""
        if _in_ray_actor():
            asyncio.get_running_loop().call_later(EXIT_GRACE_S, self._exit)

    async def _exit_if_orphaned(self) -> None:
        """Exit once, after a grace period, this restarted process is neither bound to a call
        nor queued as a spare (while Redis cannot tell, it waits another period)."""
        import ray

        name = ray.get_runtime_context().get_actor_name() or ""
        while not self.call_id:
            await asyncio.sleep(self.config.orphan_grace_s)
            if self.call_id:
                return
            try:
                redis, _ = self._connect_storage()
                if name in await redis.spare_names(self.config.spare_pool):
                    continue
            except StorageError:
                continue
            log.warning("%r: restarted by Ray, neither bound nor queued; exiting", self)
            self._exit()
            return

    def _exit(self) -> None:
        import ray

        # Marks the actor to exit once running methods return; the exception it raises only
        # concerns this task.
        with contextlib.suppress(ray.exceptions.AsyncioActorExit):
            ray.actor.exit_actor()

    # -- call session -------------------------------------------------------------------------

    @property
    def _session_dirty(self) -> bool:
        return self._session_changes > self._session_written

    def _session_changed(self) -> None:
        self._session_changes += 1

    def _audit(self, action: str, **details: Any) -> None:
        n = len(self.audit) + 1
        entry = AuditEntry.new(self.call_id, self.epoch, n, action, time.time(), details)
        self.audit.append(entry)
        self._session_changes += 1

    def _session(self, *, ended: bool) -> CallSession:
        return call_session(
            self.call_id,
            self.incoming,
            epoch=self.epoch,
            restarts=self.restarts,
            state=self.state,
            dtmf=self.media.dtmf,
            audit=self.audit,
            ended=ended,
        )

    async def _store_session(self, *, ended: bool = False) -> None:
        """Write the call session as it is now. Writes go one at a time: two in flight on two
        connections can land out of order and leave the older session stored (a call's opening
        events arrive together). One that waited is skipped if the write before it, begun
        later than this call, already held everything."""
        if self._redis is None:
            return
        self._session_changes += 1
        change = self._session_changes
        async with self._session_lock:
            if self._session_written >= change and not ended:
                return
            covered = self._session_changes
            try:
                session = self._session(ended=ended).to_dict()
                await self._redis.store_call_session(self.call_id, session)
            except (PayloadTooLargeError, SerializationError) as exc:
                self._storage_failed("store_session", exc)
                await self._store_core_session(ended=ended, covered=covered)
            except StorageError as exc:
                self._storage_failed("store_session", exc)
            else:
                self._session_written = covered

    async def _store_core_session(self, *, ended: bool, covered: int) -> None:
        """What a restart and the end mark need, without the parts whose size others decide
        (the IncomingCall, participants, tones, audit): stored when the whole session cannot be."""
        assert self._redis is not None
        core = self._session(ended=ended).core()
        try:
            await self._redis.store_call_session(self.call_id, core.to_dict())
        except StorageError as exc:
            self._storage_failed("store_core_session", exc)
        else:
            # Retried when the session changes: as it is, the whole of it would fail again.
            self._session_written = covered

    # -- helpers ------------------------------------------------------------------------------

    def _sync_metrics(self) -> None:
        """Copy the counters kept by the pacer and the speaker into the live metrics."""
        if self._pacer is not None:
            self.metrics.frames_out = self._pacer.frames_sent
            self.metrics.frames_late = self._pacer.frames_late
        voice = self.replies.voice
        if isinstance(voice, PcmSpeaker):
            self.metrics.tts_hits = voice.hits
            self.metrics.tts_misses = voice.misses

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
