"""``AcsStandIn``: the local Azure Communication Services, served on a loopback port in-process.

Ties the REST endpoint, the token issuer and the simulated calls together and is their directory;
never reaches beyond the addresses it is given (the gateway's) and its own loopback socket.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import uuid
from datetime import UTC, datetime
from types import TracebackType

import orjson
import uvicorn
from starlette import status

from gateway.embedded_server import EmbeddedServer  # uvicorn, minus its signal capture
from simulator import wire
from simulator.call import CallEnv, SimCall, event_grid_headers
from simulator.http_post import Poster, PostFailed
from simulator.jwt_issuer import ACS_ISSUER, JwtIssuer
from simulator.report import CallReport
from simulator.rest_api import RestCall, RestError, build_app
from simulator.script import CallerScript
from simulator.wire import Json

DEFAULT_EVENT_GRID_PATH = "/api/incoming-call"
HTTP_TIMEOUT_S = 30.0


class AcsStandIn:
    """A local ACS resource. Use as ``async with AcsStandIn() as acs:``.

    ``endpoint`` and ``access_key`` are what an app hands to ``CallAutomationClient``; ``issuer``,
    ``jwks_url`` and ``audience`` are what it verifies callback and WebSocket tokens against.
    """

    def __init__(
        self,
        *,
        access_key: str | None = None,
        audience: str | None = None,
        issuer: str = ACS_ISSUER,
        host: str = "127.0.0.1",
        port: int = 0,
        event_grid_path: str = DEFAULT_EVENT_GRID_PATH,
        answer_timeout_s: float = 10.0,
        connect_delay_s: float = 0.05,
        socket_grace_s: float = 2.0,
    ) -> None:
        self.access_key = access_key or base64.b64encode(secrets.token_bytes(64)).decode()
        self.audience = audience or str(uuid.uuid4())  # the resource's immutable id
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        bound_host, bound_port = self._socket.getsockname()[:2]
        self.endpoint = f"http://{bound_host}:{bound_port}"
        self.tokens = JwtIssuer(issuer, self.audience, f"{self.endpoint}/calling/keys")
        self.event_grid_path = event_grid_path
        self.answer_timeout_s = answer_timeout_s
        self.connect_delay_s = connect_delay_s
        self.socket_grace_s = socket_grace_s
        self.calls: dict[str, SimCall] = {}  # live calls by call connection id
        self._ringing: dict[str, SimCall] = {}  # by incomingCallContext
        self._server: EmbeddedServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self._http: Poster | None = None
        self._placed = 0

    # --- what an app is configured with -----------------------------------------------------

    @property
    def issuer(self) -> str:
        return self.tokens.issuer

    @property
    def jwks_url(self) -> str:
        return self.tokens.jwks_url

    @property
    def openid_configuration_url(self) -> str:
        return f"{self.endpoint}/calling/.well-known/acsopenidconfiguration"

    @property
    def connection_string(self) -> str:
        """``endpoint=…;accesskey=…`` (note: the SDK's parser forces https; see module docs)."""
        return f"endpoint={self.endpoint}/;accesskey={self.access_key}"

    @property
    def topic(self) -> str:
        return (
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rtvoice"
            f"/providers/Microsoft.Communication/communicationServices/stand-in-{self.audience[:8]}"
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> AcsStandIn:
        if self._serving is not None:
            return self
        app = build_app(self, self.access_key, self.tokens)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", ws="none"
        )
        self._server = EmbeddedServer(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        self._http = Poster(HTTP_TIMEOUT_S)
        while not self._server.started:
            if self._serving.done():
                await self._serving  # surfaces the startup error
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await self._serving
        if self._http is not None:
            await self._http.close()
        self._socket.close()
        self._server = self._serving = self._http = None

    async def __aenter__(self) -> AcsStandIn:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- what the stand-in does to a gateway ----------------------------------------------

    def _env(self) -> CallEnv:
        if self._http is None:
            raise RuntimeError("AcsStandIn is not started")
        return CallEnv(
            http=self._http,
            issuer=self.tokens,
            topic=self.topic,
            event_grid_path=self.event_grid_path,
            answer_timeout_s=self.answer_timeout_s,
            connect_delay_s=self.connect_delay_s,
            socket_grace_s=self.socket_grace_s,
        )

    async def validate_subscription(self, gateway_url: str) -> bool:
        """Event Grid's handshake: the gateway must echo the validation code with HTTP 200."""
        env = self._env()
        code = str(uuid.uuid4()).upper()
        events = wire.subscription_validation_events(code, self.topic, datetime.now(UTC))
        try:
            posted = await env.http.post(
                gateway_url.rstrip("/") + self.event_grid_path,
                orjson.dumps(events),
                event_grid_headers("SubscriptionValidation"),
            )
        except PostFailed:
            return False
        if posted.status != status.HTTP_200_OK:
            return False
        try:
            reply = orjson.loads(posted.body)
        except orjson.JSONDecodeError:
            return False
        return isinstance(reply, dict) and reply.get("validationResponse") == code

    async def place_call(
        self, gateway_url: str, caller: CallerScript | None = None, index: int | None = None
    ) -> CallReport:
        """Ring the gateway, play the caller's script and return what happened."""
        if index is None:
            index = self._placed
        self._placed += 1
        call = SimCall(index, caller or CallerScript(), gateway_url, self._env())
        self._ringing[call.incoming_call_context] = call
        try:
            return await call.run()
        finally:
            self._ringing.pop(call.incoming_call_context, None)
            self.calls.pop(call.ids.call_connection_id, None)

    # --- CallDirectory (the REST endpoint's view of the calls) ------------------------------

    def answer(self, body: Json) -> Json:
        context = body.get("incomingCallContext")
        call = self._ringing.get(context) if isinstance(context, str) else None
        if call is None:
            raise RestError(
                status.HTTP_400_BAD_REQUEST, "8523", "Invalid or expired incoming call context."
            )
        properties = call.answer(body)  # raises on a bad body: the call keeps ringing
        del self._ringing[call.incoming_call_context]
        self.calls[call.ids.call_connection_id] = call
        return properties

    def reject(self, body: Json) -> None:
        context = body.get("incomingCallContext")
        call = self._ringing.get(context) if isinstance(context, str) else None
        if call is None:
            raise RestError(
                status.HTTP_400_BAD_REQUEST, "8523", "Invalid or expired incoming call context."
            )
        call.reject(body)  # raises on a bad body: the call keeps ringing
        del self._ringing[call.incoming_call_context]

    def find(self, call_connection_id: str) -> RestCall:
        call = self.calls.get(call_connection_id)
        if call is None:
            raise RestError(status.HTTP_404_NOT_FOUND, "8522", "Call not found.")
        return call
