"""Authentication of what reaches the gateway: RS256 JWTs (ACS callbacks and WebSockets, Event
Grid's Entra ID delivery), URL secrets (per call, and the Event Grid subscription's).

Never logs a token or a secret; failures carry only a short reason code.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import jwt

log = logging.getLogger(__name__)


class AuthError(Exception):
    """Authentication failed; ``reason`` is a short code safe to log and count."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(Exception):
    """The issuer's signing keys cannot be fetched: the request cannot be checked now (the
    gateway's problem, not the sender's: ask for a retry, never refuse as unauthorized)."""


@dataclass(frozen=True, slots=True)
class JwtPolicy:
    issuer: str
    jwks_url: str
    audience: str
    leeway_s: float = 30.0


# While the issuer's key set is out of reach at start-up, it is asked again this often, so the
# first burst of tokens after it comes back finds the keys known (not fetched in its path).
KEYS_RETRY_S = 1.0
MAX_KEYS = 64  # key ids remembered (an issuer publishes a handful)
MAX_TOKEN_CHARS = 16 * 1024  # far above any ACS or Entra ID token; refused before parsing
MAX_URL_SECRET_CHARS = 128


class JwtVerifier:
    """Verifies ``Authorization: Bearer`` tokens against the issuer's JWKS (cached by PyJWT)."""

    def __init__(self, policy: JwtPolicy) -> None:
        self.policy = policy
        # PyJWKClient caches the key set and refetches once on an unknown key id.
        self._jwks = jwt.PyJWKClient(policy.jwks_url, cache_keys=True, lifespan=3600, timeout=5)
        # The keys PyJWKClient found, by kid (it keeps them as long, cache_keys): a token with
        # a known kid is checked on the event loop, with no thread hop to ask it (0.32 -> 0.095
        # ms of CPU a token; a call's set-up checks six).
        self._keys: dict[str, Any] = {}
        # The look-up in flight (a thread asking PyJWKClient) per kid; None: the whole key set.
        # Concurrent tokens await the same one: a burst on a cold gateway made one thread hop,
        # and possibly one JWKS fetch, per token (20 hops for a burst of 20).
        self._lookups: dict[str | None, asyncio.Task[list[Any]]] = {}

    async def warm(self, *, quiet: bool = False) -> bool:
        """Fetch the issuer's signing keys now (off the event loop) and remember them by kid, so
        the first burst of tokens finds them known. False, with a warning (``quiet``: at debug
        level), if the key set cannot be fetched: then the first token fetches it, as without
        warming up."""
        try:
            await self._lookup(None)
        except Exception as exc:  # whatever the fetch met: never fail the caller (start-up)
            level = logging.DEBUG if quiet else logging.WARNING
            reason = type(exc).__name__
            log.log(level, "fetching the token issuer's signing keys failed: %s", reason)
            return False
        return True

    async def keep_warm(self, retry_s: float = KEYS_RETRY_S) -> None:
        """``warm`` until the keys are fetched, every ``retry_s`` (a start-up's first failure
        is a warning, the retries debug lines)."""
        quiet = False
        while not await self.warm(quiet=quiet):
            quiet = True
            await asyncio.sleep(retry_s)
        if quiet:
            log.info("fetched the token issuer's signing keys")

    async def verify(self, authorization: str | None) -> dict[str, object]:
        if not authorization:
            raise AuthError("missing_token")
        if len(authorization) > MAX_TOKEN_CHARS:
            raise AuthError("invalid_token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("bad_scheme")
        try:
            claims = self._decode(token, await self._signing_keys(token))
        except jwt.ExpiredSignatureError:
            raise AuthError("expired_token") from None
        except jwt.PyJWKClientConnectionError:
            raise KeysUnavailable(self.policy.jwks_url) from None
        except jwt.PyJWTError:
            raise AuthError("invalid_token") from None
        return claims

    def _decode(self, token: str, keys: list[Any]) -> dict[str, object]:
        """The claims, checked, of a token signed by one of ``keys`` (tried in turn)."""
        *others, last = keys
        for key in others:
            try:
                return self._decode_with(token, key)
            except jwt.InvalidSignatureError:
                continue
        return self._decode_with(token, last)

    def _decode_with(self, token: str, key: Any) -> dict[str, object]:
        claims: dict[str, object] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=self.policy.audience,
            issuer=self.policy.issuer,
            leeway=self.policy.leeway_s,
            options={"require": ["exp", "iss", "aud"]},
        )
        return claims

    async def _signing_keys(self, token: str) -> list[Any]:
        """The key a token's ``kid`` names; every signing key of the set for a token without
        one (the ACS documentation promises no header fields)."""
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str):
            return await self._lookup(None)
        if (key := self._keys.get(kid)) is not None:
            return [key]
        return await self._lookup(kid)

    async def _lookup(self, kid: str | None) -> list[Any]:
        """The keys of ``kid`` (None: every signing key of the set), from the one look-up in
        flight for it, started if there is none; its error is every waiter's."""
        lookup = self._lookups.get(kid)
        if lookup is None:
            lookup = asyncio.create_task(self._ask_jwks(kid))
            self._lookups[kid] = lookup
            lookup.add_done_callback(functools.partial(self._landed, kid))
        # Shielded: a waiter cancelled (its request gone) leaves the look-up to the others.
        return await asyncio.shield(lookup)

    def _landed(self, kid: str | None, lookup: asyncio.Task[list[Any]]) -> None:
        """A look-up done, whatever its outcome: the next token needing it starts a new one."""
        if self._lookups.get(kid) is lookup:
            del self._lookups[kid]
        if not lookup.cancelled():
            lookup.exception()  # its waiters got it; if all left, it is not "never retrieved"

    async def _ask_jwks(self, kid: str | None) -> list[Any]:
        # The JWKS fetch is blocking I/O (rare: cached); keep it off the event loop.
        if kid is None:
            found = await asyncio.to_thread(self._jwks.get_signing_keys)
        else:
            found = [await asyncio.to_thread(self._jwks.get_signing_key, kid)]
        for jwk in found:
            name = kid if kid is not None else jwk.key_id
            if isinstance(name, str) and (name in self._keys or len(self._keys) < MAX_KEYS):
                self._keys[name] = jwk.key
        return [jwk.key for jwk in found]


