"""The ACS-facing Starlette app: Event Grid webhook, callbacks, media/transcription WebSockets,
health and metrics.

Holds no call state beyond open sockets; every decision about a call is the actor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import ray
from azure.communication.callautomation import CallRejectReason
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.exceptions import AzureError
from cachetools import TTLCache
from starlette import status
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.acs_media import InvalidMessage, TranscriptionMetadata, parse_message
from actors.call_state import CallEnded
from gateway.acs_events import (
    MAX_BODY_BYTES,
    MAX_ID_BYTES,
    BadPayload,
    CallbackEvent,
    IncomingCall,
    parse_callbacks,
    parse_event_grid,
)
from gateway.admission import Admission
from gateway.affinity_routing import AffinityRouter
from gateway.answering import (
    CALLBACK_PATH,
    MEDIA_PATH,
    TRANSCRIPTION_PATH,
    AnswerOptions,
    answer_call,
    plan_answer,
)
from gateway.auth import AuthError, EventGridAuth, JwtVerifier, KeysUnavailable, UrlSecrets
from gateway.call_binding import BindingUnavailable, CallBindings
from gateway.dedupe import RecentIds
from gateway.metrics import GatewayMetrics, RequestMetrics
from gateway.storage_health import StorageHealth
from gateway.stream_bridge import StreamBridge
from gateway.websocket_protocol import direct_text
from storage.archive_drainer import ArchiveDrainer
from storage.errors import StorageError
from storage.keys import validate_identifier
from storage.redis_manager import AsyncAzureRedisManager

log = logging.getLogger(__name__)

CALL_ID_HEADER = "x-ms-call-connection-id"
CORRELATION_HEADER = "x-ms-call-correlation-id"
EVENT_GRID_SECRET_PARAM = "code"
JWKS_UNREACHABLE = "jwks_unreachable"  # refusal reason: the issuer's keys could not be fetched
CALLBACK_BINDING_WAIT_S = 1.0  # a callback for a call not bound yet waits this long at most
MAX_ORIGIN_CHARS = 256  # WebHook-Request-Origin: a host name (eventgrid.azure.net)
ANSWERED_CONTEXTS = 10_000  # local memory of answered contexts, for when Redis is down
# Recording events may carry another call leg's id (ACS_PROTOCOL.md): acknowledged, not routed.
OTHER_LEG_EVENTS = frozenset({"RecordingStateChanged"})


@dataclass
class Gateway:
    """Everything the routes need, passed in (no globals)."""

    replica_id: str
    public_url: str
    redis: AsyncAzureRedisManager
    acs: CallAutomationClient
    router: AffinityRouter
    url_secrets: UrlSecrets
    bindings: CallBindings
    verifier: JwtVerifier | None
    event_grid_auth: EventGridAuth | None
    metrics: GatewayMetrics
    answer_options: AnswerOptions = field(default_factory=AnswerOptions)
    media_wait_s: float = 10.0
    # An answered call whose actor is not up this long after the answer is hung up.
    activation_timeout_s: float = 10.0
    # Whether this replica can serve one more call (free call slots, spare actors).
    admission: Admission = field(default_factory=Admission)
    recent_events: RecentIds = field(default_factory=RecentIds)
    answered: TTLCache[str, bool] = field(
        default_factory=lambda: TTLCache(maxsize=ANSWERED_CONTEXTS, ttl=600)
    )
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # The deployment's archive drain; every replica runs one, a lease lets one work at a time.
    drainer: ArchiveDrainer | None = None
    # Redis memory, pool use and live calls' TTL headroom, read when /metrics is scraped.
    storage_health: StorageHealth | None = None

    def spawn(self, coro: Any) -> None:
        """Run work ACS must not wait for; keep a reference so it is not collected."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def _authenticate(gw: Gateway, authorization: str | None, query: Any) -> str:
    """The URL's nonce, once the URL secret and the ACS token check out."""
    nonce = gw.url_secrets.verify(query.get("n"), query.get("s"))
    if gw.verifier is not None:
        await gw.verifier.verify(authorization)
    return nonce


