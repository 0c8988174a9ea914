"""The archive outbox: a Redis stream of documents waiting for the archive, read by a consumer
group so that an entry delivered before a crash is delivered again until it is acked.

Owns the outbox stream and its consumer group; never writes to the archive itself (the
Archiver does) and never removes an entry its consumer has not acked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors

from storage.errors import InvalidKeyError, SerializationError
from storage.keys import validate_identifier
from storage.redis_connection import RedisConnection, dumps, load_dict, to_str

OUTBOX_GROUP = "archiver"


@dataclass
class OutboxEntry:
    entry_id: str
    kind: str
    document: dict[str, Any] = field(default_factory=dict)


class OutboxStore(RedisConnection):
    """Add, read (pending first), ack and count outbox entries."""

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
        return to_str(entry_id)

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
            entry_id = to_str(raw_id)
            if not fields:
                dead.append(entry_id)
                continue
            kind = fields.get(b"kind", b"").decode()
            document = load_dict(fields.get(b"payload"), "outbox payload")
            entries.append(OutboxEntry(entry_id, kind, document or {}))
    return entries, dead
