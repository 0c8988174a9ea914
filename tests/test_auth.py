"""JWT checks against a real JWKS served over HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import (
    MAX_TOKEN_CHARS,
    AuthError,
    EventGridAuth,
    JwtPolicy,
    JwtVerifier,
    KeysUnavailable,
    SharedSecret,
    UrlSecrets,
)
from simulator.devstack.local_redis import free_port

ISSUER = "https://acscallautomation.communication.azure.com"
AUDIENCE = "resource-immutable-id"


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class _JwksServer(ThreadingHTTPServer):
    """A JWKS on loopback that counts the requests it gets."""

    hits = 0
    _counting = threading.Lock()

    def count(self) -> None:
        with self._counting:
            self.hits += 1


def _serve_jwks(signing_key: rsa.RSAPrivateKey, port: int = 0) -> _JwksServer:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        server: _JwksServer

        def do_GET(self) -> None:
            self.server.count()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = _JwksServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _keys_url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/calling/keys"


def _stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def jwks_url(signing_key: rsa.RSAPrivateKey) -> Iterator[str]:
    server = _serve_jwks(signing_key)
    yield _keys_url(server)
    _stop(server)


@pytest.fixture
def jwks_server(signing_key: rsa.RSAPrivateKey) -> Iterator[_JwksServer]:
    """A JWKS of the test's own (its request count starts at 0), stopped after the test."""
    server = _serve_jwks(signing_key)
    yield server
    _stop(server)


def _token(key: rsa.RSAPrivateKey, *, kid: str | None = "k1", **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid} if kid else None)


async def test_valid_token_is_accepted(signing_key: rsa.RSAPrivateKey, jwks_url: str) -> None:
    verifier = JwtVerifier(JwtPolicy(ISSUER, jwks_url, AUDIENCE))
    claims = await verifier.verify("Bearer " + _token(signing_key))
    assert claims["aud"] == AUDIENCE


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: None, "missing_token"),
        (lambda k: "Basic abc", "bad_scheme"),
        (lambda k: "Bearer " + "a" * MAX_TOKEN_CHARS, "invalid_token"),
        (lambda k: "Bearer " + _token(k, exp=int(time.time()) - 3600), "expired_token"),
        (lambda k: "Bearer " + _token(k, aud="someone-else"), "invalid_token"),
        (lambda k: "Bearer " + _token(k, iss="https://evil.example"), "invalid_token"),
        (lambda k: "Bearer " + _token(k)[:-4] + "AAAA", "invalid_token"),
        (
            lambda k: (
                "Bearer " + _token(rsa.generate_private_key(public_exponent=65537, key_size=2048))
            ),
            "invalid_token",
        ),
    ],
)
async def test_bad_tokens_are_refused(
    signing_key: rsa.RSAPrivateKey, jwks_url: str, make: object, reason: str
) -> None:
    verifier = JwtVerifier(JwtPolicy(ISSUER, jwks_url, AUDIENCE))
    with pytest.raises(AuthError) as info:
        await verifier.verify(make(signing_key))  # type: ignore[operator]
    assert info.value.reason == reason


async def test_keys_out_of_reach_are_not_a_bad_token(signing_key: rsa.RSAPrivateKey) -> None:
    """No JWKS to fetch is the gateway's problem: the caller is asked to retry, not refused."""
    nowhere = f"http://127.0.0.1:{free_port()}/calling/keys"
    verifier = JwtVerifier(JwtPolicy(ISSUER, nowhere, AUDIENCE))
    with pytest.raises(KeysUnavailable):
        await verifier.verify("Bearer " + _token(signing_key))


async def test_a_known_key_needs_no_key_set_read(
    signing_key: rsa.RSAPrivateKey, jwks_server: _JwksServer
) -> None:
    """Keys are remembered by kid: a token with a known kid needs no JWKS read (nor a thread),
    and still gets every check."""
    verifier = JwtVerifier(JwtPolicy(ISSUER, _keys_url(jwks_server), AUDIENCE))
    await verifier.verify("Bearer " + _token(signing_key))
    _stop(jwks_server)  # the key set is out of reach from now on
    assert (await verifier.verify("Bearer " + _token(signing_key)))["aud"] == AUDIENCE
    with pytest.raises(AuthError, match="invalid_token"):  # still every check on every token
        await verifier.verify("Bearer " + _token(signing_key, aud="other"))


