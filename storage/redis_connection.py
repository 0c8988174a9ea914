"""The Redis connection every store shares: clients, AUTH, per-operation timeouts, JSON codec.

Owns the client, its pool and retries, Entra ID re-AUTH, the timeout and error mapping of each
operation (``_op``) and payload limits; callers never see a raw redis-py exception, and a
failure is never swallowed into "empty state". Spells no key and runs no script itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.auth.token import SimpleToken
from redis.backoff import ExponentialWithJitterBackoff

from storage.errors import (
    PayloadTooLargeError,
    RedisTimeoutError,
    RedisUnavailableError,
    SerializationError,
    StorageError,
)
from storage.keys import RedisKeyManager
from storage.latency import LatencyRecorder
from storage.redis_auth import EntraIdCredentialProvider
from storage.redis_health import RedisHealth, memory_from_info, pool_usage
from storage.settings import ConfigError, StorageSettings

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from redis.commands.core import AsyncScript


@dataclass(frozen=True)
class PayloadLimits:
    """Size limits checked before anything is sent (bytes)."""

    max_json_bytes: int = 1024 * 1024
    max_turn_text_bytes: int = 512 * 1024
    max_binary_bytes: int = 16 * 1024 * 1024
    # Transcripts may exceed 1 MiB; the archive splits them, the outbox must carry them whole.
    max_outbox_bytes: int = 32 * 1024 * 1024


# --- pure encoding helpers -------------------------------------------------------------------


def dumps(value: Any, what: str, limit: int) -> bytes:
    """orjson-encode ``value`` or raise SerializationError / PayloadTooLargeError."""
    try:
        data = orjson.dumps(value)
    except TypeError as exc:
        raise SerializationError(f"{what} is not JSON-serializable: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLargeError(f"{what} is {len(data)} bytes, limit {limit}")
    return data


def loads(raw: bytes | str, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"stored {what} is not valid JSON: {exc}") from None


def load_dict(raw: bytes | str | None, what: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    value = loads(raw, what)
    if not isinstance(value, dict):
        raise SerializationError(f"stored {what} is not a JSON object")
    return value


def to_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _retry() -> Retry:
    # Small, fast retries. No socket timeout is set on connections: the op timeout
    # (asyncio.timeout around each operation) bounds retries, backoff and blocking reads
    # together, and redis-py drops a connection whose command was cancelled mid-flight.
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2)


class RedisConnection:
    """A Redis client with named operations: each has a timeout, and its latency is recorded
    under its name. The stores (conversation, affinity, call records, caches, outbox) extend it.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        keys: RedisKeyManager,
        *,
        op_timeout: float = 2.0,
        limits: PayloadLimits | None = None,
        token_provider: EntraIdCredentialProvider | None = None,
        owned_credential: AsyncTokenCredential | None = None,
    ) -> None:
        if op_timeout <= 0:
            raise ValueError("op_timeout must be > 0")
        self._client = client
        self.keys = keys
        self.op_timeout = op_timeout
        self.limits = limits or PayloadLimits()
        self.latency = LatencyRecorder()
        self._entra = token_provider
        self._authed_generation = 0
        self._owned_credential = owned_credential
        self._scripts: list[AsyncScript] = []
        self._register_scripts()

    def _register_scripts(self) -> None:
        """Each store registers the Lua scripts it runs here (calling super() first, each
        through ``_script``); no I/O."""

    def _script(self, lua: str) -> AsyncScript:
        script = self._client.register_script(lua)
        self._scripts.append(script)
        return script

    # -- constructors (no I/O) --

    @classmethod
    def from_url(
        cls,
        url: str,
        keys: RedisKeyManager,
        *,
        op_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        max_connections: int = 64,
        limits: PayloadLimits | None = None,
    ) -> Self:
        # Blocking pool: a burst waits for a free connection (within the op timeout) instead of
        # failing.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=op_timeout,
            socket_connect_timeout=connect_timeout,
            socket_timeout=None,
            retry=_retry(),
        )
        return cls(Redis.from_pool(pool), keys, op_timeout=op_timeout, limits=limits)

    @classmethod
    def for_azure(
        cls,
        host: str,
        keys: RedisKeyManager,
        *,
        port: int = 6380,
        access_key: str | None = None,
        credential: AsyncTokenCredential | None = None,
        username: str | None = None,
        cluster: bool = False,
        op_timeout: float = 2.0,
        connect_timeout: float = 5.0,
        max_connections: int = 64,
        limits: PayloadLimits | None = None,
        owned_credential: AsyncTokenCredential | None = None,
    ) -> Self:
        """Azure Cache for Redis over TLS, with an access key or an Entra ID token credential."""
        if (access_key is None) == (credential is None):
            raise ConfigError("for_azure needs exactly one of access_key or credential")
        if cluster and not keys.hash_tags:
            raise ConfigError("cluster mode needs RedisKeyManager(hash_tags=True)")
        provider = EntraIdCredentialProvider(credential, username=username) if credential else None
        auth: dict[str, Any] = (
            {"credential_provider": provider}
            if provider
            else {"username": username, "password": access_key}
        )
        # Per-operation timeouts come from ``_op``, so sockets themselves never time out.
        common: dict[str, Any] = {
            "host": host,
            "port": port,
            "max_connections": max_connections,
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": None,
            "retry": _retry(),
            **auth,
        }
        client: Redis | RedisCluster
        if cluster:
            client = RedisCluster(ssl=True, **common)
        else:
            pool = BlockingConnectionPool(
                connection_class=SSLConnection, timeout=op_timeout, **common
            )
            client = Redis.from_pool(pool)
        return cls(
            client,
            keys,
            op_timeout=op_timeout,
            limits=limits,
            token_provider=provider,
            owned_credential=owned_credential,
        )

    @classmethod
    def from_settings(
        cls, settings: StorageSettings, *, credential: AsyncTokenCredential | None = None
    ) -> Self:
        redis = settings.redis
        keys = RedisKeyManager(settings.app_prefix, settings.environment, hash_tags=redis.cluster)
        if redis.url:
            return cls.from_url(redis.url, keys, op_timeout=redis.op_timeout_s)
        if not redis.host:
            raise ConfigError("set RTVOICE_REDIS_URL or RTVOICE_REDIS_HOST")
        owned = None
        if redis.use_entra_id and credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = owned = DefaultAzureCredential()
        secret = redis.access_key
        return cls.for_azure(
            redis.host,
            keys,
            port=redis.port,
            access_key=secret.get_secret_value() if secret and not redis.use_entra_id else None,
            credential=credential if redis.use_entra_id else None,
            username=redis.username,
            cluster=redis.cluster,
            op_timeout=redis.op_timeout_s,
            owned_credential=owned,
        )

    # -- lifetime --

    async def close(self) -> None:
        await self._client.aclose()
        if self._owned_credential is not None:
            await self._owned_credential.close()
            self._owned_credential = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.keys.app_prefix}:{self.keys.environment})"

    # -- the op wrapper --

    @asynccontextmanager
    async def _op(self, name: str, extra_timeout: float = 0.0) -> AsyncIterator[None]:
        async with self.latency.measure(name):
            try:
                async with asyncio.timeout(self.op_timeout + extra_timeout):
                    await self._reauth_if_refreshed()
                    yield
            except (TimeoutError, redis_errors.TimeoutError) as exc:
                raise RedisTimeoutError(f"{name}: timed out after {self.op_timeout}s") from exc
            except (redis_errors.ConnectionError, OSError) as exc:
                raise RedisUnavailableError(f"{name}: redis unreachable: {exc}") from exc
            except redis_errors.RedisError as exc:
                raise StorageError(f"{name}: redis refused: {exc}") from exc

    async def _reauth_if_refreshed(self) -> None:
        """Fetch a token near expiry and AUTH idle pooled connections with it (busy ones
        re-AUTH when released), so long-lived connections never outlive their token."""
        if self._entra is None:
            return
        if self._entra.refresh_due():
            await self._entra.current_token()
        token = self._entra.token
        if token is None or self._entra.generation == self._authed_generation:
            return
        self._authed_generation = self._entra.generation
        now_ms = time.time() * 1000
        oid = self._entra.username_for(token.token)
        fresh = SimpleToken(token.token, token.expires_on * 1000, now_ms, {"oid": oid})
        if isinstance(self._client, RedisCluster):
            for node in self._client.get_nodes():
                await node.re_auth_callback(fresh)
        else:
            await self._client.connection_pool.re_auth_callback(fresh)

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every Lua script the stores run (idempotent). Redis forgets its scripts
        on a restart or a failover; loaded ahead, the first calls of a burst do not each meet
        NOSCRIPT and load them again (2.3 loads per call in a 20-call burst on a fresh Redis)."""
        async with self._op("load_scripts"):
            for script in self._scripts:
                await self._client.script_load(script.script)

    async def ping(self) -> bool:
        async with self._op("ping"):
            return bool(await self._client.ping())

    async def health(self) -> RedisHealth:
        """Redis memory against its limit and this client's pool use (monitoring baselines)."""
        async with self._op("info_memory"):
            info = await self._client.info("memory")
        used, limit = memory_from_info(info if isinstance(info, dict) else {})
        in_use, size = pool_usage(self._client)
        return RedisHealth(used, limit, in_use, size)

    # -- JSON helpers with TTL --

    async def _set_json(self, op: str, key: str, value: dict[str, Any], ttl: int) -> None:
        if not isinstance(value, dict):
            raise SerializationError(f"{op}: value must be a dict")
        data = dumps(value, op, self.limits.max_json_bytes)
        async with self._op(op):
            await self._client.set(key, data, ex=ttl)

    async def _get_json(self, op: str, key: str) -> dict[str, Any] | None:
        async with self._op(op):
            raw = await self._client.get(key)
        return load_dict(raw, op)