class UrlSecrets:
    """Per-call secrets for callback and WebSocket URLs, derived from one gateway secret.

    ``sign(nonce)`` is an HMAC, so every replica sharing the gateway secret verifies any call's URL
    without shared state; comparison is constant-time.
    """

    def __init__(self, gateway_secret: bytes) -> None:
        if len(gateway_secret) < 16:
            raise ValueError("gateway secret must be at least 16 bytes")
        self._key = gateway_secret

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(12)

    def sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()[:32]

    def verify(self, nonce: str | None, signature: str | None) -> str:
        """The URL's nonce once its signature checks out (it names no call: see call_binding)."""
        if not nonce or not signature:
            raise AuthError("missing_secret")
        if len(nonce) > MAX_URL_SECRET_CHARS or len(signature) > MAX_URL_SECRET_CHARS:
            raise AuthError("bad_secret")
        if not hmac.compare_digest(self.sign(nonce).encode(), signature.encode()):
            raise AuthError("bad_secret")
        return nonce


class SharedSecret:
    """A secret in a URL's query string (Event Grid's documented webhook protection)."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("a shared secret must be at least 16 characters")
        self._secret = secret.encode()

    def verify(self, presented: str | None) -> None:
        if not presented:
            raise AuthError("missing_secret")
        if not hmac.compare_digest(presented.encode(), self._secret):
            raise AuthError("bad_secret")


class EventGridAuth:
    """The Event Grid webhook's lock: a shared secret in the subscription URL (query ``code``),
    an Entra ID bearer token (Microsoft Entra-protected delivery), or both (both must pass)."""

    def __init__(self, secret: SharedSecret | None, verifier: JwtVerifier | None) -> None:
        if secret is None and verifier is None:
            raise ValueError("Event Grid authentication needs a secret or an Entra ID verifier")
        self._secret = secret
        self._verifier = verifier

    @property
    def verifier(self) -> JwtVerifier | None:
        """The Entra ID token verifier, if delivery is Entra-protected (warmed up at start-up)."""
        return self._verifier

    async def verify(self, code: str | None, authorization: str | None) -> None:
        if self._secret is not None:
            self._secret.verify(code)
        if self._verifier is not None:
            await self._verifier.verify(authorization)
