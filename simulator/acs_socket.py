"""Opening a WebSocket the way ACS does: client side, with its upgrade headers and bearer token.

Owns the handshake only; what flows over the socket belongs to the media and transcription clients.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from simulator.wire import CallIds

OPEN_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # outbound audio chunks can be seconds long


class SocketRejected(Exception):
    """The gateway refused the upgrade; ``reason`` is e.g. ``http_403`` or ``handshake``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def upgrade_headers(ids: CallIds, token: str | None) -> dict[str, str]:
    headers = {
        "x-ms-call-connection-id": ids.call_connection_id,
        "x-ms-call-correlation-id": ids.correlation_id,
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def connect_as_acs(url: str, ids: CallIds, token: str | None) -> ClientConnection:
    try:
        return await connect(
            url,
            additional_headers=upgrade_headers(ids, token),
            open_timeout=OPEN_TIMEOUT_S,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,
            proxy=None,  # loopback gateways must never be reached through an environment proxy
            user_agent_header=None,
        )
    except InvalidStatus as exc:
        raise SocketRejected(f"http_{exc.response.status_code}") from None
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        raise SocketRejected(type(exc).__name__) from None


def rebase_ws_url(url: str, gateway_base: str) -> str:
    """``url``'s path and query on another gateway (``http(s)://host:port`` -> ``ws(s)://``)."""
    target, base = urlsplit(url), urlsplit(gateway_base)
    scheme = {"https": "wss", "http": "ws"}.get(base.scheme, base.scheme)
    return urlunsplit((scheme, base.netloc, target.path, target.query, ""))


class AcsSocket:
    """What both ACS client sockets share: the handshake, the close code and closing."""

    def __init__(self, url: str, ids: CallIds) -> None:
        self.url = url
        self.ids = ids
        self._ws: ClientConnection | None = None

    @property
    def open(self) -> bool:
        return self._ws is not None and self._ws.close_code is None

    @property
    def close_code(self) -> int | None:
        return None if self._ws is None else self._ws.close_code

    async def _open(self, token: str | None) -> ClientConnection:
        self._ws = await connect_as_acs(self.url, self.ids, token)
        return self._ws

    async def wait_closed(self, timeout_s: float) -> bool:
        """Whether the gateway closes the socket in time (it should, on a bad token)."""
        if self._ws is None:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ws.wait_closed()
        return self._ws.close_code is not None

    async def _close_ws(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await self._ws.close()
