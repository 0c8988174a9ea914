"""The stand-in's token authority: its RSA key, JWKS, OpenID configuration and RS256 tokens.

Mints good tokens and deliberately bad ones (expired, forged, tampered, wrong audience) for
fault runs; never serves the private key and never does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ACS_ISSUER = "https://acscallautomation.communication.azure.com"
CALLBACK_TOKEN_LIFETIME_S = 300  # 5 minutes, as ACS documents for callbacks
MEDIA_TOKEN_LIFETIME_S = 86_400  # 24 hours, for media and transcription WebSockets
REUSE_FRACTION = 0.2  # a good token is handed out again until this part of its lifetime passed


class TokenFault(StrEnum):
    """How a minted token should be wrong (``none`` = a good token)."""

    NONE = "none"
    EXPIRED = "expired"  # exp in the past, beyond any sane leeway
    FORGED = "forged"  # signed by a key that is not in the JWKS, with the served key id
    TAMPERED = "tampered"  # a good token whose payload was edited after signing
    WRONG_AUDIENCE = "wrong_audience"
    MISSING = "missing"  # no Authorization header at all


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class JwtIssuer:
    def __init__(self, issuer: str, audience: str, jwks_url: str) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self._key = _new_key()
        self._forger_key: rsa.RSAPrivateKey | None = None  # made lazily: only fault runs use it
        self._good: dict[float, tuple[float, str]] = {}  # lifetime -> (issued, token)
        public_jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        # RFC 7638 thumbprint as the key id, so a rotated key gets a new kid.
        canonical = json.dumps(
            {k: public_jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True
        )
        self.kid = _b64url(hashlib.sha256(canonical.encode()).digest())
        self._public_jwk = {**public_jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._public_jwk)]}

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }

    def mint(
        self, lifetime_s: float, fault: TokenFault = TokenFault.NONE, now: float | None = None
    ) -> str | None:
        """A compact RS256 JWT, or ``None`` for ``TokenFault.MISSING``.

        A good token is reused while most of its lifetime is left (``REUSE_FRACTION``): signing
        costs the stand-in about 0.3 ms of CPU, six times per call it sets up, on the cores the
        gateway under test uses. The gateway checks every token in full either way."""
        if fault is TokenFault.MISSING:
            return None
        issued = time.time() if now is None else now
        if fault is TokenFault.NONE and now is None:
            signed_at, token = self._good.get(lifetime_s, (-math.inf, ""))
            if issued - signed_at < lifetime_s * REUSE_FRACTION:
                return token
            token = self._sign(lifetime_s, fault, issued)
            self._good[lifetime_s] = (issued, token)
            return token
        return self._sign(lifetime_s, fault, issued)

    def _sign(self, lifetime_s: float, fault: TokenFault, issued: float) -> str:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": int(issued),
            "nbf": int(issued),
            "exp": int(issued + lifetime_s),
        }
        if fault is TokenFault.EXPIRED:
            claims.update(iat=int(issued - 7200), nbf=int(issued - 7200), exp=int(issued - 3600))
        if fault is TokenFault.WRONG_AUDIENCE:
            claims["aud"] = "00000000-0000-0000-0000-000000000000"
        key = self._key
        if fault is TokenFault.FORGED:
            if self._forger_key is None:
                self._forger_key = _new_key()
            key = self._forger_key
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})
        if fault is TokenFault.TAMPERED:
            header, _, rest = token.partition(".")
            _, _, sig = rest.partition(".")
            forged_claims = {**claims, "exp": int(issued + 10 * lifetime_s)}
            payload = _b64url(json.dumps(forged_claims, separators=(",", ":")).encode())
            token = f"{header}.{payload}.{sig}"
        return token

    def bearer(self, lifetime_s: float, fault: TokenFault = TokenFault.NONE) -> dict[str, str]:
        """The ``Authorization`` header for a request, or no header for ``MISSING``."""
        token = self.mint(lifetime_s, fault)
        return {} if token is None else {"Authorization": f"Bearer {token}"}
