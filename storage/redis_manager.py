"""Every Redis operation of rtvoice, by name: sessions, checkpoints, affinity, caches, outbox.

Owns the client, its timeouts, its Lua scripts and the error mapping; callers never see a raw
redis-py exception or command, and a failure is never swallowed into "empty state".
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.auth.token import SimpleToken
from redis.backoff import ExponentialWithJitterBackoff
from redis.credentials import CredentialProvider

from storage.errors import (
    InvalidKeyError,
    PayloadTooLargeError,
    RedisTimeoutError,
    RedisUnavailableError,
    SerializationError,
    StaleEpochError,
    StorageError,
)
from storage.keys import (
    AFFINITY_LEASE_SECONDS,
    ANSWER_CLAIM_SECONDS,
    PROFILE_CACHE_SECONDS,
    TTL_POLICIES,
    Component,
    DataType,
    RedisKeyManager,
    validate_identifier,
)
from storage.latency import LatencyRecorder
from storage.settings import ConfigError, StorageSettings

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

SCHEMA_VERSION = 1
LEGACY_SCHEMA_VERSION = 0
REDIS_ENTRA_SCOPE = "https://redis.azure.com/.default"
OUTBOX_GROUP = "archiver"

_CTX_TTL = TTL_POLICIES["conversation_context"]
_HISTORY_TTL = TTL_POLICIES["session_history"]

# KEYS: context, history, epoch.
# ARGV: epoch, has_context ("1"/"0"), context_doc, context_ttl, history_ttl, turn...
# Returns {1, history_len} or {0, stored_epoch} when the writer's epoch is stale.
CHECKPOINT_LUA = """
local stored = tonumber(redis.call('GET', KEYS[3]) or '0')
local epoch = tonumber(ARGV[1])
if stored > epoch then return {0, stored} end
if ARGV[6] == '1' then redis.call('DEL', KEYS[2]) end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
else
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local n = 0
for i = 7, #ARGV, 1000 do
  n = redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if n == 0 then n = redis.call('LLEN', KEYS[2]) end
if n > 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
if epoch > stored then
  redis.call('SET', KEYS[3], epoch, 'EX', ARGV[5])
elseif stored > 0 then
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return {1, n}
"""

# KEYS: legacy hash, context, history. ARGV: corememory seen, chat_history seen,
# context_doc, context_ttl, history_ttl, turn...
# Returns 1 migrated, 0 nothing to do (already current or legacy gone), -1 legacy changed.
MIGRATE_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local core = redis.call('HGET', KEYS[1], 'corememory') or ''
local hist = redis.call('HGET', KEYS[1], 'chat_history') or ''
if core ~= ARGV[1] or hist ~= ARGV[2] then return -1 end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
for i = 6, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if #ARGV >= 6 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: affinity. ARGV: record json, epoch, lease. Compare-and-set on the epoch.
CLAIM_AFFINITY_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and tonumber(rec['epoch'] or 0) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""

# KEYS: affinity, auth. ARGV: action ("renew"/"release"), epoch, lease, auth TTL. Owner-only.
# A renewal also slides the call's URL binding (auth), so it lives as long as the call does;
# a release leaves it to expire, so late callbacks of the ended call still authenticate.
OWNER_AFFINITY_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if tonumber(rec['epoch']) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[1] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return 1
"""

# KEYS: lease. ARGV: owner, seconds. Take a free lease or renew one's own; 1 when held.
LEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# KEYS: affinity. ARGV: "1" + replica id + socket opening time to set, or "0" to clear.
# A socket opened earlier than the recorded one never overwrites it. Keeps the lease TTL.
MEDIA_REPLICA_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if ARGV[1] == '1' then
  local since = tonumber(ARGV[3])
  if type(rec['media_since']) == 'number' and rec['media_since'] > since then return 0 end
  rec['media_replica'] = ARGV[2]
  rec['media_since'] = since
else
  rec['media_replica'] = cjson.null
