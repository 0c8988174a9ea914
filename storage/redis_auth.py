"""Entra ID tokens as Redis AUTH credentials: fetched, cached and refreshed before expiry.

Owns only the token and the user name it carries; never opens a connection or sends a command
(the connection re-AUTHs with what it provides).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from redis.credentials import CredentialProvider

from storage.errors import RedisUnavailableError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

REDIS_ENTRA_SCOPE = "https://redis.azure.com/.default"


def jwt_object_id(token: str) -> str | None:
    """The ``oid`` claim of a JWT access token (unverified: Redis verifies it, we only read it)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return None
    oid = claims.get("oid") if isinstance(claims, dict) else None
    return str(oid) if oid else None


class EntraIdCredentialProvider(CredentialProvider):
    """Supplies (object id, Entra ID token) as Redis AUTH credentials.

    The token is cached and fetched again once it is within ``refresh_margin_s`` (at most a
    quarter of its lifetime) of expiry. ``generation`` grows at each fetch so the manager can
    re-AUTH pooled connections with the new token; no client is ever re-created.
    """

    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        username: str | None = None,
        scope: str = REDIS_ENTRA_SCOPE,
        refresh_margin_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential
        self._username = username
        self._scope = scope
        self._margin = refresh_margin_s
        self._clock = clock
        self._token: AccessToken | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.generation = 0

    @property
    def token(self) -> AccessToken | None:
        return self._token

    def refresh_due(self) -> bool:
        return self._token is None or self._clock() >= self._refresh_at

    async def current_token(self) -> AccessToken:
        """The cached token, fetched first if missing or close to expiry."""
        async with self._lock:  # one fetch even when many connections open at once
            if self._token is None or self.refresh_due():
                now = self._clock()
                token = await self._credential.get_token(self._scope)
                self._token = token
                self._refresh_at = token.expires_on - min(
                    self._margin, max(0.0, (token.expires_on - now) / 4)
                )
                self.generation += 1
            return self._token

    def username_for(self, token: str) -> str:
        username = self._username or jwt_object_id(token)
        if not username:
            raise RedisUnavailableError("Entra ID token has no 'oid' claim; pass username=")
        return username

    async def get_credentials_async(self) -> tuple[str, str]:
        token = await self.current_token()
        return self.username_for(token.token), token.token

    def get_credentials(self) -> tuple[str, str]:
        raise NotImplementedError("EntraIdCredentialProvider serves asyncio clients only")
