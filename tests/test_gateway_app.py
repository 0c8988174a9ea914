"""The gateway's HTTP routes on their own: Event Grid input, refusals, health and metrics.

End-to-end behaviour with calls is in test_gateway_e2e.py; these need Redis (and Ray for
readiness) but no ACS.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from actors.config import CallActorConfig
from gateway.acs_events import MAX_BODY_BYTES
from gateway.answering import MEDIA_PATH
from gateway.app import Gateway, create_app, stream_call_id
from gateway.auth import AuthError
from gateway.call_binding import CallBindings
from gateway.service import build_gateway, event_grid_auth, token_verifier
from simulator.devstack.local_redis import free_port
from simulator.jwt_issuer import JwtIssuer
from storage.keys import RedisKeyManager
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import ConfigError, Settings

EVENT_GRID_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
EVENT_GRID_SECRET = "event-grid-secret-0123456789"
WEBHOOK = f"/api/incoming-call?code={EVENT_GRID_SECRET}"


def _gateway(redis_url: str, keys: RedisKeyManager, **changes: object) -> Gateway:
    settings = Settings(
        redis_url=redis_url,
        public_url="http://127.0.0.1:1",
        acs_endpoint="http://127.0.0.1:1",
        acs_access_key=SecretStr("a2V5"),
        gateway_secret=SecretStr("test-secret-test-secret-test-secret"),
        eventgrid_secret=SecretStr(EVENT_GRID_SECRET),
        insecure_dev=True,  # no ACS JWKS to check tokens against here
        replica_id="gw-test",
    ).replace(**changes)
    redis_mgr = AsyncAzureRedisManager.from_url(redis_url, keys, op_timeout=0.5)
    return build_gateway(settings, redis_mgr, CallActorConfig.from_settings(settings))


@pytest.fixture
async def gateway(redis_url: str, key_manager: RedisKeyManager) -> AsyncIterator[Gateway]:
    gw = _gateway(redis_url, key_manager)
    yield gw
    await gw.acs.close()
    await gw.redis.close()


def _client(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gw)), base_url="http://gw"
    )


async def test_event_grid_validation_handshake(gateway: Gateway) -> None:
    body = [
        {
            "id": "1",
            "eventType": EVENT_GRID_VALIDATION,
            "subject": "",
            "eventTime": "2024-11-15T19:16:12.925Z",
            "dataVersion": "1",
            "data": {"validationCode": "abc-123"},
        }
    ]
    async with _client(gateway) as client:
        reply = await client.post(WEBHOOK, content=orjson.dumps(body))
    assert reply.status_code == 200
    assert reply.json() == {"validationResponse": "abc-123"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", 400),
        (b'"a string"', 400),
        (b"[" + b'{"id": "x"},' * 200 + b'{"id": "y"}]', 400),
        (b"[" + b" " * (MAX_BODY_BYTES + 1) + b"]", 413),
    ],
)
async def test_bad_event_grid_input_is_refused_and_counted(
    gateway: Gateway, body: bytes, code: int
) -> None:
    async with _client(gateway) as client:
        reply = await client.post(WEBHOOK, content=body)
    assert reply.status_code == code
    reason = reply.json()["error"]
    assert gateway.metrics.refused_count("event_grid", reason) == 1


async def test_callback_without_url_secret_is_401_and_counted(gateway: Gateway) -> None:
    event = {"id": "e1", "type": "Microsoft.Communication.CallConnected", "data": {}}
    async with _client(gateway) as client:
        reply = await client.post("/api/callbacks", content=orjson.dumps([event]))
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "Unauthorized"
    refused = gateway.metrics.render().decode()
    assert 'rtvoice_gateway_refused_total{input="callback"' in refused


async def test_a_batch_keeps_its_good_events_and_counts_the_malformed_one(
    gateway: Gateway,
) -> None:
    """Event Grid never retries a 400: one bad event must not take its batch's good ones."""
    other = {"id": "2", "eventType": "Microsoft.Communication.CallEnded", "data": {}}
    async with _client(gateway) as client:
        reply = await client.post(WEBHOOK, content=orjson.dumps([{"id": "1"}, other]))
    assert reply.status_code == 200
    assert gateway.metrics.refused_count("event_grid", "missing_data") == 1


