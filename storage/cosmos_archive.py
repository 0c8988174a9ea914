"""The Cosmos DB archive (``azure.cosmos.aio``): containers, idempotent upserts, split transcripts.

It owns one client, created lazily on first use and closed by ``close()``. It never retries on its
own beyond the SDK's retry policy: an unreachable account surfaces as ArchiveUnavailableError.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, Self, TypeVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.cosmos import PartitionKey
from azure.cosmos.aio import ContainerProxy, CosmosClient, DatabaseProxy
from azure.cosmos.exceptions import (
    CosmosClientTimeoutError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_incrementing

from storage.archive import (
    DEFAULT_MAX_ITEM_BYTES,
    HEAD_KIND,
    TranscriptItems,
    latest_first,
    prepare_profile,
    prepare_record,
    reassemble_transcript,
    split_transcript,
    strip_system_fields,
    transcript_summary,
    validate_archive_id,
)
from storage.errors import ArchiveError, ArchiveUnavailableError
from storage.settings import ConfigError, CosmosSettings

T = TypeVar("T")

TRANSCRIPTS: Final[str] = "transcripts"
USER_PROFILES: Final[str] = "user_profiles"
ANALYTICS: Final[str] = "analytics"
AUDIT: Final[str] = "audit"
# Container name -> partition key path.
CONTAINERS: Final[dict[str, str]] = {
    TRANSCRIPTS: "/call_id",
    USER_PROFILES: "/user_id",
    ANALYTICS: "/call_id",
    AUDIT: "/call_id",
}
# Statuses that mean "not this document": it would be refused again, so it is set aside. Any
# other status means "not now" (throttled, conflicting set-up, credentials, the server's own
# trouble) and the caller queues the document: a wrong guess here loses a transcript.
_DOCUMENT_STATUSES: Final[frozenset[int]] = frozenset({400, 413})
# A reader racing a rewrite may see a head whose parts were just replaced: read again.
_READ_ATTEMPTS: Final[int] = 3


def _translate(exc: BaseException, what: str) -> ArchiveError:
    if isinstance(exc, ServiceRequestError | ServiceResponseError | CosmosClientTimeoutError):
        return ArchiveUnavailableError(f"Cosmos DB unreachable during {what}: {exc}")
    if isinstance(exc, ClientAuthenticationError):
        return ArchiveUnavailableError(f"Cosmos DB credential failed during {what}: {exc}")
    if isinstance(exc, CosmosHttpResponseError):
        status = exc.status_code or 0
        if status in _DOCUMENT_STATUSES:
            return ArchiveError(f"Cosmos DB refused {what} ({status}): {exc.message}")
        return ArchiveUnavailableError(f"Cosmos DB {what} failed with {status}: {exc.message}")
    if isinstance(exc, OSError | TimeoutError):
        return ArchiveUnavailableError(f"Cosmos DB unreachable during {what}: {exc}")
    return ArchiveError(f"Cosmos DB {what} failed: {exc!r}")


class CosmosArchive:
    """:class:`storage.archive.ArchiveStore` on Cosmos DB; containers are created if missing."""

    def __init__(
        self,
        endpoint: str,
        *,
        database: str,
        credential: str | AsyncTokenCredential | None = None,
        use_entra_id: bool = False,
        verify_tls: bool = True,
        endpoint_discovery: bool = True,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        if credential is None and not use_entra_id:
            raise ConfigError("Cosmos DB needs a key (RTVOICE_COSMOS_KEY) or Entra ID")
        self.endpoint = endpoint
        self.database_name = database
        self.max_item_bytes = max_item_bytes
        self._credential = credential
        self._owned_credential: AsyncTokenCredential | None = None
        self._verify_tls = verify_tls
        self._endpoint_discovery = endpoint_discovery
        self._client: CosmosClient | None = None
        self._database: DatabaseProxy | None = None
        self._containers: dict[str, ContainerProxy] = {}
        self._setup_lock = asyncio.Lock()

    @classmethod
    def from_settings(
        cls, settings: CosmosSettings, *, credential: AsyncTokenCredential | None = None
    ) -> CosmosArchive:
        """Key auth, or Entra ID (``credential`` or DefaultAzureCredential) when configured."""
        if settings.endpoint is None:
            raise ConfigError("RTVOICE_COSMOS_ENDPOINT is not set")
        key = settings.key.get_secret_value() if settings.key else None
        chosen: str | AsyncTokenCredential | None = credential
        if chosen is None and not settings.use_entra_id:
            chosen = key
        return cls(
            settings.endpoint,
            database=settings.database,
            credential=chosen,
            use_entra_id=settings.use_entra_id,
            verify_tls=settings.verify_tls,
            # The local emulator (the only reason to skip TLS checks) has a single endpoint.
            endpoint_discovery=settings.verify_tls,
        )

    def __repr__(self) -> str:
        return f"CosmosArchive({self.endpoint!r}, database={self.database_name!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        async with self._setup_lock:
            client, self._client = self._client, None
            self._database = None
            self._containers.clear()
            credential, self._owned_credential = self._owned_credential, None
            try:
                if client is not None:
                    await client.close()
            finally:
                if credential is not None:
                    await credential.close()

    # Client and containers, created lazily and re-created after the account lost them.

    def _new_client(self) -> CosmosClient:
        credential = self._credential
        if credential is None:
            if self._owned_credential is None:
                from azure.identity.aio import DefaultAzureCredential

                self._owned_credential = DefaultAzureCredential()
            credential = self._owned_credential
        return CosmosClient(
            self.endpoint,
            credential=credential,
            connection_verify=self._verify_tls,
            enable_endpoint_discovery=self._endpoint_discovery,
        )

    async def _container(self, name: str) -> ContainerProxy:
        container = self._containers.get(name)
        if container is not None:
            return container
        async with self._setup_lock:
            if self._client is None:
                client = self._new_client()
                try:
                    await client.__aenter__()
                except BaseException:
                    await client.close()
                    raise
                self._client = client
            if self._database is None:
                try:
                    self._database = await self._client.create_database_if_not_exists(
                        self.database_name
                    )
                except CosmosResourceExistsError:  # created by another client since its read
                    self._database = self._client.get_database_client(self.database_name)
            if name not in self._containers:
                try:
                    self._containers[name] = await self._database.create_container_if_not_exists(
                        id=name, partition_key=PartitionKey(path=CONTAINERS[name])
                    )
                except CosmosResourceExistsError:  # the same race, on the container
                    self._containers[name] = self._database.get_container_client(name)
            return self._containers[name]

    async def _call(self, name: str, what: str, op: Callable[[ContainerProxy], Awaitable[T]]) -> T:
        """Run ``op`` on container ``name``; if the container vanished, create it and retry once."""
        for attempt in range(2):
            try:
                return await op(await self._container(name))
            except CosmosResourceNotFoundError as exc:
                # Item reads go through queries, so a 404 means the database or container is gone.
                self._database = None
                self._containers.clear()
                if attempt:
                    raise _translate(exc, what) from exc
            except ArchiveError:
                raise
            except Exception as exc:
                raise _translate(exc, what) from exc
        raise AssertionError("unreachable")

    @staticmethod
    async def _query(
        container: ContainerProxy,
        query: str,
        params: dict[str, Any],
        partition_key: str | None = None,
    ) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in params.items()]
        if partition_key is None:
            pages = container.query_items(query, parameters=parameters)
        else:
            pages = container.query_items(query, parameters=parameters, partition_key=partition_key)
        return [item async for item in pages]

    # Transcripts

    async def put_transcript(self, doc: dict[str, Any]) -> None:
        items = split_transcript(doc, max_item_bytes=self.max_item_bytes)
        await self._call(TRANSCRIPTS, "put_transcript", lambda c: self._write_items(c, items))

    async def _write_items(self, container: ContainerProxy, items: TranscriptItems) -> None:
        # Parts first, head last: until the head switches, readers see the previous whole write.
        for part in items.parts:
            await container.upsert_item(part)
        await container.upsert_item(items.head)
        listing = await self._query(
            container,
            "SELECT c.id, c.write_id, c.doc_type FROM c WHERE c.call_id = @call_id",
            {"@call_id": items.call_id},
            items.call_id,
        )
        for item in listing:
            if item.get("doc_type") != HEAD_KIND and item.get("write_id") != items.write_id:
                # A concurrent writer may have removed it first.
                with contextlib.suppress(CosmosResourceNotFoundError):
                    await container.delete_item(item["id"], partition_key=items.call_id)

    async def get_transcript(self, call_id: str) -> dict[str, Any] | None:
        validate_archive_id(call_id, "call_id")

        # Parts missing (ArchiveError): read again after 0.05 s, then 0.1 s; the last error stands.
        @retry(
            retry=retry_if_exception_type(ArchiveError),
            wait=wait_incrementing(start=0.05, increment=0.05),
            stop=stop_after_attempt(_READ_ATTEMPTS),
            reraise=True,
        )
        async def read(container: ContainerProxy) -> dict[str, Any] | None:
            items = await self._query(
                container,
                "SELECT * FROM c WHERE c.call_id = @call_id",
                {"@call_id": call_id},
                call_id,
            )
            return reassemble_transcript(call_id, items)

        return await self._call(TRANSCRIPTS, "get_transcript", read)

    async def list_transcripts(self, limit: int = 50) -> list[dict[str, Any]]:
        heads = await self._call(
            TRANSCRIPTS,
            "list_transcripts",
            lambda c: self._query(
                c,
                "SELECT c.call_id, c.ended_at, c.turn_count FROM c WHERE c.doc_type = @kind",
                {"@kind": HEAD_KIND},
            ),
        )
        return latest_first((transcript_summary(h) for h in heads), limit)

    # Profiles

    async def put_profile(self, profile: dict[str, Any]) -> None:
        item = prepare_profile(profile)
        await self._call(USER_PROFILES, "put_profile", lambda c: c.upsert_item(item))

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        validate_archive_id(user_id, "user_id", user=True)
        found = await self._call(
            USER_PROFILES,
            "get_profile",
            lambda c: self._query(
                c,
                "SELECT * FROM c WHERE c.user_id = @user_id AND c.id = @user_id",
                {"@user_id": user_id},
                user_id,
            ),
        )
        return strip_system_fields(found[0]) if found else None

    # Analytics and audit

    async def put_analytics(self, record: dict[str, Any]) -> None:
        item = prepare_record(record, "analytics")
        await self._call(ANALYTICS, "put_analytics", lambda c: c.upsert_item(item))

    async def list_analytics(self, call_id: str) -> list[dict[str, Any]]:
        return await self._list_records(ANALYTICS, call_id)

    async def put_audit(self, entry: dict[str, Any]) -> None:
        item = prepare_record(entry, "audit")
        await self._call(AUDIT, "put_audit", lambda c: c.upsert_item(item))

    async def list_audit(self, call_id: str) -> list[dict[str, Any]]:
        return await self._list_records(AUDIT, call_id)

    async def _list_records(self, name: str, call_id: str) -> list[dict[str, Any]]:
        validate_archive_id(call_id, "call_id")
        found = await self._call(
            name,
            f"list {name}",
            lambda c: self._query(
                c, "SELECT * FROM c WHERE c.call_id = @call_id", {"@call_id": call_id}, call_id
            ),
        )
        return sorted((strip_system_fields(i) for i in found), key=lambda r: str(r["id"]))
