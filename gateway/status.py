"""HTTP statuses and WebSocket close codes the gateway uses, named once."""

from __future__ import annotations

from typing import Final

HTTP_OK: Final = 200
HTTP_ACCEPTED: Final = 202
HTTP_NO_CONTENT: Final = 204
HTTP_BAD_REQUEST: Final = 400
HTTP_UNAUTHORIZED: Final = 401
HTTP_NOT_FOUND: Final = 404
HTTP_PAYLOAD_TOO_LARGE: Final = 413
HTTP_UNSUPPORTED_MEDIA_TYPE: Final = 415
HTTP_BAD_GATEWAY: Final = 502
HTTP_SERVICE_UNAVAILABLE: Final = 503

WS_NORMAL_CLOSURE: Final = 1000
WS_GOING_AWAY: Final = 1001
WS_UNSUPPORTED_DATA: Final = 1003
# Bad or missing token; ACS documents 1008 for this.
WS_POLICY_VIOLATION: Final = 1008
WS_MESSAGE_TOO_BIG: Final = 1009
WS_INTERNAL_ERROR: Final = 1011
WS_TRY_AGAIN_LATER: Final = 1013
