"""One simulated call from ring to hang-up: Event Grid, answer, callbacks, media, transcription.

Reacts to the app's REST operations (called by ``rest_api`` through the directory) and plays its
caller's script; never serves HTTP itself and never outlives its ``run()``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import orjson
from starlette import status

from simulator import wire
from simulator.acs_socket import AcsSocket, SocketRejected, rebase_ws_url
from simulator.audio import (
    FRAME_MS,
    AudioFormat,
    frames,
    load_wav,
    silence,
    speaking_duration,
    speech_like,
)
from simulator.callbacks import CallbackSender, Delivery
from simulator.http_post import Poster, PostFailed
from simulator.jwt_issuer import MEDIA_TOKEN_LIFETIME_S, JwtIssuer, TokenFault
from simulator.media_client import MediaSession
from simulator.pacing import Pacer
from simulator.playout import Playout
from simulator.report import CallReport
from simulator.rest_api import RestError
from simulator.script import DTMF_GAP_S, CallerScript, ScriptLine
from simulator.transcription_client import TranscriptionSession
from simulator.wire import AnswerRequest, CallIds, Json

CallState = Literal["ringing", "connecting", "connected", "disconnected"]
FRAME_S = FRAME_MS / 1000
DRAIN_LIMIT_S = 3.0  # how long a hanging-up caller waits for queued reply audio to finish
FINISH_LIMIT_S = 10.0  # bound on waiting for in-flight callbacks at the end of a call
HANGUP_GRACE_S = 1.0  # a gateway may close media just before its hang-up request lands
NOT_ESTABLISHED = "8501"
ABNORMAL_CLOSURE = 1006  # the connection dropped without a closing handshake


@dataclass(frozen=True, slots=True)
class CallEnv:
    """What every call shares: the HTTP client, the token issuer and the stand-in's settings."""

    http: Poster
    issuer: JwtIssuer
    topic: str
    event_grid_path: str = "/api/incoming-call"
    answer_timeout_s: float = 10.0
    connect_delay_s: float = 0.05  # answer 200 -> CallConnected, so the app sees its reply first
    socket_grace_s: float = 2.0  # time a gateway gets to close a socket with a bad token


class CallRejected(Exception):
    """The app rejected the ringing call (the answer never comes)."""


def _identifier(who: str) -> Json:
    return wire.phone_identifier(who) if who.startswith("+") else wire.acs_user_identifier(who)