async def test_cloudevents_webhook_validation_allows_the_origin(gateway: Gateway) -> None:
    """An Event Grid subscription in the CloudEvents schema validates its webhook with OPTIONS
    and WebHook-Request-Origin; the webhook's secret is still required."""
    asks = {"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "120"}
    async with _client(gateway) as client:
        allowed = await client.options(WEBHOOK, headers=asks)
        without_secret = await client.options("/api/incoming-call", headers=asks)
        without_origin = await client.options(WEBHOOK)
    assert allowed.status_code == 200
    assert allowed.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert allowed.headers["WebHook-Allowed-Rate"] == "*"
    assert without_secret.status_code == 401
    assert without_origin.status_code == 400
    assert gateway.metrics.refused_count("event_grid", "bad_origin") == 1


def _callback_url(gw: Gateway) -> tuple[str, str]:
    """A callback URL as the gateway hands ACS at answer time, and its nonce."""
    nonce = gw.url_secrets.new_nonce()
    return f"/api/callbacks?n={nonce}&s={gw.url_secrets.sign(nonce)}", nonce


async def test_callback_types_the_gateway_does_not_handle_are_acknowledged(
    gateway: Gateway,
) -> None:
    url, _ = _callback_url(gateway)
    events = [
        {"id": "e1", "type": "Contoso.Custom", "data": {}},
        {"id": "e2", "type": "Microsoft.Communication.Future", "data": {"serverCallId": "s"}},
    ]
    async with _client(gateway) as client:
        reply = await client.post(url, content=orjson.dumps(events))
    assert reply.status_code == 200
    assert gateway.metrics.refused_count("callback", "unknown_type") == 1
    assert gateway.metrics.refused_count("callback", "missing_callConnectionId") == 1


async def test_a_callback_that_overtakes_the_answer_waits_for_the_binding(
    gateway: Gateway,
) -> None:
    """ACS may post CallConnected to a replica before the answering one has bound the call to
    the URL's nonce: the callback waits for the binding (as the sockets do), not 401."""
    url, nonce = _callback_url(gateway)
    call_id = f"call-{uuid.uuid4().hex[:8]}"
    data = {"callConnectionId": call_id, "serverCallId": "s", "correlationId": "r"}
    event = {"id": "e1", "type": "Microsoft.Communication.CallConnected", "data": data}
    answering_replica = CallBindings(gateway.redis)  # another replica's view of the same Redis

    async def bind_soon() -> None:
        await asyncio.sleep(0.3)
        await answering_replica.bind(call_id, nonce, "r")

    async with _client(gateway) as client:
        reply, _ = await asyncio.gather(
            client.post(url, content=orjson.dumps([event])), bind_soon()
        )
    assert reply.status_code == 200


async def test_tokens_unchecked_for_want_of_the_issuers_keys_ask_for_a_retry(
    redis_url: str, key_manager: RedisKeyManager
) -> None:
    """ACS's signing keys out of reach: a callback gets 503 (ACS retries it) and a socket
    1013, never 401 or 1008 as if ACS had sent a bad token."""
    nowhere = f"http://127.0.0.1:{free_port()}/calling/keys"
    gw = _gateway(redis_url, key_manager, acs_audience="acs-resource-id", acs_jwks_url=nowhere)
    assert gw.verifier is not None
    token = JwtIssuer(gw.verifier.policy.issuer, "acs-resource-id", nowhere).mint(300)
    url, _ = _callback_url(gw)
    event = {"id": "e1", "type": "Microsoft.Communication.CallConnected", "data": {}}
    try:
        async with _client(gw) as client:
            reply = await client.post(
                url, content=orjson.dumps([event]), headers={"Authorization": f"Bearer {token}"}
            )
        assert reply.status_code == 503
        assert gw.metrics.refused_count("callback", "jwks_unreachable") == 1
    finally:
        await gw.acs.close()
        await gw.redis.close()


def _named_by(headers: dict[str, str], stream: str, *messages: str) -> dict[str, object]:
    """What ``stream_call_id`` makes of a socket with ``headers`` that sends ``messages``."""

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            call_id, first = await stream_call_id(websocket, stream, wait_s=5.0)
        except AuthError as exc:
            await websocket.send_json({"refused": exc.reason})
        else:
            await websocket.send_json({"call_id": call_id, "first": first})
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    with TestClient(app) as client, client.websocket_connect("/ws", headers=headers) as ws:
        for message in messages:
            ws.send_text(message)
        return dict(ws.receive_json())


def test_a_socket_is_named_by_its_header_or_by_transcription_metadata() -> None:
    """ACS names the call in x-ms-call-connection-id; a transcription socket without the
    header is named by its TranscriptionMetadata, which then reaches the actor first."""
    metadata = orjson.dumps(
        {
            "kind": "TranscriptionMetadata",
            "transcriptionMetadata": {"subscriptionId": "s", "locale": "en-US",
                                      "callConnectionId": "call-7", "correlationId": "r"},
        }
    ).decode()  # fmt: skip
    header = {"x-ms-call-connection-id": "call-7"}
    assert _named_by(header, "media") == {"call_id": "call-7", "first": None}
    assert _named_by({}, "transcription", metadata) == {"call_id": "call-7", "first": metadata}
    assert _named_by({}, "media") == {"refused": "bad_call_id"}
    audio = orjson.dumps({"kind": "AudioData", "audioData": {"data": "AAAA"}}).decode()
    assert _named_by({}, "transcription", audio) == {"refused": "bad_call_id"}
    assert _named_by({}, "transcription", "not json") == {"refused": "bad_call_id"}


@pytest.mark.slow  # starts local Ray
async def test_health_readiness_and_metrics(
    gateway: Gateway, ray_cluster: dict[str, object]
) -> None:
    async with _client(gateway) as client:
        assert (await client.get("/healthz")).text == "ok"
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
    assert ready.status_code == 200
    checks = {"ray": True, "redis": True, "capacity": True}  # the session's Ray has free slots
    assert ready.json() == {"status": "ok", "checks": checks}
    assert "rtvoice_gateway_info" in metrics.text
    # readyz pinged Redis: its latency is exported by operation and quantile.
    assert 'rtvoice_gateway_redis_op_ms{op="ping",quantile="0.99"}' in metrics.text


@pytest.mark.slow  # starts local Ray
async def test_readiness_is_degraded_without_redis(
    key_manager: RedisKeyManager, ray_cluster: dict[str, object]
) -> None:
    gw = _gateway(f"redis://127.0.0.1:{free_port()}/0", key_manager)
    try:
        async with _client(gw) as client:
            ready = await client.get("/readyz")
    finally:
        await gw.acs.close()
        await gw.redis.close()
    assert ready.status_code == 200  # calls go on from actor memory
    checks = {"ray": True, "redis": False, "capacity": True}  # free slots; spares unknown
    assert ready.json() == {"status": "degraded", "checks": checks}


def test_unchecked_tokens_or_webhook_need_the_insecure_dev_flag() -> None:
    secure = Settings(acs_audience="resource-id", eventgrid_secret=SecretStr(EVENT_GRID_SECRET))
    assert token_verifier(secure) is not None and event_grid_auth(secure.gateway) is not None
    with pytest.raises(ConfigError, match="RTVOICE_ACS_AUDIENCE"):
        token_verifier(Settings())
    with pytest.raises(ConfigError, match="RTVOICE_EVENTGRID_SECRET"):
        event_grid_auth(Settings().gateway)
    with pytest.raises(ConfigError, match="RTVOICE_EVENTGRID_SECRET"):
        event_grid_auth(Settings(eventgrid_secret=SecretStr("short")).gateway)
    with pytest.raises(ConfigError, match="TENANT_ID"):
        event_grid_auth(Settings(eventgrid_entra_audience="api://rtvoice").gateway)
    entra = Settings(eventgrid_entra_audience="api://rtvoice", eventgrid_entra_tenant_id="t1")
    assert event_grid_auth(entra.gateway) is not None
    dev = Settings(insecure_dev=True)
    assert token_verifier(dev) is None and event_grid_auth(dev.gateway) is None


async def test_webhook_without_its_secret_is_401_and_counted(gateway: Gateway) -> None:
    async with _client(gateway) as client:
        missing = await client.post("/api/incoming-call", content=b"[]")
        wrong = await client.post("/api/incoming-call?code=nope", content=b"[]")
    assert missing.status_code == wrong.status_code == 401
    assert gateway.metrics.refused_count("event_grid", "missing_secret") == 1
    assert gateway.metrics.refused_count("event_grid", "bad_secret") == 1


async def test_every_request_is_counted_by_route_and_status(gateway: Gateway) -> None:
    async with _client(gateway) as client:
        await client.get("/healthz")
        await client.get("/healthz")
        await client.post("/api/incoming-call", content=b"[]")
        await client.get("/no/such/path/abc123")
        await client.get("/api/incoming-call")  # a known route, the wrong method
    metrics = gateway.metrics
    assert metrics.request_count("/healthz", 200) == 2
    assert metrics.request_count("/api/incoming-call", 401) == 1
    assert metrics.request_count("/api/incoming-call", 405) == 1
    assert metrics.request_count("unmatched", 404) == 1  # never the raw path
    text = metrics.render().decode()
    assert "abc123" not in text
    assert 'rtvoice_gateway_request_seconds_count{route="/healthz"} 2.0' in text


async def test_websocket_is_counted_by_its_close_code(gateway: Gateway) -> None:
    sent: list[dict[str, object]] = []
    inbox = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, object]:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": MEDIA_PATH,
        "raw_path": MEDIA_PATH.encode(),
        "root_path": "",
        "scheme": "ws",
        "query_string": b"n=x&s=y",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("gw", 80),
        "subprotocols": [],
    }
    await create_app(gateway)(scope, receive, send)
    assert sent[-1] == {"type": "websocket.close", "code": 1008, "reason": ""}
    assert gateway.metrics.request_count(MEDIA_PATH, 1008) == 1
