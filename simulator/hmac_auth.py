"""Verification of the Call Automation SDK's HMAC-SHA256 request signatures.

Pure: takes the request's parts and the access key, returns or raises; never logs keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

SIGNED_HEADERS = "x-ms-date;host;x-ms-content-sha256"
SCHEME = "HMAC-SHA256"


class HmacError(Exception):
    """The request is not signed with the resource's key; ``reason`` is a short code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SignedRequest:
    method: str
    path_and_query: str  # as sent on the wire, e.g. /calling/callConnections:answer?api-version=…
    host: str  # Host header, including the port when the endpoint has one
    headers: Mapping[str, str]  # lower-cased names
    body: bytes


def content_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def string_to_sign(method: str, path_and_query: str, date: str, host: str, body_hash: str) -> str:
    return f"{method.upper()}\n{path_and_query}\n{date};{host};{body_hash}"


def signature(access_key: str, message: str) -> str:
    """Base64 HMAC-SHA256 of ``message`` keyed by the base64-decoded access key."""
    key = base64.b64decode(access_key)
    return base64.b64encode(hmac.new(key, message.encode(), hashlib.sha256).digest()).decode()


def _parse_authorization(value: str) -> tuple[str, str]:
    scheme, _, params = value.partition(" ")
    if scheme != SCHEME:
        raise HmacError("bad_scheme")
    fields = dict(part.split("=", 1) for part in params.split("&") if "=" in part)
    if "SignedHeaders" not in fields or "Signature" not in fields:
        raise HmacError("bad_authorization")
    return fields["SignedHeaders"], fields["Signature"]


def verify(
    request: SignedRequest, access_key: str, now: datetime, max_skew_s: float = 900.0
) -> None:
    """Raise ``HmacError`` unless the request carries a valid, fresh signature over its body."""
    authorization = request.headers.get("authorization")
    if not authorization:
        raise HmacError("missing_authorization")
    signed_headers, claimed = _parse_authorization(authorization)
    if signed_headers.lower() != SIGNED_HEADERS:
        raise HmacError("unsupported_signed_headers")
    date = request.headers.get("x-ms-date")
    body_hash = request.headers.get("x-ms-content-sha256")
    if not date or body_hash is None:
        raise HmacError("missing_signed_header")
    if not hmac.compare_digest(body_hash, content_hash(request.body)):
        raise HmacError("content_hash_mismatch")
    try:
        sent_at = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise HmacError("bad_date") from None
    if sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)
    if abs((now - sent_at).total_seconds()) > max_skew_s:
        raise HmacError("stale_date")
    expected = string_to_sign(request.method, request.path_and_query, date, request.host, body_hash)
    try:
        computed = signature(access_key, expected)
    except (binascii.Error, ValueError):
        raise HmacError("bad_key") from None
    if not hmac.compare_digest(computed, claimed):
        raise HmacError("bad_signature")