class SimCall:
    def __init__(self, index: int, script: CallerScript, gateway_url: str, env: CallEnv) -> None:
        self.index = index
        self.script = script
        self.gateway_url = gateway_url.rstrip("/")
        self.env = env
        self.ids = CallIds(
            call_connection_id=str(uuid.uuid4()),
            server_call_id=base64.urlsafe_b64encode(secrets.token_bytes(48)).decode(),
            correlation_id=str(uuid.uuid4()),
        )
        self.incoming_call_context = secrets.token_urlsafe(96)  # opaque, as ACS's is
        self.caller = _identifier(script.caller)
        self.callee = _identifier(script.callee)
        self.state: CallState = "ringing"
        self.report = CallReport(index, script.caller, self.ids.call_connection_id)
        self.playout = Playout(record=script.record_audio)
        self._answer: asyncio.Future[AnswerRequest] = asyncio.get_running_loop().create_future()
        self._request: AnswerRequest | None = None
        self._ended = asyncio.Event()
        self._sender = CallbackSender(
            env.http, env.issuer, script.faults.callbacks, script.faults.callback_token
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._opening: asyncio.Task[None] | None = None  # CallConnected and its companions
        self._plays: set[asyncio.Task[None]] = set()
        self._play_lock = asyncio.Lock()
        self._media: MediaSession | None = None
        self._media_paused = False
        self._media_sessions: list[MediaSession] = []
        self._transcription: TranscriptionSession | None = None
        self._transcription_paused = False
        self._participants_seq = 0
        self._t0 = time.monotonic()

    # --- REST side: called synchronously by the REST handlers ------------------------------

    def answer(self, body: Json) -> Json:
        if self.state != "ringing":
            raise RestError(status.HTTP_400_BAD_REQUEST, NOT_ESTABLISHED, "Call already answered.")
        try:
            request = wire.parse_answer_request(body)
        except wire.BadRequest as exc:
            raise RestError(status.HTTP_400_BAD_REQUEST, "BadRequest", str(exc)) from None
        self._request = request
        self.state = "connecting"
        self.report.answered = True
        self.report.operations.append("answer")
        if request.media is not None:
            self.report.audio_format = request.media.audio_format
            self.report.channel_type = request.media.channel_type
        self._answer.set_result(request)
        return self.properties()

    def reject(self, body: Json) -> None:
        if self.state != "ringing":
            raise RestError(status.HTTP_400_BAD_REQUEST, NOT_ESTABLISHED, "Call already answered.")
        try:
            reason = wire.parse_reject_request(body)
        except wire.BadRequest as exc:
            raise RestError(status.HTTP_400_BAD_REQUEST, "BadRequest", str(exc)) from None
        self.state = "disconnected"
        self.report.rejected = True
        self.report.reject_reason = reason
        self.report.operations.append("reject")
        self._answer.set_exception(CallRejected(reason))

    def properties(self) -> Json:
        callback = self._request.callback_uri if self._request else ""
        return wire.call_properties(
            self.ids, self.state, callback, self.caller, self.callee, self.script.display_name
        )

    def hang_up(self, for_everyone: bool) -> None:
        self._require_established()
        self.report.operations.append("terminate" if for_everyone else "hangUp")
        self._end("app")

    def perform(self, action: str, body: Json) -> None:
        self._require_established()
        self.report.operations.append(action)
        request = self._request
        assert request is not None
        if action == "play":
            try:
                play = wire.parse_play_request(body)
            except wire.BadRequest as exc:
                raise RestError(status.HTTP_400_BAD_REQUEST, "BadRequest", str(exc)) from None
            self.report.played.extend(play.texts)
            task = asyncio.create_task(self._play(play))
            self._plays.add(task)
            task.add_done_callback(self._plays.discard)
        elif action == "cancelAllMediaOperations":
            self._cancel_plays(body.get("operationContext"))
        elif action in ("startMediaStreaming", "stopMediaStreaming"):
            if request.media is None:
                raise RestError(status.HTTP_400_BAD_REQUEST, "8580", "No media streaming options.")
            self._media_paused = action == "stopMediaStreaming"
            if not self._media_paused and not self._media_sessions and not request.media.start:
                self._spawn(self._connect_media(request.media.transport_url))
            word = "Stopped" if self._media_paused else "Started"
            update = wire.media_streaming_update(f"mediaStreaming{word}", f"subscription{word}")
            self._emit([(f"MediaStreaming{word}", {**update, **_context(body)})])
        else:
            if request.transcription is None:
                raise RestError(status.HTTP_400_BAD_REQUEST, "8580", "No transcription options.")
            if action == "updateTranscription":
                update = wire.transcription_update("transcriptionUpdated", "subscriptionUpdated")
                self._emit([("TranscriptionUpdated", {**update, **_context(body)})])
                return
            self._transcription_paused = action == "stopTranscription"
            opened = self._transcription is not None or request.transcription.start
            if not self._transcription_paused and not opened:
                self._spawn(self._connect_transcription(request.transcription))
            word = "Stopped" if self._transcription_paused else "Started"
            update = wire.transcription_update(f"transcription{word}", f"subscription{word}")
            self._emit([(f"Transcription{word}", {**update, **_context(body)})])

    def _require_established(self) -> None:
        if self.state not in ("connecting", "connected"):
            raise RestError(
                status.HTTP_400_BAD_REQUEST,
                NOT_ESTABLISHED,
                "Action is not valid when call is not in Established state.",
            )

    # --- the call's life ------------------------------------------------------------------

    async def run(self) -> CallReport:
        self._t0 = time.monotonic()
        incoming = asyncio.create_task(self._post_incoming_call())
        try:
            async with asyncio.timeout(self.env.answer_timeout_s):
                request = await self._answer
        except TimeoutError:
            self.state = "disconnected"
            self.report.unexpected.append(f"not answered within {self.env.answer_timeout_s}s")
            await incoming
            return self._finish_report()
        except CallRejected:  # a clear outcome: the caller hears busy (or is refused) at once
            await incoming
            return self._finish_report()
        try:
            try:
                await self._connected(request)
                if self._media_ok():
                    await self._stream()
            except Exception as exc:  # one call's surprise must not sink a whole scenario
                self.report.unexpected.append(f"call failed: {exc!r}")
                self._end("caller")
            await self._hang_up_side()
        finally:
            await self._shutdown(incoming)
        return self._finish_report()

    async def _post_incoming_call(self) -> None:
        fields = wire.IncomingCallFields(
            caller=self.caller,
            callee=self.callee,
            caller_display_name=self.script.display_name,
            server_call_id=self.ids.server_call_id,
            correlation_id=self.ids.correlation_id,
            incoming_call_context=self.incoming_call_context,
        )
        events = wire.incoming_call_events(fields, self.env.topic, datetime.now(UTC))
        try:
            posted = await self.env.http.post(
                self.gateway_url + self.env.event_grid_path,
                orjson.dumps(events),
                event_grid_headers("Notification"),
            )
        except PostFailed as exc:
            self.report.unexpected.append(f"IncomingCall delivery failed: {exc}")
            return
        self.report.incoming_call_status = posted.status
        if not 200 <= posted.status < 300:
            self.report.unexpected.append(f"IncomingCall answered HTTP {posted.status}")

    async def _connected(self, request: AnswerRequest) -> None:
        """The call is up: ACS reports it and starts streaming at once. It does not wait for
        the app's reply to CallConnected, so the sockets connect while the opening callbacks
        are still being delivered."""
        await asyncio.sleep(self.env.connect_delay_s)
        self.state = "connected"
        self._participants_seq += 1
        opening: list[tuple[str, Json]] = [
            ("CallConnected", _context_of(request.operation_context)),
            (
                "ParticipantsUpdated",
                wire.participants_data([self.caller, self.callee], self._participants_seq),
            ),
        ]
        if request.media is not None and request.media.start:
            update = wire.media_streaming_update("mediaStreamingStarted", "subscriptionStarted")
            opening.append(("MediaStreamingStarted", update))
        if request.transcription is not None and request.transcription.start:
            update = wire.transcription_update("transcriptionStarted", "subscriptionStarted")
            opening.append(("TranscriptionStarted", update))
        self._opening = self._spawn(self._deliver(opening, request.callback_uri))
        sockets = []
        if request.media is not None and request.media.start:
            sockets.append(self._connect_media(request.media.transport_url))
        if request.transcription is not None and request.transcription.start:
            sockets.append(self._connect_transcription(request.transcription))
        await asyncio.gather(*sockets)

    def _media_ok(self) -> bool:
        """False when a socket was (rightly) refused: a rejected caller has nothing to stream."""
        rejected = self.report.media_rejected or self.report.transcription_rejected
        return not (rejected and self.script.faults.expects_rejection)

    async def _connect_media(self, url: str) -> None:
        request = self._request
        assert request is not None and request.media is not None
        fmt = AudioFormat.from_acs(request.media.audio_format)
        session = MediaSession(
            url,
            self.ids,
            fmt,
            self.playout,
            subscription_id=str(uuid.uuid4()),
            realtime=self.script.realtime,
        )
        fault = self.script.faults.media_token
        try:
            await session.connect(self.env.issuer.mint(MEDIA_TOKEN_LIFETIME_S, fault))
        except SocketRejected as exc:
            self.report.media_rejected = exc.reason
            if fault is TokenFault.NONE:
                self.report.unexpected.append(f"media socket refused: {exc.reason}")
            return
        self.report.media_connects += 1
        self._media_sessions.append(session)
        self._media = session
        if fault is not TokenFault.NONE:
            if await session.wait_closed(self.env.socket_grace_s):
                self.report.media_rejected = f"closed_{session.close_code}"
            else:
                self.report.unexpected.append(f"gateway kept a media socket with a {fault} token")

    async def _connect_transcription(self, options: wire.TranscriptionOptions) -> None:
        session = TranscriptionSession(
            options.transport_url,
            self.ids,
            subscription_id=str(uuid.uuid4()),
            locale=options.locale,
        )
        fault = self.script.faults.transcription_token
        try:
            await session.connect(self.env.issuer.mint(MEDIA_TOKEN_LIFETIME_S, fault))
        except SocketRejected as exc:
            self.report.transcription_rejected = exc.reason
            if fault is TokenFault.NONE:
                self.report.unexpected.append(f"transcription socket refused: {exc.reason}")
            return
        self._transcription = session
        if fault is not TokenFault.NONE:
            if await session.wait_closed(self.env.socket_grace_s):
                self.report.transcription_rejected = f"closed_{session.close_code}"
            else:
                self.report.unexpected.append(
                    f"gateway kept a transcription socket with a {fault} token"
                )

    # --- the caller talking --------------------------------------------------------------

    async def _stream(self) -> None:
        request = self._request
        assert request is not None
        fmt = AudioFormat.from_acs(request.media.audio_format if request.media else None)
        streamer = _Streamer(self, fmt)
        await streamer.send_malformed(self.script.faults.malformed_frames)
        await streamer.audio(silence(self.script.lead_in_s, fmt), silent=True)
        for line in self.script.lines:
            if self._ended.is_set():
                break
            await streamer.line(line)
        await streamer.audio(silence(self.script.tail_s, fmt), silent=True)
        if self.script.hangs_up == "app" and not self._ended.is_set():
            # The line stays open (silence keeps flowing) until the app hangs up.
            limit = streamer.position_s + self.script.app_hangup_timeout_s
            while not self._ended.is_set() and streamer.position_s < limit:
                await streamer.audio(silence(FRAME_S * 10, fmt), silent=True)

    async def _hang_up_side(self) -> None:
        if not self._ended.is_set():
            if self.script.hangs_up == "app" and self._media_ok():
                self.report.unexpected.append("app did not hang up")
                self._end("timeout")
            else:
                if self._media is not None:
                    await self._media.drain(DRAIN_LIMIT_S)
                self._end("caller")
        await self._close_sockets()
        if self._opening is not None:  # CallConnected goes out before CallDisconnected
            await asyncio.wait([self._opening])
        by_app = self.report.hung_up_by == "app"
        result = (
            wire.result_information(200, 7000, "The conversation has ended.")
            if by_app
            else wire.result_information(200, 0, "The call was ended by the caller.")
        )
        await self._deliver([("CallDisconnected", result)], self._must_request().callback_uri)

    def _end(self, by: str) -> None:
        if not self._ended.is_set():
            self.report.hung_up_by = by
            self.state = "disconnected"
            self._ended.set()

    def _must_request(self) -> AnswerRequest:
        assert self._request is not None
        return self._request

    async def _close_sockets(self) -> None:
        for session in self._media_sessions:
            await session.close()
        if self._transcription is not None:
            await self._transcription.close()

    async def _shutdown(self, incoming: asyncio.Task[None]) -> None:
        self.state = "disconnected"
        self._cancel_plays(None, notify=False)
        await self._close_sockets()
        pending = [incoming, *self._tasks]
        _, late = await asyncio.wait(pending, timeout=FINISH_LIMIT_S)
        for task in late:
            task.cancel()
            self.report.unexpected.append("a delivery was still pending at the end of the call")

    def _finish_report(self) -> CallReport:
        report = self.report
        report.duration_s = time.monotonic() - self._t0
        report.heard_bytes = self.playout.heard_bytes
        report.heard_pcm = bytes(self.playout.heard)
        report.cleared_bytes = self.playout.cleared_bytes
        if self._request is not None and self._request.media is not None:
            fmt = AudioFormat.from_acs(self._request.media.audio_format)
            report.heard_s = fmt.duration_s(self.playout.heard_bytes)
        for session in self._media_sessions:
            report.outbound_messages += session.outbound_messages
            report.stop_audio += session.stop_audio
            report.unexpected.extend(f"outbound {r}" for r in session.malformed_outbound)
        if self._transcription is not None:
            report.transcripts_sent = self._transcription.results_sent
        return report

    # --- callbacks ------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _emit(self, events: list[tuple[str, Json]], url: str | None = None) -> None:
        self._spawn(self._deliver(events, url or self._must_request().callback_uri))

    async def _deliver(self, events: list[tuple[str, Json]], url: str) -> None:
        now = datetime.now(UTC)
        bodies = [wire.cloud_event(name, self.ids, data, now) for name, data in events]
        for delivery in await self._sender.deliver(url, bodies):
            self._record(delivery)

    def _record(self, delivery: Delivery) -> None:
        name = delivery.event_type.removeprefix(wire.EVENT_NAMESPACE)
        if delivery.status is not None:
            self.report.callback_statuses.append(delivery.status)
        bad_token = self.script.faults.callback_token is not TokenFault.NONE
        if delivery.accepted:
            self.report.events.append(name)
            if bad_token:
                self.report.unexpected.append(f"gateway accepted {name} with a bad token")
            if name == "CallConnected" and self.report.time_to_connected_s is None:
                self.report.time_to_connected_s = time.monotonic() - self._t0
        elif not bad_token:
            self.report.unexpected.append(f"callback {name} got {delivery.status}")

    # --- play -----------------------------------------------------------------------------

    async def _play(self, play: wire.PlayRequest) -> None:
        url = play.operation_callback_uri or self._must_request().callback_uri
        context = _context_of(play.operation_context)
        async with self._play_lock:  # ACS plays queued requests one after another
            await self._deliver([("PlayStarted", context)], url)
            if self.script.realtime:
                await asyncio.sleep(sum(speaking_duration(text) for text in play.texts))
            if self.state != "disconnected":
                done = wire.result_information(200, 0, "Action completed successfully.")
                await self._deliver([("PlayCompleted", {**context, **done})], url)

    def _cancel_plays(self, operation_context: object, notify: bool = True) -> None:
        active = [task for task in self._plays if not task.done()]
        for task in active:
            task.cancel()
        if active and notify:
            context = operation_context if isinstance(operation_context, str) else None
            self._emit([("PlayCanceled", _context_of(context))])


def _context_of(operation_context: str | None) -> Json:
    return {} if operation_context is None else {"operationContext": operation_context}


def _context(body: Json) -> Json:
    value = body.get("operationContext")
    return _context_of(value if isinstance(value, str) else None)


def event_grid_headers(event_type: str) -> dict[str, str]:
    return {
        "aeg-event-type": event_type,
        "aeg-subscription-name": "RTVOICE-STAND-IN",
        "aeg-delivery-count": "0",
        "aeg-data-version": "1.0",
        "aeg-metadata-version": "1",
        "Content-Type": "application/json",
    }


class _Streamer:
    """The caller's mouth: paced 20 ms frames, transcripts aligned to them, scripted faults."""

    def __init__(self, call: SimCall, fmt: AudioFormat) -> None:
        self.call = call
        self.fmt = fmt
        self.pacer = Pacer(FRAME_S, realtime=call.script.realtime)
        self.sent = 0
        self.started = datetime.now(UTC)
        self.dropped = False
        self.participant = wire.raw_id(call.caller)

    @property
    def position_s(self) -> float:
        return self.sent * FRAME_S

    async def send_malformed(self, kinds: Sequence[str]) -> None:
        media = self.call._media
        if media is None:
            return
        good = wire.audio_data(bytes(self.fmt.frame_bytes), "", self.participant, True)
        for kind in kinds:
            await media.send_raw(_malformed(kind, good, self.fmt))

    async def line(self, line: ScriptLine) -> None:
        if line.say is not None:
            await self._say(line)
        if line.dtmf:
            await self._press(line.dtmf)
        if line.pause_s:
            await self.audio(silence(line.pause_s, self.fmt), silent=True)

    async def _say(self, line: ScriptLine) -> None:
        text = line.say or ""
        script = self.call.script
        if line.wav is not None:
            pcm = load_wav(line.wav, self.fmt)
        else:
            pcm = speech_like(speaking_duration(text), self.fmt, script.voice)
        start = self.position_s
        duration = self.fmt.duration_s(len(pcm))
        half = len(pcm) // 2 - (len(pcm) // 2) % self.fmt.frame_bytes
        await self.audio(pcm[:half], silent=False)
        words = text.split()
        if script.intermediate_results and self._intermediate_enabled() and len(words) > 1:
            partial = " ".join(words[: len(words) // 2])
            await self._transcript(partial, start, self.position_s - start, final=False)
        await self.audio(pcm[half:], silent=False)
        await self._transcript(text, start, duration, final=True)

    def _intermediate_enabled(self) -> bool:
        request = self.call._request
        return bool(request and request.transcription and request.transcription.intermediate)

    async def _transcript(self, text: str, offset_s: float, duration_s: float, final: bool) -> None:
        session = self.call._transcription
        if session is None or self.call._transcription_paused or self.call._ended.is_set():
            return
        sent = await session.send_result(text, offset_s, duration_s, self.participant, final)
        request = self.call._request
        if not sent and self._lost(session) and request and request.transcription:
            await session.close()
            self.call._transcription = None
            await self.call._connect_transcription(request.transcription)
            if (again := self.call._transcription) is not None:
                await again.send_result(text, offset_s, duration_s, self.participant, final)

    def _lost(self, session: AcsSocket) -> bool:
        """The gateway's end vanished (no closing handshake) and ACS is to connect again."""
        return (
            self.call.script.faults.reconnect_lost_sockets
            and session.close_code == ABNORMAL_CLOSURE
            and not self.call._ended.is_set()
        )

    async def _press(self, tones: str) -> None:
        request = self.call._request
        enabled = bool(request and request.media and request.media.dtmf)
        for tone in tones:
            media = self.call._media
            if enabled and media is not None and not self.call._ended.is_set():
                self.call.report.dtmf_sent += await media.send_dtmf(tone)
            await self.audio(silence(DTMF_GAP_S, self.fmt), silent=True)

    async def audio(self, pcm: bytes, silent: bool) -> None:
        call = self.call
        for frame in frames(pcm, self.fmt):
            if call._ended.is_set():
                return
            await self.pacer.wait()
            await self._maybe_drop()
            media = call._media
            if media is not None and not call._media_paused:
                stamp = wire.iso_time(self.started + timedelta(seconds=self.position_s))
                sent = await media.send_frame(frame, stamp, self.participant, silent)
                if not sent and self._lost(media):  # connect again, then send the frame
                    await media.abort()
                    call._media = None
                    await call._connect_media(media.url)
                    media = call._media or media
                    sent = await media.send_frame(frame, stamp, self.participant, silent)
                if sent:
                    call.report.frames_sent += 1
                else:
                    await self._media_closed(media)
                    return
            self.sent += 1

    async def _media_closed(self, media: MediaSession) -> None:
        """The gateway closed the media socket: fine just before its hang-up, odd otherwise."""
        call = self.call
        call.report.media_close_code = media.close_code
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANGUP_GRACE_S):
                await call._ended.wait()
        if call.report.hung_up_by != "app":
            call.report.unexpected.append(f"gateway closed media ({media.close_code})")
            call._end("caller")

    async def _maybe_drop(self) -> None:
        """The drop-and-reconnect fault: a network failure mid-call, then ACS connects again."""
        faults = self.call.script.faults
        media = self.call._media
        if self.dropped or faults.drop_media_after_s is None or media is None:
            return
        if self.position_s < faults.drop_media_after_s:
            return
        self.dropped = True
        await media.abort()
        url = (
            media.url
            if faults.reconnect_to is None
            else rebase_ws_url(media.url, faults.reconnect_to)
        )
        self.call._media = None
        await self.call._connect_media(url)


OVERSIZED_DATA_CHARS = 96 * 1024


def _malformed(kind: str, good: Json, fmt: AudioFormat) -> str | bytes:
    if kind == "binary":
        return bytes(fmt.frame_bytes)
    if kind == "bad_json":
        return '{"kind": "AudioData", "audioData": {'
    if kind == "unknown_kind":
        return json.dumps({"kind": "NoSuchKind", "noSuchKind": {}})
    data = dict(good["audioData"])
    if kind == "bad_base64":
        data["data"] = "***not base64***"
    elif kind == "oversized":  # over the gateway's 64 KiB per message: refused there
        data["data"] = "A" * OVERSIZED_DATA_CHARS
    else:  # wrong_size: a frame that is not 20 ms long
        data["data"] = base64.b64encode(bytes(fmt.frame_bytes // 2 + 1)).decode()
    return json.dumps({"kind": "AudioData", "audioData": data})
