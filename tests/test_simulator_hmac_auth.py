"""HMAC-SHA256 request signatures: what the SDK signs, and every way a request can fail."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from simulator import hmac_auth

KEY = base64.b64encode(secrets.token_bytes(32)).decode()
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
PATH = "/calling/callConnections:answer?api-version=2026-03-12"


def _signed(body: bytes = b"{}", key: str = KEY, when: datetime = NOW) -> hmac_auth.SignedRequest:
    date = format_datetime(when, usegmt=True)
    body_hash = hmac_auth.content_hash(body)
    message = hmac_auth.string_to_sign("POST", PATH, date, "127.0.0.1:8080", body_hash)
    return hmac_auth.SignedRequest(
        method="POST",
        path_and_query=PATH,
        host="127.0.0.1:8080",
        headers={
            "x-ms-date": date,
            "x-ms-content-sha256": body_hash,
            "authorization": "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
            f"&Signature={hmac_auth.signature(key, message)}",
        },
        body=body,
    )


def test_string_to_sign_layout() -> None:
    assert hmac_auth.string_to_sign("post", "/p?q=1", "D", "h:1", "H") == "POST\n/p?q=1\nD;h:1;H"


def test_valid_signature_passes() -> None:
    hmac_auth.verify(_signed(), KEY, NOW)


def _expect(request: hmac_auth.SignedRequest, reason: str) -> None:
    with pytest.raises(hmac_auth.HmacError) as raised:
        hmac_auth.verify(request, KEY, NOW)
    assert raised.value.reason == reason


def test_wrong_key() -> None:
    _expect(_signed(key=base64.b64encode(b"another key").decode()), "bad_signature")


def test_tampered_body() -> None:
    request = _signed()
    _expect(
        hmac_auth.SignedRequest(
            request.method, request.path_and_query, request.host, request.headers, b'{"x":1}'
        ),
        "content_hash_mismatch",
    )


def test_other_path_or_host() -> None:
    request = _signed()
    moved = hmac_auth.SignedRequest("POST", "/other", request.host, request.headers, request.body)
    _expect(moved, "bad_signature")
    rehosted = hmac_auth.SignedRequest("POST", PATH, "127.0.0.1", request.headers, request.body)
    _expect(rehosted, "bad_signature")


def test_stale_date() -> None:
    _expect(_signed(when=NOW - timedelta(hours=1)), "stale_date")


def test_missing_or_foreign_authorization() -> None:
    request = _signed()
    headers = dict(request.headers)
    del headers["authorization"]
    _expect(
        hmac_auth.SignedRequest("POST", PATH, request.host, headers, b"{}"), "missing_authorization"
    )
    headers["authorization"] = "Bearer abc"
    _expect(hmac_auth.SignedRequest("POST", PATH, request.host, headers, b"{}"), "bad_scheme")
