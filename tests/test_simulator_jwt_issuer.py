"""The stand-in's token authority: tokens verify against the JWKS it serves; bad ones do not."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from simulator.jwt_issuer import (
    CALLBACK_TOKEN_LIFETIME_S,
    MEDIA_TOKEN_LIFETIME_S,
    REUSE_FRACTION,
    JwtIssuer,
    TokenFault,
)
from simulator.service import AcsStandIn


def _decode(acs: AcsStandIn, token: str) -> dict[str, object]:
    key = jwt.PyJWKClient(acs.jwks_url).get_signing_key_from_jwt(token)
    claims: dict[str, object] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=acs.audience, issuer=acs.issuer
    )
    return claims


async def test_good_token_verifies_against_the_served_jwks() -> None:
    async with AcsStandIn() as acs:
        token = acs.tokens.mint(CALLBACK_TOKEN_LIFETIME_S)
        assert token is not None
        claims = await asyncio.to_thread(_decode, acs, token)
    assert claims["iss"] == "https://acscallautomation.communication.azure.com"
    assert claims["aud"] == acs.audience
    assert int(claims["exp"]) - int(claims["iat"]) == CALLBACK_TOKEN_LIFETIME_S  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (TokenFault.TAMPERED, jwt.InvalidSignatureError),
        (TokenFault.FORGED, jwt.InvalidSignatureError),
        (TokenFault.EXPIRED, jwt.ExpiredSignatureError),
        (TokenFault.WRONG_AUDIENCE, jwt.InvalidAudienceError),
    ],
)
async def test_bad_tokens_do_not_verify(fault: TokenFault, error: type[Exception]) -> None:
    async with AcsStandIn() as acs:
        token = acs.tokens.mint(CALLBACK_TOKEN_LIFETIME_S, fault)
        assert token is not None
        with pytest.raises(error):
            await asyncio.to_thread(_decode, acs, token)


def test_missing_token_means_no_header() -> None:
    acs = AcsStandIn()
    assert acs.tokens.bearer(60, TokenFault.MISSING) == {}
    assert acs.tokens.bearer(60)["Authorization"].startswith("Bearer ey")


def test_issuer_and_audience_are_configurable() -> None:
    acs = AcsStandIn(issuer="https://issuer.test", audience="resource-id")
    config = acs.tokens.openid_configuration()
    assert config["issuer"] == "https://issuer.test"
    assert config["jwks_uri"] == acs.jwks_url
    assert acs.audience == "resource-id"


def test_a_good_token_is_reused_for_part_of_its_lifetime_and_a_bad_one_never() -> None:
    """Signing is the stand-in's own CPU on the gateway's cores: a good token is handed out
    again while most of its lifetime is left (each lifetime has its own); a fault is signed
    for what it is."""
    issuer = JwtIssuer("https://issuer.test", "resource-id", "http://127.0.0.1:1/keys")
    callback = issuer.mint(CALLBACK_TOKEN_LIFETIME_S)
    assert issuer.mint(CALLBACK_TOKEN_LIFETIME_S) == callback
    assert issuer.mint(MEDIA_TOKEN_LIFETIME_S) != callback
    assert issuer.mint(CALLBACK_TOKEN_LIFETIME_S, TokenFault.FORGED) != callback
    later = time.time() + CALLBACK_TOKEN_LIFETIME_S * REUSE_FRACTION
    assert issuer.mint(CALLBACK_TOKEN_LIFETIME_S, now=later) != callback  # an explicit time