end
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
return 1
"""


@dataclass(frozen=True)
class PayloadLimits:
    """Size limits checked before anything is sent (bytes)."""

    max_json_bytes: int = 1024 * 1024
    max_turn_text_bytes: int = 512 * 1024
    max_binary_bytes: int = 16 * 1024 * 1024
    # Transcripts may exceed 1 MiB; the archive splits them, the outbox must carry them whole.
    max_outbox_bytes: int = 32 * 1024 * 1024


@dataclass
class ConversationSnapshot:
    context: dict[str, Any]
    turns: list[dict[str, Any]]
    epoch: int
    schema_version: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a call actor's stream endpoint listens: the one shape the actor publishes, the
    affinity record stores and the gateway connects to. The token opens it; the epoch fences."""

    host: str
    port: int
    token: str
    epoch: int


@dataclass
class AffinityRecord:
    """``call:{id}:affinity``: the call's endpoint, its node and the replica holding its media."""

    call_id: str
    host: str
    port: int
    token: str
    epoch: int
    node_id: str = ""
    media_replica: str | None = None
    updated_at: float = 0.0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.token, self.epoch)

    @classmethod
    def of(cls, call_id: str, endpoint: Endpoint, node_id: str, now: float) -> AffinityRecord:
        return cls(
            call_id, endpoint.host, endpoint.port, endpoint.token, endpoint.epoch, node_id,
            updated_at=now,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AffinityRecord:
        try:
            return cls(
                call_id=str(data["call_id"]),
                host=str(data["host"]),
                port=int(data["port"]),
                token=str(data["token"]),
                epoch=int(data["epoch"]),
                node_id=str(data.get("node_id") or ""),
                media_replica=data.get("media_replica"),
                updated_at=float(data.get("updated_at") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"invalid affinity record: {exc!r}") from None


@dataclass
class OutboxEntry:
    entry_id: str
    kind: str
    document: dict[str, Any] = field(default_factory=dict)


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


def _load_dict(raw: bytes | str | None, what: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    value = loads(raw, what)
    if not isinstance(value, dict):
        raise SerializationError(f"stored {what} is not a JSON object")
    return value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _legacy_turn(message: Any, participant: str | None) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise SerializationError("legacy chat_history entry is not an object")
    content = message.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:  # multimodal parts etc.: keep them readable rather than drop them
        text = orjson.dumps(content).decode()
    stamp = message.get("timestamp")
    meta = {k: v for k, v in message.items() if k not in ("role", "content", "timestamp")}
    meta["migrated_from_schema"] = LEGACY_SCHEMA_VERSION
    # Same shape as conversation.Turn.to_dict() without seq (seq is the list position).
    return {
        "role": str(message.get("role") or "unknown"),
        "text": text,
        "timestamp": float(stamp) if isinstance(stamp, int | float) else 0.0,
        "participant": participant,
        "confidence": None,
        "meta": meta,
    }


def parse_legacy_session(
    corememory: bytes | str | None, chat_history: bytes | str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Legacy ``session:{id}`` fields -> (context, turns). Agent-keyed histories are concatenated
    agent by agent (the legacy layout has no timestamps to interleave them) with participant set."""
    context = _load_dict(corememory, "legacy corememory") or {}
    history = loads(chat_history, "legacy chat_history") if chat_history else []
    if isinstance(history, list):
        return context, [_legacy_turn(m, None) for m in history]
    if isinstance(history, dict):
        turns: list[dict[str, Any]] = []
        for agent, messages in history.items():
            if not isinstance(messages, list):
                raise SerializationError(f"legacy chat_history[{agent!r}] is not a list")
            turns.extend(_legacy_turn(m, str(agent)) for m in messages)
        return context, turns
    raise SerializationError("legacy chat_history is neither a list nor an object")


def jwt_object_id(token: str) -> str | None:
    """The ``oid`` claim of a JWT access token (unverified: Redis verifies it, we only read it)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return None
    oid = claims.get("oid") if isinstance(claims, dict) else None
    return str(oid) if oid else None


# --- Entra ID ------------------------------------------------------------------------------


class EntraIdCredentialProvider(CredentialProvider):
    """Supplies (object id, Entra ID token) as Redis AUTH credentials.

    The token is cached and fetched again once it is within ``refresh_margin_s`` (at most a
    quarter of its lifetime) of expiry. ``generation`` grows at each fetch so the manager can
    re-AUTH pooled connections with the new token; no client is ever re-created.
    """

    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        username: str | None = None,
        scope: str = REDIS_ENTRA_SCOPE,
        refresh_margin_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential
        self._username = username
        self._scope = scope
        self._margin = refresh_margin_s
        self._clock = clock
        self._token: AccessToken | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.generation = 0

    @property
    def token(self) -> AccessToken | None:
        return self._token

    def refresh_due(self) -> bool:
        return self._token is None or self._clock() >= self._refresh_at

    async def current_token(self) -> AccessToken:
        """The cached token, fetched first if missing or close to expiry."""
        async with self._lock:  # one fetch even when many connections open at once
            if self._token is None or self.refresh_due():
                now = self._clock()
                token = await self._credential.get_token(self._scope)
                self._token = token
                self._refresh_at = token.expires_on - min(
                    self._margin, max(0.0, (token.expires_on - now) / 4)
                )
                self.generation += 1
            return self._token

    def username_for(self, token: str) -> str:
        username = self._username or jwt_object_id(token)
        if not username:
            raise RedisUnavailableError("Entra ID token has no 'oid' claim; pass username=")
        return username

    async def get_credentials_async(self) -> tuple[str, str]:
        token = await self.current_token()
        return self.username_for(token.token), token.token

    def get_credentials(self) -> tuple[str, str]:
        raise NotImplementedError("EntraIdCredentialProvider serves asyncio clients only")


def _retry() -> Retry:
    # Small, fast retries. No socket timeout is set on connections: the op timeout
    # (asyncio.timeout around each operation) bounds retries, backoff and blocking reads
    # together, and redis-py drops a connection whose command was cancelled mid-flight.
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2)


# --- the manager ---------------------------------------------------------------------------


class AsyncAzureRedisManager:
    """Named Redis operations with a timeout each, latency recorded under the method name.

    Cluster mode (``for_azure(cluster=True)``) requires a key manager with ``hash_tags=True``
    so that the keys of one conversation or call share a slot (scripts touch them together);
    the legacy ``session:{id}`` migration needs a standalone server (its key has no hash tag).
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
        self._checkpoint = client.register_script(CHECKPOINT_LUA)
        self._migrate = client.register_script(MIGRATE_LUA)
        self._claim_affinity = client.register_script(CLAIM_AFFINITY_LUA)
        self._owner_affinity = client.register_script(OWNER_AFFINITY_LUA)
        self._media_replica = client.register_script(MEDIA_REPLICA_LUA)
        self._lease = client.register_script(LEASE_LUA)

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
    ) -> AsyncAzureRedisManager:
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
    ) -> AsyncAzureRedisManager:
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
        client: Redis | RedisCluster
        if cluster:
            client = RedisCluster(
                host=host,
                port=port,
                ssl=True,
                socket_connect_timeout=connect_timeout,
                socket_timeout=None,
                max_connections=max_connections,
                retry=_retry(),
                **auth,
            )
        else:
            pool = BlockingConnectionPool(
                connection_class=SSLConnection,
                host=host,
                port=port,
                max_connections=max_connections,
                timeout=op_timeout,
                socket_connect_timeout=connect_timeout,
                socket_timeout=None,
                retry=_retry(),
                **auth,
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
    ) -> AsyncAzureRedisManager:
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

    async def __aenter__(self) -> AsyncAzureRedisManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncAzureRedisManager({self.keys.app_prefix}:{self.keys.environment})"

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

    async def ping(self) -> bool:
        async with self._op("ping"):
            return bool(await self._client.ping())

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
        return _load_dict(raw, op)

    # -- call session --

    async def store_call_session(self, call_id: str, session: dict[str, Any]) -> None:
        key = self.keys.call_key(call_id, Component.SESSION)
        await self._set_json("store_call_session", key, session, _HISTORY_TTL)

    async def load_call_session(self, call_id: str) -> dict[str, Any] | None:
        key = self.keys.call_key(call_id, Component.SESSION)
        return await self._get_json("load_call_session", key)

    # -- conversation --

    def _conv_keys(self, conversation_id: str) -> tuple[str, str, str]:
        k = self.keys.conversation_key
        return (
            k(conversation_id, Component.CONTEXT),
            k(conversation_id, Component.HISTORY),
            k(conversation_id, Component.EPOCH),
        )

    async def _read_conversation(self, conversation_id: str) -> ConversationSnapshot | None:
        ctx_key, hist_key, epoch_key = self._conv_keys(conversation_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.get(ctx_key)
        pipe.lrange(hist_key, 0, -1)
        pipe.get(epoch_key)
        raw_ctx, raw_turns, raw_epoch = await pipe.execute()
        if raw_ctx is None and not raw_turns and raw_epoch is None:
            return None
        doc = _load_dict(raw_ctx, "conversation context") or {
            "schema_version": SCHEMA_VERSION,
            "context": {},
        }
        version = doc.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SerializationError(f"unsupported conversation schema_version {version!r}")
        context = doc.get("context")
        if not isinstance(context, dict):
            raise SerializationError("conversation context document has no 'context' object")
        turns = []
        for seq, raw in enumerate(raw_turns, start=1):
            turn = _load_dict(raw, "conversation turn")
            assert turn is not None
            turn["seq"] = seq
            turns.append(turn)
        return ConversationSnapshot(context, turns, int(raw_epoch or 0), version)

    async def load_conversation(self, conversation_id: str) -> ConversationSnapshot | None:
        validate_identifier(conversation_id, "conversation id")
        async with self._op("load_conversation"):
            return await self._read_conversation(conversation_id)

    async def claim_epoch(self, conversation_id: str) -> int:
        key = self._conv_keys(conversation_id)[2]
        async with self._op("claim_epoch"):
            pipe = self._client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, _HISTORY_TTL)
            epoch, _ = await pipe.execute()
        return int(epoch)

    async def current_epoch(self, conversation_id: str) -> int:
        key = self._conv_keys(conversation_id)[2]
        async with self._op("current_epoch"):
            raw = await self._client.get(key)
        return int(raw or 0)

    def _turn_payloads(self, turns: Sequence[dict[str, Any]]) -> list[bytes]:
        out = []
        for turn in turns:
            if not isinstance(turn, dict):
                raise SerializationError("a turn must be a dict")
            stored = {k: v for k, v in turn.items() if k != "seq"}  # seq = list position
            out.append(dumps(stored, "turn", self.limits.max_json_bytes))
        return out

    async def checkpoint(
        self,
        conversation_id: str,
        *,
        epoch: int,
        context: dict[str, Any] | None,
        new_turns: list[dict[str, Any]],
        replace_history: bool = False,
    ) -> int:
        """Write context + append turns + refresh TTLs in one EVALSHA, fenced by ``epoch``.

        Returns the history's length. ``replace_history`` makes ``new_turns`` the whole history
        (a writer repairing what a Redis restart without persistence lost).
        """
        keys = self._conv_keys(conversation_id)
        doc = b""
        if context is not None:
            if not isinstance(context, dict):
                raise SerializationError("context must be a dict")
            doc = dumps(
                {"schema_version": SCHEMA_VERSION, "context": context},
                "conversation context",
                self.limits.max_json_bytes,
            )
        args: list[Any] = [
            int(epoch),
            "1" if context is not None else "0",
            doc,
            _CTX_TTL,
            _HISTORY_TTL,
            "1" if replace_history else "0",
            *self._turn_payloads(new_turns),
        ]
        async with self._op("checkpoint"):
            ok, value = await self._checkpoint(keys=keys, args=args)
        if not ok:
            raise StaleEpochError(
                f"conversation {conversation_id}: epoch {epoch} is older than stored {value}"
            )
        return int(value)

    async def migrate_legacy(self, conversation_id: str) -> ConversationSnapshot | None:
        """Move a legacy ``session:{id}`` hash to the current format, once (Lua compare-and-set:
        of two concurrent loaders exactly one writes; the other reads what it wrote)."""
        legacy = self.keys.legacy_session_key(conversation_id)
        keys = (legacy, *self._conv_keys(conversation_id)[:2])
        async with self._op("migrate_legacy"):
            for _ in range(3):  # retried only if the legacy hash changed between read and write
                core, hist = await self._client.hmget(legacy, ["corememory", "chat_history"])
                if core is None and hist is None:
                    return await self._read_conversation(conversation_id)
                context, turns = parse_legacy_session(core, hist)
                doc = dumps(
                    {
                        "schema_version": SCHEMA_VERSION,
                        "context": context,
                        "migrated_from_schema": LEGACY_SCHEMA_VERSION,
                    },
                    "migrated context",
                    self.limits.max_json_bytes,
                )
                args = [core or b"", hist or b"", doc, _CTX_TTL, _HISTORY_TTL]
                args += self._turn_payloads(turns)
                result = await self._migrate(keys=keys, args=args)
                if result >= 0:
                    return await self._read_conversation(conversation_id)
            raise StorageError(f"legacy session {conversation_id} kept changing during migration")

    # -- affinity --

    async def claim_affinity(
        self, record: AffinityRecord, *, lease_s: int = AFFINITY_LEASE_SECONDS
    ) -> bool:
        key = self.keys.call_key(record.call_id, Component.AFFINITY)
        data = dumps(record.to_dict(), "affinity record", self.limits.max_json_bytes)
        async with self._op("claim_affinity"):
            won = await self._claim_affinity(keys=[key], args=[data, record.epoch, lease_s])
        return bool(won)

    async def renew_affinity(
        self, call_id: str, epoch: int, *, lease_s: int = AFFINITY_LEASE_SECONDS
    ) -> bool:
        keys = self._owner_keys(call_id)
        args: list[str | int] = ["renew", epoch, lease_s, TTL_POLICIES["authentication_state"]]
        async with self._op("renew_affinity"):
            done = await self._owner_affinity(keys=keys, args=args)
        return bool(done)

    async def release_affinity(self, call_id: str, epoch: int) -> bool:
        keys = self._owner_keys(call_id)
        async with self._op("release_affinity"):
            done = await self._owner_affinity(keys=keys, args=["release", epoch, 0, 0])
        return bool(done)

    def _owner_keys(self, call_id: str) -> list[str]:
        return [
            self.keys.call_key(call_id, Component.AFFINITY),
            self.keys.call_key(call_id, Component.AUTH),
        ]

    async def get_affinity(self, call_id: str) -> AffinityRecord | None:
        raw = await self._get_json("get_affinity", self.keys.call_key(call_id, Component.AFFINITY))
        return None if raw is None else AffinityRecord.from_dict(raw)

    async def set_media_replica(
        self, call_id: str, replica_id: str | None, *, since: float = 0.0
    ) -> bool:
        """Record the replica holding the call's media socket, opened at ``since`` (epoch s).

        When ACS reconnects to another replica while the first one is still finishing its own
        claim, the socket opened last wins whichever write lands last. False: no record, or a
        newer socket is already recorded.
        """
        key = self.keys.call_key(call_id, Component.AFFINITY)
        args = (
            ["0", "", "0"]
            if replica_id is None
            else ["1", validate_identifier(replica_id, "replica"), repr(float(since))]
        )
        async with self._op("set_media_replica"):
            done = await self._media_replica(keys=[key], args=args)
        return bool(done)

    async def add_worker_call(
        self, replica_id: str, call_id: str, *, lease_s: int = AFFINITY_LEASE_SECONDS
    ) -> None:
        key = self.keys.worker_key(replica_id)
        validate_identifier(call_id, "call id")
        async with self._op("add_worker_call"):
            pipe = self._client.pipeline(transaction=False)
            pipe.sadd(key, call_id)
            pipe.expire(key, lease_s)
            await pipe.execute()

    async def remove_worker_call(self, replica_id: str, call_id: str) -> None:
        key = self.keys.worker_key(replica_id)
        async with self._op("remove_worker_call"):
            await self._client.srem(key, call_id)

    async def worker_calls(self, replica_id: str) -> set[str]:
        key = self.keys.worker_key(replica_id)
        async with self._op("worker_calls"):
            members = await self._client.smembers(key)
        return {_text(m) for m in members}

    async def hold_lease(self, name: str, owner: str, *, lease_s: int) -> bool:
        """Take the named deployment-wide lease, or renew it if ``owner`` holds it already."""
        key = self.keys.worker_key(name, Component.LEASE)
        async with self._op("hold_lease"):
            held = await self._lease(keys=[key], args=[owner, lease_s])
        return bool(held)

    async def heartbeat_worker(
        self, replica_id: str, *, lease_s: int = AFFINITY_LEASE_SECONDS
    ) -> None:
        key = self.keys.worker_key(replica_id)
        async with self._op("heartbeat_worker"):
            await self._client.expire(key, lease_s)

    # -- TTS cache (binary) --

    async def get_tts(self, voice: str, audio_format: str, text: str) -> bytes | None:
        key = self.keys.tts_cache_key(voice, audio_format, text)
        async with self._op("get_tts"):
            value = await self._client.get(key)
        return value.encode() if isinstance(value, str) else value

    async def set_tts(self, voice: str, audio_format: str, text: str, pcm: bytes) -> None:
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise SerializationError("pcm must be bytes")
        if len(pcm) > self.limits.max_binary_bytes:
            raise PayloadTooLargeError(f"TTS audio is {len(pcm)} bytes")
        key = self.keys.tts_cache_key(voice, audio_format, text)
        async with self._op("set_tts"):
            await self._client.set(key, bytes(pcm), ex=TTL_POLICIES["tts_cache"])

    # -- auth state, call summary, profile cache --

    async def set_auth_state(self, call_id: str, state: dict[str, Any]) -> None:
        key = self.keys.call_key(call_id, Component.AUTH)
        await self._set_json("set_auth_state", key, state, TTL_POLICIES["authentication_state"])

    async def get_auth_state(self, call_id: str) -> dict[str, Any] | None:
        return await self._get_json("get_auth_state", self.keys.call_key(call_id, Component.AUTH))

    async def claim_answer(self, context_digest: str) -> bool:
        """True for the first claim of an incoming call context (its digest), across replicas:
        Event Grid redelivers, and a context must be answered at most once."""
        key = self.keys.key(DataType.CALL, f"ctx-{context_digest}", Component.ANSWER)
        async with self._op("claim_answer"):
            won = await self._client.set(key, b"1", nx=True, ex=ANSWER_CLAIM_SECONDS)
        return bool(won)

    async def set_call_summary(self, call_id: str, summary: dict[str, Any]) -> None:
        key = self.keys.call_key(call_id, Component.SUMMARY)
        await self._set_json("set_call_summary", key, summary, TTL_POLICIES["call_summary"])

    async def get_call_summary(self, call_id: str) -> dict[str, Any] | None:
        key = self.keys.call_key(call_id, Component.SUMMARY)
        return await self._get_json("get_call_summary", key)

    async def get_cached_profile(self, user_id: str) -> dict[str, Any] | None:
        return await self._get_json("get_cached_profile", self.keys.user_key(user_id))

    async def set_cached_profile(self, user_id: str, profile: dict[str, Any]) -> None:
        key = self.keys.user_key(user_id)
        await self._set_json("set_cached_profile", key, profile, PROFILE_CACHE_SECONDS)

    async def invalidate_profile(self, user_id: str) -> None:
        key = self.keys.user_key(user_id)
        async with self._op("invalidate_profile"):
            await self._client.delete(key)

    # -- archive outbox (stream + consumer group) --

    async def outbox_add(self, kind: str, document: dict[str, Any]) -> str:
        if not isinstance(kind, str) or not kind:
            raise InvalidKeyError("outbox kind must be a non-empty string")
        if not isinstance(document, dict):
            raise SerializationError("outbox document must be a dict")
        payload = dumps(document, "outbox document", self.limits.max_outbox_bytes)
        async with self._op("outbox_add"):
            entry_id = await self._client.xadd(
                self.keys.outbox_key(), {"kind": kind, "payload": payload}
            )
        return _text(entry_id)

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self._client.xgroup_create(stream, OUTBOX_GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_group(self, consumer: str, start: str, count: int, block_ms: int) -> Any:
        stream = self.keys.outbox_key()
        kwargs: dict[str, Any] = {"count": count}
        if block_ms > 0:
            kwargs["block"] = block_ms
        try:
            return await self._client.xreadgroup(OUTBOX_GROUP, consumer, {stream: start}, **kwargs)
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Created lazily; also after a restart of a server without persistence.
            await self._ensure_group(stream)
            return await self._client.xreadgroup(OUTBOX_GROUP, consumer, {stream: start}, **kwargs)

    async def outbox_read(
        self, consumer: str, *, count: int = 10, block_ms: int = 0
    ) -> list[OutboxEntry]:
        """Entries delivered to ``consumer`` but not acked (e.g. before a crash) come first,
        then new ones; ``block_ms`` > 0 waits that long for new entries."""
        validate_identifier(consumer, "consumer")
        async with self._op("outbox_read", extra_timeout=max(block_ms, 0) / 1000.0):
            entries, dead = _parse_stream_reply(await self._read_group(consumer, "0", count, 0))
            if not entries:
                entries, more_dead = _parse_stream_reply(
                    await self._read_group(consumer, ">", count, block_ms)
                )
                dead += more_dead
            if dead:  # deleted while pending: nothing left to deliver
                await self._client.xack(self.keys.outbox_key(), OUTBOX_GROUP, *dead)
        return entries

    async def outbox_ack(self, entry_ids: list[str]) -> int:
        if not entry_ids:
            return 0
        stream = self.keys.outbox_key()
        async with self._op("outbox_ack"):
            pipe = self._client.pipeline(transaction=False)
            pipe.xack(stream, OUTBOX_GROUP, *entry_ids)
            pipe.xdel(stream, *entry_ids)
            acked, _ = await pipe.execute()
        return int(acked)

    async def outbox_length(self) -> int:
        async with self._op("outbox_length"):
            return int(await self._client.xlen(self.keys.outbox_key()))


def _parse_stream_reply(reply: Any) -> tuple[list[OutboxEntry], list[str]]:
    """XREADGROUP reply -> (entries, ids of entries deleted while pending)."""
    entries: list[OutboxEntry] = []
    dead: list[str] = []
    streams = reply.items() if isinstance(reply, dict) else (reply or [])
    for _stream, messages in streams:
        for raw_id, fields in messages:
            entry_id = _text(raw_id)
            if not fields:
                dead.append(entry_id)
                continue
            kind = fields.get(b"kind", b"").decode()
            document = _load_dict(fields.get(b"payload"), "outbox payload")
            entries.append(OutboxEntry(entry_id, kind, document or {}))
    return entries, dead