def _unauthorized(gw: Gateway, input_kind: str, reason: str) -> Response:
    gw.metrics.refuse(input_kind, reason)
    body = {"error": {"code": "Unauthorized", "message": reason}}
    return _json(body, status.HTTP_401_UNAUTHORIZED)


def _unavailable(gw: Gateway, input_kind: str, reason: str = "auth_state_unavailable") -> Response:
    """This replica cannot check the request now (Redis down, or the token issuer's keys out
    of reach): ask the sender to retry later. Event Grid and ACS retry a 503, not a 401."""
    gw.metrics.refuse(input_kind, reason)
    return _json({"error": reason}, status.HTTP_503_SERVICE_UNAVAILABLE)


async def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused past ``limit`` without buffering the rest of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadPayload("too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadPayload("too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _bad_payload(gw: Gateway, input_kind: str, exc: BadPayload) -> Response:
    gw.metrics.refuse(input_kind, exc.reason)
    too_large = exc.reason == "too_large"
    code = status.HTTP_413_CONTENT_TOO_LARGE if too_large else status.HTTP_400_BAD_REQUEST
    return _json({"error": exc.reason}, code)


def _json(data: Any, code: int = status.HTTP_200_OK) -> Response:
    return Response(orjson.dumps(data), status_code=code, media_type="application/json")


async def incoming_call(request: Request) -> Response:
    received = time.perf_counter()  # call set-up is timed from here to the actor ready
    gw: Gateway = request.app.state.gateway
    if (refused := await _event_grid_refusal(gw, request)) is not None:
        return refused
    try:
        post = parse_event_grid(await _read_body(request))
    except BadPayload as exc:
        return _bad_payload(gw, "event_grid", exc)
    for reason in post.skipped:  # malformed events left out of a batch that had good ones
        gw.metrics.refuse("event_grid", reason)
    if post.validation_code is not None:
        return _json({"validationResponse": post.validation_code})
    for call in post.incoming_calls:
        gw.spawn(_answer(gw, call, received))
    return Response(status_code=status.HTTP_200_OK)


async def _event_grid_refusal(gw: Gateway, request: Request) -> Response | None:
    """401 unless the request carries the webhook's secret or Entra token (when configured)."""
    if gw.event_grid_auth is None:
        return None
    try:
        await gw.event_grid_auth.verify(
            request.query_params.get(EVENT_GRID_SECRET_PARAM),
            request.headers.get("authorization"),
        )
    except AuthError as exc:
        return _unauthorized(gw, "event_grid", exc.reason)
    except KeysUnavailable:
        return _unavailable(gw, "event_grid", JWKS_UNREACHABLE)
    return None


async def event_grid_handshake(request: Request) -> Response:
    """The CloudEvents 1.0 webhook validation an Event Grid subscription in the CloudEvents
    schema makes (HTTP OPTIONS): allow the origin that asks."""
    gw: Gateway = request.app.state.gateway
    if (refused := await _event_grid_refusal(gw, request)) is not None:
        return refused
    origin = request.headers.get("webhook-request-origin", "")
    if not origin or len(origin) > MAX_ORIGIN_CHARS or not origin.isprintable():
        gw.metrics.refuse("event_grid", "bad_origin")
        return _json({"error": "bad_origin"}, status.HTTP_400_BAD_REQUEST)
    headers = {"WebHook-Allowed-Origin": origin, "Allow": "POST, OPTIONS"}
    if request.headers.get("webhook-request-rate"):
        headers["WebHook-Allowed-Rate"] = "*"
    return Response(status_code=status.HTTP_200_OK, headers=headers)


async def _first_answer(gw: Gateway, call: IncomingCall) -> bool:
    """True once per incoming call context across replicas (Event Grid redelivers)."""
    digest = hashlib.sha256(call.incoming_call_context.encode()).hexdigest()
    if digest in gw.answered:
        return False
    gw.answered[digest] = True
    try:
        return await gw.redis.claim_answer(digest)
    except StorageError:
        return True  # Redis down: this replica's memory is the only guard left


async def _answer(gw: Gateway, call: IncomingCall, received: float) -> None:
    if not await _first_answer(gw, call):
        gw.metrics.refuse("event_grid", "already_answered")
        return
    if not await gw.admission.admit():
        await _reject_busy(gw, call)
        return
    try:
        await _answer_admitted(gw, call, received)
    finally:
        gw.admission.release()  # its actor is up and holds its slot, or the attempt is over


async def _reject_busy(gw: Gateway, call: IncomingCall) -> None:
    """No slot and no spare actor: refuse the call at once (the caller hears busy)."""
    gw.metrics.calls_rejected.labels(reason="capacity").inc()
    log.info("incoming call rejected: no call capacity")
    try:
        await gw.acs.reject_call(
            call.incoming_call_context, call_reject_reason=CallRejectReason.BUSY
        )
    except AzureError as exc:  # ACS times the call out instead
        log.warning("rejecting a call failed: %s", type(exc).__name__)


async def _answer_admitted(gw: Gateway, call: IncomingCall, received: float) -> None:
    plan = plan_answer(gw.public_url, gw.url_secrets, gw.answer_options)
    try:
        call_id = await answer_call(gw.acs, call, plan)
        validate_identifier(call_id, "call connection id")
    except (AzureError, ValueError) as exc:
        gw.metrics.refuse("answer", type(exc).__name__)
        log.warning("answering a call failed: %s", type(exc).__name__)
        return
    gw.metrics.calls_answered.inc()
    incoming = call.to_dict() | {"call_id": call_id, "answered_by": gw.replica_id}
    async with gw.router.answering(call_id):  # its events and sockets wait for what follows
        try:
            async with asyncio.timeout(gw.activation_timeout_s):
                records = _record_call(gw, call_id, plan.nonce, call.correlation_id, incoming)
                await gw.router.activate(call_id, incoming, alongside=records)
            gw.metrics.call_set_up(call_id, time.perf_counter() - received)
        except TimeoutError:
            await _drop(gw, call_id, "activation_timeout")
        except Exception as exc:  # Ray errors, CallEnded, anything: the caller must not wait
            log.error("activating call actor failed: %s", type(exc).__name__)
            await _drop(gw, call_id, "activation_failed")


async def _record_call(
    gw: Gateway, call_id: str, nonce: str, correlation_id: str, incoming: dict[str, Any]
) -> None:
    """The answered call's records, written while its actor is looked up and before it is
    called: the URL binding (the call's URLs open nothing until it is there) and the session.
    Redis down: the binding stays on this replica and the actor gets the fields all the same."""

    async def bind() -> None:
        try:
            await gw.bindings.bind(call_id, nonce, correlation_id)
        except StorageError as exc:
            log.warning("call binding kept on this replica only: %s", type(exc).__name__)

    async def store_session() -> None:
        try:
            await gw.redis.store_call_session(call_id, incoming)
        except StorageError as exc:
            log.warning("storing the call session failed: %s", type(exc).__name__)

    await asyncio.gather(bind(), store_session())


async def _drop(gw: Gateway, call_id: str, reason: str) -> None:
    """The answered call's actor cannot be reached: end the call rather than leave dead air."""
    gw.metrics.calls_dropped.labels(reason=reason).inc()
    log.warning("answered call hung up: %s", reason)
    gw.router.forget(call_id)
    try:
        await gw.acs.get_call_connection(call_id).hang_up(is_for_everyone=True)
    except AzureError as exc:
        log.warning("hanging up a dropped call failed: %s", type(exc).__name__)


async def callbacks(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    await gw.router.setups_settled()  # a burst's answers and binds go first
    try:
        nonce = await _authenticate(gw, request.headers.get("authorization"), request.query_params)
    except AuthError as exc:
        return _unauthorized(gw, "callback", exc.reason)
    except KeysUnavailable:
        return _unavailable(gw, "callback", JWKS_UNREACHABLE)
    try:
        post = parse_callbacks(await _read_body(request))
    except BadPayload as exc:
        return _bad_payload(gw, "callback", exc)
    events = post.events
    try:
        call_id = _named_call(events)
        if call_id is not None:
            # ACS may post CallConnected to another replica just before the answering one has
            # bound the call (it binds as soon as the answer returns): wait for it, briefly.
            wait_s = min(gw.media_wait_s, CALLBACK_BINDING_WAIT_S)
            CallBindings.check(await gw.bindings.wait_for(call_id, wait_s), nonce)
    except AuthError as exc:
        return _unauthorized(gw, "callback", exc.reason)
    except BindingUnavailable:
        return _unavailable(gw, "callback")
    for reason in post.skipped:  # types we do not handle, events about no call, malformed ones
        gw.metrics.refuse("callback", reason)
    for event in events:
        if event.call_connection_id != call_id:
            gw.metrics.refuse("callback", "other_leg")
            continue
        if not gw.recent_events.first_time(event.id):
            gw.metrics.duplicate_events.inc()
            continue
        gw.spawn(_deliver(gw, event.call_connection_id, event.to_dict()))
    return Response(status_code=status.HTTP_200_OK)


def _named_call(events: list[CallbackEvent]) -> str | None:
    """The one call a callback request is about (None: only other legs' events).

    A URL opens one call, so a body naming two calls is refused whole."""
    named = {e.call_connection_id for e in events if e.name not in OTHER_LEG_EVENTS}
    if len(named) > 1:
        raise AuthError("call_mismatch")
    if not named:
        return None
    call_id = named.pop()
    try:
        validate_identifier(call_id, "call connection id")
    except ValueError:
        raise AuthError("bad_call_id") from None
    return call_id


async def _deliver(gw: Gateway, call_id: str, event: dict[str, Any]) -> None:
    start = time.perf_counter()
    outcome = "delivered"
    try:
        if not await gw.router.deliver(call_id, event):
            outcome = "unknown_call"
            gw.metrics.refuse("callback", outcome)
    except CallEnded:
        outcome = "ended_call"
        gw.metrics.refuse("callback", outcome)
    except (StorageError, ray.exceptions.RayError) as exc:
        outcome = "failed"
        log.warning("event delivery failed: %s", type(exc).__name__)
    elapsed = time.perf_counter() - start
    gw.metrics.event_delivery_seconds.labels(outcome=outcome).observe(elapsed)


async def _stream(websocket: WebSocket, stream: str) -> None:
    gw: Gateway = websocket.app.state.gateway
    await websocket.accept()  # accept first: ACS expects close code 1008 for a bad token
    opened_at = time.time()
    headers = websocket.headers
    try:
        nonce = await _authenticate(gw, headers.get("authorization"), websocket.query_params)
        call_id, first = await stream_call_id(websocket, stream, gw.media_wait_s)
        binding = await gw.bindings.wait_for(call_id, gw.media_wait_s)
        CallBindings.check(binding, nonce, headers.get(CORRELATION_HEADER))
    except AuthError as exc:
        gw.metrics.refuse(stream, exc.reason)
        await websocket.close(status.WS_1008_POLICY_VIOLATION)
        return
    except (BindingUnavailable, KeysUnavailable) as exc:
        keys = isinstance(exc, KeysUnavailable)
        gw.metrics.refuse(stream, JWKS_UNREACHABLE if keys else "auth_state_unavailable")
        await websocket.close(status.WS_1013_TRY_AGAIN_LATER)
        return
    bridge = StreamBridge(
        websocket,
        call_id,
        stream,
        gw.router.resolve,
        gw.metrics,
        direct=direct_text(websocket.scope),
        first=first,
    )
    gw.metrics.open_sockets.labels(stream=stream).inc()
    try:
        await bridge.connect()
        # Only now is the actor's affinity record sure to exist (a cold actor writes it late).
        await gw.router.claim_socket(call_id, stream, opened_at)
        code = await bridge.run()
    except CallEnded:
        code = status.WS_1000_NORMAL_CLOSURE
    except Exception as exc:  # one call's failure must never take the replica down
        log.warning("stream bridge failed: %s", type(exc).__name__)
        code = status.WS_1011_INTERNAL_ERROR
    finally:
        gw.metrics.open_sockets.labels(stream=stream).dec()
        await gw.router.release_socket(call_id, stream)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # ACS may have gone already
        await websocket.close(code)


async def stream_call_id(
    websocket: WebSocket, stream: str, wait_s: float
) -> tuple[str, str | None]:
    """The call an ACS socket is for, and the message read to learn it (None: none read).

    ACS names the call in the ``x-ms-call-connection-id`` header (ACS_PROTOCOL.md section 4).
    A transcription socket without it is named by its first message, TranscriptionMetadata
    (section 5). Either way the URL's nonce must then be the one issued for that call."""
    named = websocket.headers.get(CALL_ID_HEADER)
    first = None
    if not named and stream == "transcription":
        try:
            first = await asyncio.wait_for(websocket.receive_text(), wait_s)
            metadata = parse_message(first)
        except (TimeoutError, InvalidMessage, KeyError, WebSocketDisconnect):
            raise AuthError("bad_call_id") from None  # KeyError: a binary message
        if not isinstance(metadata, TranscriptionMetadata):
            raise AuthError("bad_call_id")
        named = metadata.call_connection_id
    try:
        call_id = validate_identifier(named or "", "call id")
    except ValueError:
        raise AuthError("bad_call_id") from None
    if len(call_id.encode()) > MAX_ID_BYTES:
        raise AuthError("bad_call_id")
    return call_id, first


async def media_socket(websocket: WebSocket) -> None:
    await _stream(websocket, "media")


async def transcription_socket(websocket: WebSocket) -> None:
    await _stream(websocket, "transcription")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    checks = {"ray": ray.is_initialized(), "redis": False, "capacity": False}
    try:
        checks["redis"] = await gw.redis.ping()
    except StorageError:
        checks["redis"] = False
    checks["capacity"] = await gw.admission.has_capacity()
    # Without Redis calls go on from actor memory: degraded, not down. Without capacity the
    # replica rejects every call: not ready, so a load balancer sends calls elsewhere.
    ready = checks["ray"] and checks["capacity"]
    if all(checks.values()):
        state = "ok"
    elif checks["ray"] and gw.admission.draining:
        state = "draining"  # `rtvoice drain`: takes no new call, its live calls go on
    elif checks["ray"] and not checks["capacity"]:
        state = "at_capacity"
    else:
        state = "degraded"
    body = {"status": state, "checks": checks}
    code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body, status_code=code)


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    if gw.storage_health is not None:
        await gw.storage_health.refresh()
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(gateway: Gateway) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        heartbeat = asyncio.create_task(gateway.router.heartbeat())
        stopping = asyncio.Event()
        refilling = asyncio.create_task(gateway.router.pool.run(stopping))
        drainer = gateway.drainer
        draining = asyncio.create_task(drainer.run(stopping)) if drainer else None
        # The token issuers' keys, fetched in the background (start-up and readiness never wait)
        # so a cold replica's first burst of callbacks finds them; out of reach, asked again.
        entra = gateway.event_grid_auth.verifier if gateway.event_grid_auth else None
        for verifier in filter(None, (gateway.verifier, entra)):
            gateway.spawn(verifier.keep_warm())
        try:
            yield
        finally:
            heartbeat.cancel()
            stopping.set()
            with contextlib.suppress(Exception):
                await refilling
            for task in list(gateway.tasks):
                task.cancel()
            if draining is not None and drainer is not None:
                with contextlib.suppress(Exception):
                    await draining
                await drainer.archive.close()

    app = Starlette(
        routes=[
            Route("/api/incoming-call", incoming_call, methods=["POST"]),
            Route("/api/incoming-call", event_grid_handshake, methods=["OPTIONS"]),
            Route(CALLBACK_PATH, callbacks, methods=["POST"]),
            WebSocketRoute(MEDIA_PATH, media_socket),
            WebSocketRoute(TRANSCRIPTION_PATH, transcription_socket),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ],
        middleware=[Middleware(RequestMetrics, metrics=gateway.metrics)],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
