"""The storage tier: Redis keys and TTLs, the async Redis manager, conversations, the archive."""

from storage.archive import ArchiveStore, open_archive
from storage.archiver import Archiver
from storage.conversation import ConversationManager, Turn
from storage.cosmos_archive import CosmosArchive
from storage.keys import TTL_POLICIES, Component, DataType, RedisKeyManager
from storage.profiles import ProfileRepository
from storage.redis_manager import AffinityRecord, AsyncAzureRedisManager
from storage.settings import ConfigError, Settings, load_settings
from storage.sqlite_archive import SqliteArchive

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