async def test_a_token_without_a_key_id_is_checked_against_every_signing_key(
    signing_key: rsa.RSAPrivateKey, jwks_url: str
) -> None:
    """The ACS documentation promises no header fields: a token without ``kid`` is tried
    against each key of the set, and gets every check."""
    verifier = JwtVerifier(JwtPolicy(ISSUER, jwks_url, AUDIENCE))

    def unnamed(key: rsa.RSAPrivateKey, **claims: object) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
        return "Bearer " + jwt.encode(payload, key, algorithm="RS256")

    assert (await verifier.verify(unnamed(signing_key)))["aud"] == AUDIENCE
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token, reason in [
        (unnamed(other_key), "invalid_token"),
        (unnamed(signing_key, aud="other"), "invalid_token"),
        (unnamed(signing_key, exp=int(time.time()) - 3600), "expired_token"),
    ]:
        with pytest.raises(AuthError) as info:
            await verifier.verify(token)
        assert info.value.reason == reason


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each PyJWKClient look-up (each a thread hop, maybe a JWKS fetch) was made, by
    method name; only verifiers made after this fixture are counted."""
    made: Counter[str] = Counter()
    counting = threading.Lock()
    for name in ("get_signing_key", "get_signing_keys"):
        original = getattr(jwt.PyJWKClient, name)

        def counted(self: jwt.PyJWKClient, *args: Any, _f: Any = original, _n: str = name) -> Any:
            with counting:
                made[_n] += 1
            return _f(self, *args)

        monkeypatch.setattr(jwt.PyJWKClient, name, counted)
    return made


BURST = 20


@pytest.mark.parametrize("kid", ["k1", None], ids=["kid", "no_kid"])
async def test_a_burst_on_a_cold_verifier_makes_one_key_lookup(
    signing_key: rsa.RSAPrivateKey,
    jwks_server: _JwksServer,
    lookups: Counter[str],
    kid: str | None,
) -> None:
    """Concurrent first tokens share one look-up of their key (one thread hop, one JWKS fetch),
    not one each: a cold gateway's first burst of callbacks is no herd against the issuer."""
    verifier = JwtVerifier(JwtPolicy(ISSUER, _keys_url(jwks_server), AUDIENCE))
    token = "Bearer " + _token(signing_key, kid=kid)
    claims = await asyncio.gather(*(verifier.verify(token) for _ in range(BURST)))
    assert [c["aud"] for c in claims] == [AUDIENCE] * BURST
    assert lookups["get_signing_key" if kid else "get_signing_keys"] == 1
    assert jwks_server.hits == 1


async def test_a_failed_lookup_reaches_every_waiter(
    signing_key: rsa.RSAPrivateKey, jwks_url: str, lookups: Counter[str]
) -> None:
    """The one shared look-up's error is each waiter's: an unknown kid is a bad token for every
    one, keys out of reach a retry for every one."""
    verifier = JwtVerifier(JwtPolicy(ISSUER, jwks_url, AUDIENCE))
    unknown = "Bearer " + _token(signing_key, kid="k-unknown")
    refused = await asyncio.gather(
        *(verifier.verify(unknown) for _ in range(BURST)), return_exceptions=True
    )
    assert [type(e) for e in refused] == [AuthError] * BURST
    assert {e.reason for e in refused if isinstance(e, AuthError)} == {"invalid_token"}
    assert lookups["get_signing_key"] == 1

    nowhere = f"http://127.0.0.1:{free_port()}/calling/keys"
    unreachable = JwtVerifier(JwtPolicy(ISSUER, nowhere, AUDIENCE))
    good = "Bearer " + _token(signing_key)
    retried = await asyncio.gather(
        *(unreachable.verify(good) for _ in range(BURST)), return_exceptions=True
    )
    assert [type(e) for e in retried] == [KeysUnavailable] * BURST
    assert lookups["get_signing_key"] == 2
    # A look-up that failed is not remembered: the next token asks again.
    with pytest.raises(KeysUnavailable):
        await unreachable.verify(good)
    assert lookups["get_signing_key"] == 3


async def test_a_cancelled_waiter_leaves_the_shared_lookup_to_the_others(
    signing_key: rsa.RSAPrivateKey, jwks_server: _JwksServer, lookups: Counter[str]
) -> None:
    verifier = JwtVerifier(JwtPolicy(ISSUER, _keys_url(jwks_server), AUDIENCE))
    token = "Bearer " + _token(signing_key)
    gone = asyncio.create_task(verifier.verify(token))
    staying = asyncio.create_task(verifier.verify(token))
    await asyncio.sleep(0)  # both wait on the one look-up now
    gone.cancel()
    assert (await staying)["aud"] == AUDIENCE
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert lookups["get_signing_key"] == 1
    assert jwks_server.hits == 1


