"""Builds a gateway replica from Settings: clients, auth, affinity router, app, uvicorn server.

Configuration is read once by the caller (``load_settings``) and passed in.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import secrets
import socket
import urllib.request

import uvicorn
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from starlette.applications import Starlette

from actors.config import CallActorConfig
from actors.pool import WarmPool
from gateway.admission import Admission
from gateway.affinity_routing import AffinityRouter
from gateway.answering import AnswerOptions
from gateway.app import Gateway
from gateway.auth import EventGridAuth, JwtPolicy, JwtVerifier, SharedSecret, UrlSecrets
from gateway.call_binding import CallBindings
from gateway.embedded_server import EmbeddedServer
from gateway.metrics import GatewayMetrics
from gateway.storage_health import StorageHealth
from gateway.websocket_protocol import ReadAheadWebSocketProtocol
from storage.archive import open_archive
from storage.archive_drainer import ArchiveDrainer
from storage.keys import validate_identifier
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import AcsSettings, ConfigError, GatewaySettings, Settings

log = logging.getLogger(__name__)

WS_MAX_MESSAGE_BYTES = 1 << 20
ENTRA_LOGIN = "https://login.microsoftonline.com"


# The SDK's generated models warn, once per answer, that its own options class does not know
# this field (the SDK passes it; nothing of ours does): noise in the gateway's log per call.
SDK_UNKNOWN_FIELDS = frozenset({"speech_recognition_model_endpoint_id"})
SDK_SERIALIZATION_LOGGER = "azure.communication.callautomation._generated._utils.serialization"


class _SdkFieldNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and args[0] in SDK_UNKNOWN_FIELDS)


_SDK_FIELD_NOISE = _SdkFieldNoise()


def acs_client(settings: AcsSettings) -> CallAutomationClient:
    credentials = settings.rest_credentials()
    if credentials is None:
        raise ConfigError(
            "set RTVOICE_ACS_CONNECTION_STRING or RTVOICE_ACS_ENDPOINT + RTVOICE_ACS_ACCESS_KEY"
        )
    endpoint, key = credentials
    logging.getLogger(SDK_SERIALIZATION_LOGGER).addFilter(_SDK_FIELD_NOISE)  # once: same filter
    # With no proxy in the environment, the SDK's transport would still look for one, on a
    # thread, for every request (aiohttp's trust_env): 0.6 of the 2.3 ms of CPU an answer
    # costs. With one, the environment is honoured per request as before.
    use_env = bool(urllib.request.getproxies())
    return CallAutomationClient(endpoint, AzureKeyCredential(key), use_env_settings=use_env)


def replica_id(settings: GatewaySettings) -> str:
    value = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    return validate_identifier(value.replace(":", "-"), "RTVOICE_REPLICA_ID")


def url_secrets(settings: GatewaySettings) -> UrlSecrets:
    if settings.secret is not None:
        return UrlSecrets(settings.secret.get_secret_value().encode())
    log.warning(
        "RTVOICE_GATEWAY_SECRET not set: using a random one; "
        "replicas behind one load balancer must share a secret"
    )
    return UrlSecrets(secrets.token_bytes(32))


def token_verifier(settings: Settings) -> JwtVerifier | None:
    acs = settings.acs
    if not acs.audience:
        if not settings.gateway.insecure_dev:
            raise ConfigError(
                "RTVOICE_ACS_AUDIENCE is required (the ACS resource's immutable id): without it "
                "ACS tokens cannot be checked; set RTVOICE_INSECURE_DEV=true for local use only"
            )
        log.warning("RTVOICE_INSECURE_DEV: ACS JWTs are not checked (URL secrets only)")
        return None
    return JwtVerifier(JwtPolicy(acs.jwt_issuer, acs.jwks_url, acs.audience))


def event_grid_auth(settings: GatewaySettings) -> EventGridAuth | None:
    secret = None
    if settings.eventgrid_secret is not None:
        try:
            secret = SharedSecret(settings.eventgrid_secret.get_secret_value())
        except ValueError as exc:
            raise ConfigError(f"RTVOICE_EVENTGRID_SECRET: {exc}") from None
    verifier = None
    if settings.eventgrid_entra_audience:
        tenant = settings.eventgrid_entra_tenant_id
        issuer = settings.eventgrid_entra_issuer or (tenant and f"{ENTRA_LOGIN}/{tenant}/v2.0")
        jwks = settings.eventgrid_entra_jwks_url or (
            tenant and f"{ENTRA_LOGIN}/{tenant}/discovery/v2.0/keys"
        )
        if not issuer or not jwks:
            raise ConfigError(
                "RTVOICE_EVENTGRID_ENTRA_AUDIENCE needs RTVOICE_EVENTGRID_ENTRA_TENANT_ID "
                "(or RTVOICE_EVENTGRID_ENTRA_ISSUER and RTVOICE_EVENTGRID_ENTRA_JWKS_URL)"
            )
        verifier = JwtVerifier(JwtPolicy(issuer, jwks, settings.eventgrid_entra_audience))
    if secret is None and verifier is None:
        if not settings.insecure_dev:
            raise ConfigError(
                "the Event Grid webhook needs RTVOICE_EVENTGRID_SECRET or "
                "RTVOICE_EVENTGRID_ENTRA_AUDIENCE; set RTVOICE_INSECURE_DEV=true for local use only"
            )
        log.warning("RTVOICE_INSECURE_DEV: the Event Grid webhook is not authenticated")
        return None
    return EventGridAuth(secret, verifier)


def build_gateway(
    settings: Settings,
    redis_mgr: AsyncAzureRedisManager,
    actor_config: CallActorConfig,
    *,
    secrets_: UrlSecrets | None = None,
) -> Gateway:
    gateway = settings.gateway
    if not gateway.public_url:
        raise ConfigError("RTVOICE_PUBLIC_URL is required: the URL at which ACS reaches us")
    rid = replica_id(gateway)
    owner = f"{rid}-{secrets.token_hex(4)}"  # lease owner, unique even if replica ids are reused
    pool = WarmPool(
        redis_mgr,
        actor_config,
        owner=owner,
        min_spares=settings.actors.pool_min_spares,
        max_spares=settings.actors.pool_max_spares,
        demand_window_s=settings.actors.pool_demand_window_s,
    )
    metrics = GatewayMetrics(rid, redis_mgr.latency)
    metrics.watch_pool(pool)
    storage_health = StorageHealth(redis_mgr, rid)
    metrics.registry.register(storage_health)
    return Gateway(
        replica_id=rid,
        public_url=gateway.public_url,
        redis=redis_mgr,
        acs=acs_client(settings.acs),
        router=AffinityRouter(redis_mgr, pool, rid),
        url_secrets=secrets_ or url_secrets(gateway),
        bindings=CallBindings(redis_mgr),
        verifier=token_verifier(settings),
        event_grid_auth=event_grid_auth(gateway),
        metrics=metrics,
        answer_options=AnswerOptions.from_settings(settings.acs),
        media_wait_s=gateway.media_wait_s,
        activation_timeout_s=gateway.activation_timeout_s,
        # A spare actor already holds its slot: the spares are capacity as much as free slots.
        admission=Admission(
            settings.actors.call_slot_resource,
            spares=pool.spare_count,
            draining=functools.partial(redis_mgr.is_draining, rid),  # `rtvoice drain --replica`
        ),
        drainer=ArchiveDrainer(
            open_archive(settings.storage),
            redis_mgr,
            spool_dir=settings.storage.spool_dir,
            owner=owner,
        ),
        storage_health=storage_health,
    )


def freeze_heap() -> None:
    """Take what a gateway process holds once started (modules, clients, Ray's driver) out of
    the cyclic collector's reach: a full collection walked all of it, 86 ms with no frame of any
    call moving. Collected first, so no garbage is frozen."""
    gc.collect()
    gc.freeze()


def uvicorn_server(app: Starlette, host: str, port: int) -> EmbeddedServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        ws=ReadAheadWebSocketProtocol,
        # A transport cap (close 1009) far above any ACS message; the stream bridge refuses
        # and counts anything over its own 64 KiB limit without closing the call's socket.
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        lifespan="on",
    )
    return EmbeddedServer(config)
