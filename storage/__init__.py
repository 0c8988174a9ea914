"""The storage tier: Redis keys and TTLs, the async Redis manager, conversations, the archive."""

from typing import Any

from storage.affinity import AffinityRecord
from storage.archive import ArchiveStore, open_archive
from storage.archiver import Archiver
from storage.conversation import ConversationManager, Turn
from storage.keys import TTL_POLICIES, Component, DataType, RedisKeyManager
from storage.profiles import ProfileRepository
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import ConfigError, Settings, load_settings
from storage.sqlite_archive import SqliteArchive


def __getattr__(name: str) -> Any:
    # Imported on first use: azure-cosmos costs ~0.2 s, paid by every call actor's process start
    # though only Cosmos deployments need it.
    if name == "CosmosArchive":
        from storage.cosmos_archive import CosmosArchive

        return CosmosArchive
    raise AttributeError(f"module 'storage' has no attribute {name!r}")


__all__ = [
    "TTL_POLICIES",
    "AffinityRecord",
    "ArchiveStore",
    "Archiver",
    "AsyncAzureRedisManager",
    "Component",
    "ConfigError",
    "ConversationManager",
    "CosmosArchive",
    "DataType",
    "ProfileRepository",
    "RedisKeyManager",
    "Settings",
    "SqliteArchive",
    "Turn",
    "load_settings",
    "open_archive",
]