async def test_warming_up_fills_the_key_cache(
    signing_key: rsa.RSAPrivateKey, jwks_server: _JwksServer, lookups: Counter[str]
) -> None:
    verifier = JwtVerifier(JwtPolicy(ISSUER, _keys_url(jwks_server), AUDIENCE))
    assert await verifier.warm() is True
    assert jwks_server.hits == 1
    assert (await verifier.verify("Bearer " + _token(signing_key)))["aud"] == AUDIENCE
    assert jwks_server.hits == 1  # the token's key was known: no JWKS request, no thread hop
    assert lookups["get_signing_key"] == 0


async def test_warming_up_without_the_key_set_only_says_so(
    signing_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """No JWKS at start-up is no crash: a warning naming only the error's type, and the first
    token fetches the keys as before (here: still out of reach, a retry)."""
    nowhere = f"http://127.0.0.1:{free_port()}/calling/keys"
    verifier = JwtVerifier(JwtPolicy(ISSUER, nowhere, AUDIENCE))
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        assert await verifier.warm() is False
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "PyJWKClientConnectionError" in record.getMessage()
    assert "127.0.0.1" not in record.getMessage()
    with pytest.raises(KeysUnavailable):
        await verifier.verify("Bearer " + _token(signing_key))


async def test_keys_out_of_reach_at_start_up_are_fetched_once_the_issuer_is_back(
    signing_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica that started while the issuer was unreachable keeps asking, so the first
    tokens after it comes back find the keys known; one warning, not one per retry."""
    port = free_port()
    verifier = JwtVerifier(JwtPolicy(ISSUER, f"http://127.0.0.1:{port}/calling/keys", AUDIENCE))
    with caplog.at_level(logging.DEBUG, logger="gateway.auth"):
        warming = asyncio.create_task(verifier.keep_warm(retry_s=0.05))
        await asyncio.sleep(0.3)  # a few retries against nothing
        assert not warming.done()
        server = _serve_jwks(signing_key, port)
        try:
            await asyncio.wait_for(warming, 5.0)
            assert server.hits == 1
            assert (await verifier.verify("Bearer " + _token(signing_key)))["aud"] == AUDIENCE
            assert server.hits == 1  # the token found its key known
        finally:
            _stop(server)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) > 1


def test_url_secrets_constant_time_verify() -> None:
    url_secrets = UrlSecrets(b"s" * 32)
    nonce = url_secrets.new_nonce()
    assert url_secrets.verify(nonce, url_secrets.sign(nonce)) == nonce
    with pytest.raises(AuthError, match="bad_secret"):
        url_secrets.verify(nonce, "é" * 32)  # not ASCII: refused, never a TypeError
    with pytest.raises(AuthError, match="bad_secret"):
        url_secrets.verify("n" * 10_000, "0" * 32)
    with pytest.raises(AuthError, match="bad_secret"):
        url_secrets.verify(nonce, "0" * 32)
    with pytest.raises(AuthError, match="missing_secret"):
        url_secrets.verify(nonce, None)
    with pytest.raises(ValueError, match="16 bytes"):
        UrlSecrets(b"short")


async def test_event_grid_secret_and_entra_token_both_required_when_both_set(
    signing_key: rsa.RSAPrivateKey, jwks_url: str
) -> None:
    entra = JwtVerifier(JwtPolicy(ISSUER, jwks_url, AUDIENCE))
    both = EventGridAuth(SharedSecret("webhook-secret-0123"), entra)
    await both.verify("webhook-secret-0123", "Bearer " + _token(signing_key))
    for code, authorization, reason in [
        (None, "Bearer " + _token(signing_key), "missing_secret"),
        ("webhook-secret-0124", "Bearer " + _token(signing_key), "bad_secret"),
        ("webhook-secret-0123", None, "missing_token"),
        ("webhook-secret-0123", "Bearer " + _token(signing_key, aud="other"), "invalid_token"),
    ]:
        with pytest.raises(AuthError) as info:
            await both.verify(code, authorization)
        assert info.value.reason == reason
    await EventGridAuth(None, entra).verify(None, "Bearer " + _token(signing_key))
    with pytest.raises(ValueError):
        EventGridAuth(None, None)
    with pytest.raises(ValueError):
        SharedSecret("short")
