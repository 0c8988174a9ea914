"""Every Redis operation of rtvoice, by name: the stores composed over one connection.

Owns nothing but the composition: each operation, key layout and Lua script lives in the store
module of its concept (redis_connection, conversation_store, affinity, call_records, caches,
outbox, pool_store); never add an operation here.
"""

from __future__ import annotations

from storage.affinity import AffinityStore
from storage.caches import CacheStore
from storage.call_records import CallRecordStore
from storage.conversation_store import ConversationStore
from storage.drain_store import DrainStore
from storage.outbox import OutboxStore
from storage.pool_store import PoolStore


class AsyncAzureRedisManager(
    ConversationStore,
    AffinityStore,
    CallRecordStore,
    CacheStore,
    OutboxStore,
    PoolStore,
    DrainStore,
):
    """Named Redis operations with a timeout each, latency recorded under the method name.

    Cluster mode (``for_azure(cluster=True)``) requires a key manager with ``hash_tags=True``
    so that the keys of one conversation or call share a slot (scripts touch them together);
    the legacy ``session:{id}`` migration needs a standalone server (its key has no hash tag).
    """
