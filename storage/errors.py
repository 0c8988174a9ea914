"""Typed errors of the storage tier. Callers catch these, never raw client exceptions."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage-tier error."""


class InvalidKeyError(StorageError, ValueError):
    """An identifier cannot stand in a Redis key (empty, ':' or whitespace)."""


class SerializationError(StorageError, ValueError):
    """A value could not be encoded to, or decoded from, its stored form."""


class PayloadTooLargeError(StorageError, ValueError):
    """A value exceeds a configured size limit."""


class RedisUnavailableError(StorageError):
    """Redis could not be reached (connection refused, reset, DNS, auth)."""


class RedisTimeoutError(RedisUnavailableError):
    """A Redis operation did not complete within its configured timeout."""


class StaleEpochError(StorageError):
    """A write carried an epoch older than the stored one (a zombie writer) and was refused."""


class ArchiveError(StorageError):
    """The archive refused an operation."""


class ArchiveUnavailableError(ArchiveError):
    """The archive backend could not be reached; the caller should use the outbox."""
