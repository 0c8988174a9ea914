"""HTTP statuses and WebSocket close codes the gateway uses, named once."""

from __future__ import annotations

from typing import Final

HTTP_OK: Final = 200
HTTP_BAD_REQUEST: Final = 400
HTTP_UNAUTHORIZED: Final = 401
HTTP_PAYLOAD_TOO_LARGE: Final = 413
HTTP_SERVICE_UNAVAILABLE: Final = 503

WS_NORMAL_CLOSURE: Final = 1000
# Bad or missing token; ACS documents 1008 for this.
WS_POLICY_VIOLATION: Final = 1008
WS_INTERNAL_ERROR: Final = 1011
WS_TRY_AGAIN_LATER: Final = 1013
