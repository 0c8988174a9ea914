"""A tiny fake gateway for testing the ACS stand-in on its own (test code, not the real gateway).

Imported by the simulator tests; tested itself in ``test_simulator_support.py``.

It answers through the real ``azure-communication-callautomation`` client, verifies callback and
WebSocket tokens against the stand-in's served JWKS with PyJWT, and records everything it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
import orjson
import uvicorn
from azure.communication.callautomation import (
    AudioFormat,
    MediaStreamingOptions,
    TranscriptionOptions,
)
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

POLICY_VIOLATION = 1008
CALLBACK_GATE_S = 3.0

MediaHook = Callable[[WebSocket, str], Coroutine[Any, Any, None]]


class AcsView(Protocol):
    """What a gateway is configured with to reach (and trust) an ACS resource."""

    @property
    def endpoint(self) -> str: ...
    @property
    def access_key(self) -> str: ...
    @property
    def jwks_url(self) -> str: ...
    @property
    def audience(self) -> str: ...
    @property
    def issuer(self) -> str: ...


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Seen:
    incoming: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    callback_rejections: int = 0
    media: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    media_headers: list[dict[str, str]] = field(default_factory=list)
    media_rejections: int = 0
    transcription: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    arrivals: dict[str, list[float]] = field(default_factory=dict)  # monotonic, per media message
    answered: list[str] = field(default_factory=list)

    def callback_types(self, call_id: str | None = None) -> list[str]:
        return [
            e["type"].removeprefix("Microsoft.Communication.")
            for e in self.callbacks
            if call_id is None or e["data"]["callConnectionId"] == call_id
        ]


class FakeGateway:
    """Answers every call with media + transcription; ``media_hook`` may talk back on the socket."""

    def __init__(
        self,
        acs: AcsView,
        *,
        audio_format: str = "pcm16KMono",
        channel_type: str = "mixed",
        access_key: str | None = None,
        media_hook: MediaHook | None = None,
        start_media: bool = True,
        dtmf: bool = False,
        verify_tokens: bool = True,
        reject: str | None = None,
        callback_gate: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.acs = acs
        self.reject = reject  # a CallRejectReason: refuse every call with it instead of answering
        # Callbacks are answered once this returns (503 after CALLBACK_GATE_S): a slow app.
        self.callback_gate = callback_gate
        self.audio_format = audio_format
        self.channel_type = channel_type
        self.media_hook = media_hook
        self.start_media = start_media
        self.dtmf = dtmf
        self.verify_tokens = verify_tokens
        self.seen = Seen()
        self.answer_errors: list[Exception] = []
        self.client = CallAutomationClient(
            acs.endpoint, AzureKeyCredential(access_key or acs.access_key)
        )
        self._jwks = jwt.PyJWKClient(acs.jwks_url)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = _Server(
            uvicorn.Config(self._app(), log_level="warning", lifespan="off", ws="websockets-sansio")
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeGateway:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        await self.client.close()

    def verify(self, authorization: str | None) -> bool:
        if not self.verify_tokens:
            return True
        if not authorization or not authorization.startswith("Bearer "):
            return False
        token = authorization.removeprefix("Bearer ")
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.acs.audience,
                issuer=self.acs.issuer,
            )
        except jwt.PyJWTError:
            return False
        return True

    def _app(self) -> Starlette:
        ws_base = self.url.replace("http://", "ws://")

        async def incoming(request: Request) -> Response:
            events = orjson.loads(await request.body())
            if request.headers.get("aeg-event-type") == "SubscriptionValidation":
                code = events[0]["data"]["validationCode"]
                return JSONResponse({"validationResponse": code})
            for event in events:
                self.seen.incoming.append(event)
                if self.reject is not None:
                    try:
                        await self.client.reject_call(
                            event["data"]["incomingCallContext"], call_reject_reason=self.reject
                        )
                    except Exception as exc:  # recorded for the test to inspect
                        self.answer_errors.append(exc)
                        return Response(status_code=500)
                    continue
                try:
                    props = await self.client.answer_call(
                        event["data"]["incomingCallContext"],
                        f"{self.url}/api/callbacks",
                        media_streaming=MediaStreamingOptions(
                            transport_url=f"{ws_base}/ws/media",
                            transport_type="websocket",
                            content_type="audio",
                            audio_channel_type=self.channel_type,
                            start_media_streaming=self.start_media,
                            enable_bidirectional=True,
                            audio_format=AudioFormat(self.audio_format),
                            enable_dtmf_tones=self.dtmf,
                        ),
                        transcription=TranscriptionOptions(
                            transport_url=f"{ws_base}/ws/transcription",
                            transport_type="websocket",
                            locale="en-US",
                            start_transcription=True,
                            enable_intermediate_results=True,
                        ),
                        operation_context="fake-answer",
                    )
                except Exception as exc:  # recorded for the test to inspect
                    self.answer_errors.append(exc)
                    return Response(status_code=500)
                self.seen.answered.append(str(props.call_connection_id))
            return Response(status_code=200)

        async def callbacks(request: Request) -> Response:
            if not await asyncio.to_thread(self.verify, request.headers.get("authorization")):
                self.seen.callback_rejections += 1
                return Response(status_code=401)
            if self.callback_gate is not None:
                try:
                    await asyncio.wait_for(self.callback_gate(), CALLBACK_GATE_S)
                except TimeoutError:
                    return Response(status_code=503)
            self.seen.callbacks.extend(orjson.loads(await request.body()))
            return Response(status_code=200)

        async def media(ws: WebSocket) -> None:
            await self._socket(ws, self.seen.media, self.media_hook)

        async def transcription(ws: WebSocket) -> None:
            await self._socket(ws, self.seen.transcription, None)

        return Starlette(
            routes=[
                Route("/api/incoming-call", incoming, methods=["POST"]),
                Route("/api/callbacks", callbacks, methods=["POST"]),
                WebSocketRoute("/ws/media", media),
                WebSocketRoute("/ws/transcription", transcription),
            ]
        )

    async def _socket(
        self, ws: WebSocket, store: dict[str, list[dict[str, Any]]], hook: MediaHook | None
    ) -> None:
        await ws.accept()
        if not await asyncio.to_thread(self.verify, ws.headers.get("authorization")):
            self.seen.media_rejections += 1
            await ws.close(code=POLICY_VIOLATION)
            return
        call_id = ws.headers["x-ms-call-connection-id"]
        self.seen.media_headers.append(dict(ws.headers))
        messages = store.setdefault(call_id, [])
        media = store is self.seen.media
        arrivals = self.seen.arrivals.setdefault(call_id, []) if media else []
        hook_task = asyncio.create_task(hook(ws, call_id)) if hook is not None else None
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                arrivals.append(time.monotonic())
                text = message.get("text")
                if text is None:
                    messages.append({"binary": len(message.get("bytes") or b"")})
                    continue
                try:
                    messages.append(orjson.loads(text))
                except orjson.JSONDecodeError:
                    messages.append({"raw": text})
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if hook_task is not None:
                hook_task.cancel()
