"""The Call Automation REST endpoint as a Starlette app, plus the token issuer's public documents.

Owns HTTP concerns only (routes, HMAC check, status codes, error shape); what an operation does
to a call belongs to the ``CallDirectory`` it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import orjson
from starlette import status
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator import hmac_auth
from simulator.jwt_issuer import JwtIssuer
from simulator.wire import Json, error_body

# ACS's operation name after the colon -> the status its success returns.
ACTIONS: dict[str, int] = {
    "terminate": status.HTTP_204_NO_CONTENT,
    "play": status.HTTP_202_ACCEPTED,
    "cancelAllMediaOperations": status.HTTP_202_ACCEPTED,
    "startMediaStreaming": status.HTTP_202_ACCEPTED,
    "stopMediaStreaming": status.HTTP_202_ACCEPTED,
    "startTranscription": status.HTTP_202_ACCEPTED,
    "stopTranscription": status.HTTP_202_ACCEPTED,
    "updateTranscription": status.HTTP_202_ACCEPTED,
}


class RestError(Exception):
    """An operation failed; rendered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


class RestCall(Protocol):
    def properties(self) -> Json: ...

    def hang_up(self, for_everyone: bool) -> None: ...

    def perform(self, action: str, body: Json) -> None:
        """One of ``ACTIONS`` except ``terminate``; raises ``RestError``."""
        ...


class CallDirectory(Protocol):
    def answer(self, body: Json) -> Json:
        """Match ``incomingCallContext`` to a ringing call; returns its properties."""
        ...

    def reject(self, body: Json) -> None:
        """Match ``incomingCallContext`` to a ringing call and refuse it (``callRejectReason``)."""
        ...

    def find(self, call_connection_id: str) -> RestCall:
        """Raises ``RestError`` (404) for unknown or finished calls."""
        ...


def _error(exc: RestError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status_code)


def _json_body(body: bytes) -> Json:
    if not body:
        return {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RestError(status.HTTP_400_BAD_REQUEST, "BadRequest", "Body is not JSON.") from None
    if not isinstance(parsed, dict):
        raise RestError(status.HTTP_400_BAD_REQUEST, "BadRequest", "Body must be an object.")
    return parsed


def _check_signature(
    request: Request, body: bytes, access_key: str, now: Callable[[], datetime]
) -> None:
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    path_and_query = raw_path.decode("latin-1")
    if request.scope.get("query_string"):
        path_and_query += "?" + request.scope["query_string"].decode("latin-1")
    signed = hmac_auth.SignedRequest(
        method=request.method,
        path_and_query=path_and_query,
        host=request.headers.get("host", ""),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
    )
    try:
        hmac_auth.verify(signed, access_key, now())
    except hmac_auth.HmacError as exc:
        raise RestError(
            status.HTTP_401_UNAUTHORIZED,
            "Unauthorized",
            f"Denied by the HMAC check ({exc.reason}).",
        ) from None


def build_app(
    calls: CallDirectory,
    access_key: str,
    issuer: JwtIssuer,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Starlette:
    async def answer(request: Request) -> Response:
        body = await request.body()
        try:
            _check_signature(request, body, access_key, now)
            return JSONResponse(calls.answer(_json_body(body)))
        except RestError as exc:
            return _error(exc)

    async def reject(request: Request) -> Response:
        body = await request.body()
        try:
            _check_signature(request, body, access_key, now)
            calls.reject(_json_body(body))
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        except RestError as exc:
            return _error(exc)

    async def connection(request: Request) -> Response:
        """``/calling/callConnections/{id}`` and ``/{id}:{action}`` (the colon is ACS's)."""
        body = await request.body()
        call_id, _, action = request.path_params["target"].partition(":")
        try:
            _check_signature(request, body, access_key, now)
            if "/" in call_id:  # participants, recordings: outside what the stand-in simulates
                raise RestError(status.HTTP_501_NOT_IMPLEMENTED, "NotImplemented", "Not simulated.")
            call = calls.find(call_id)
            if not action:
                if request.method == "GET":
                    return JSONResponse(call.properties())
                if request.method == "DELETE":
                    call.hang_up(for_everyone=False)
                    return Response(status_code=status.HTTP_204_NO_CONTENT)
                raise RestError(status.HTTP_405_METHOD_NOT_ALLOWED, "BadRequest", "Bad method.")
            if request.method != "POST":
                raise RestError(status.HTTP_405_METHOD_NOT_ALLOWED, "BadRequest", "Bad method.")
            if action not in ACTIONS:
                raise RestError(
                    status.HTTP_501_NOT_IMPLEMENTED, "NotImplemented", f"{action} not simulated."
                )
            payload = _json_body(body)
            if action == "terminate":
                call.hang_up(for_everyone=True)
            else:
                call.perform(action, payload)
            return Response(status_code=ACTIONS[action])
        except RestError as exc:
            return _error(exc)

    async def keys(_: Request) -> Response:
        return JSONResponse(issuer.jwks())

    async def openid(_: Request) -> Response:
        return JSONResponse(issuer.openid_configuration())

    return Starlette(
        routes=[
            Route("/calling/callConnections:answer", answer, methods=["POST"]),
            Route("/calling/callConnections:reject", reject, methods=["POST"]),
            Route(
                "/calling/callConnections/{target:path}",
                connection,
                methods=["GET", "DELETE", "POST"],
            ),
            Route("/calling/keys", keys, methods=["GET"]),
            Route("/calling/.well-known/acsopenidconfiguration", openid, methods=["GET"]),
        ]
    )
