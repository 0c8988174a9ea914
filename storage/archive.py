"""The archive interface (transcripts, profiles, analytics, audit) and its pure document rules.

Validation and the transcript split/reassembly live here as pure functions; this module never
performs I/O itself. ``open_archive`` picks the backend from settings.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

from storage.errors import ArchiveError, PayloadTooLargeError, SerializationError
from storage.settings import StorageSettings

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

# Cosmos DB refuses items above 2 MB; leave room for system properties and escaping slack.
DEFAULT_MAX_ITEM_BYTES: Final[int] = 1_800_000
# Fields the transcript layout adds to the head item; a caller's document may not use them.
HEAD_KIND: Final[str] = "transcript"
PART_KIND: Final[str] = "transcript_part"
RESERVED_FIELDS: Final[frozenset[str]] = frozenset(
    {"id", "doc_type", "write_id", "part_count", "turn_count", "part_index"}
)
# Cosmos forbids these characters in an item id; ':' and whitespace are ours (part ids use ':').
_BAD_ID = re.compile(r"[:\s/\\?#]")
# User ids are callers' raw ids: ACS users (``8:acs:<resource>_<user>``) hold ':'.
_BAD_USER_ID = re.compile(r"[\s/\\?#]")
_MAX_ID_CHARS: Final[int] = 255


class ArchiveStore(Protocol):
    """Durable store of finished calls. Every write is an idempotent upsert keyed by id."""

    async def put_transcript(self, doc: dict[str, Any]) -> None: ...
    async def get_transcript(self, call_id: str) -> dict[str, Any] | None: ...
    async def list_transcripts(self, limit: int = 50) -> list[dict[str, Any]]: ...
    async def put_profile(self, profile: dict[str, Any]) -> None: ...
    async def get_profile(self, user_id: str) -> dict[str, Any] | None: ...
    async def put_analytics(self, record: dict[str, Any]) -> None: ...
    async def list_analytics(self, call_id: str) -> list[dict[str, Any]]: ...
    async def put_audit(self, entry: dict[str, Any]) -> None: ...
    async def list_audit(self, call_id: str) -> list[dict[str, Any]]: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...


def validate_archive_id(value: object, what: str, *, user: bool = False) -> str:
    """Return ``value`` if it can be an archive id (and a Cosmos item id), else raise.
    ``user``: a user id, which may hold ':' (never part of a transcript part id)."""
    if not isinstance(value, str):
        raise ArchiveError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise ArchiveError(f"{what} must not be empty")
    if len(value) > _MAX_ID_CHARS:
        raise ArchiveError(f"{what} must be at most {_MAX_ID_CHARS} characters")
    if (_BAD_USER_ID if user else _BAD_ID).search(value):
        raise ArchiveError(f"{what} must not contain ':', '/', '\\', '?', '#' or whitespace")
    return value


def encoded_size(value: object) -> int:
    """Bytes ``value`` takes on the wire: compact JSON with non-ASCII escaped, as the SDK sends."""
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=True))
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"document is not JSON-serializable: {exc}") from None


def _check_fields(doc: dict[str, Any], what: str) -> None:
    # A leading underscore is the store's namespace (Cosmos _rid, _etag ...); reads drop it.
    if not all(isinstance(k, str) for k in doc):
        raise SerializationError(f"{what} keys must be strings")
    own = sorted(k for k in doc if k.startswith("_"))
    if own:
        raise ArchiveError(f"{what} fields may not start with '_': {own}")


def prepare_profile(profile: object) -> dict[str, Any]:
    """The stored form of a profile: the caller's fields plus ``id`` = ``user_id``."""
    if not isinstance(profile, dict):
        raise ArchiveError("profile must be a dict")
    _check_fields(profile, "profile")
    user_id = validate_archive_id(profile.get("user_id"), "profile user_id", user=True)
    if "id" in profile and profile["id"] != user_id:
        raise ArchiveError("profile id, when given, must equal user_id")
    item = {**profile, "id": user_id}
    encoded_size(item)
    return item


def prepare_record(record: object, what: str) -> dict[str, Any]:
    """Check an analytics or audit record: a dict with a valid ``id`` and ``call_id``."""
    if not isinstance(record, dict):
        raise ArchiveError(f"{what} record must be a dict")
    _check_fields(record, what)
    validate_archive_id(record.get("id"), f"{what} id")
    validate_archive_id(record.get("call_id"), f"{what} call_id")
    encoded_size(record)
    return dict(record)


@dataclass(frozen=True)
class TranscriptItems:
    """A transcript as stored: the head (metadata, maybe all turns) and its ordered parts."""

    head: dict[str, Any]
    parts: list[dict[str, Any]]

    @property
    def call_id(self) -> str:
        return str(self.head["call_id"])

    @property
    def write_id(self) -> str:
        return str(self.head["write_id"])


def validate_transcript(doc: object) -> str:
    """Return the transcript's call id, or raise naming what is wrong with ``doc``."""
    if not isinstance(doc, dict):
        raise ArchiveError("transcript must be a dict")
    _check_fields(doc, "transcript")
    call_id = validate_archive_id(doc.get("call_id"), "transcript call_id")
    turns = doc.get("turns")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ArchiveError("transcript turns must be a list of dicts")
    clash = RESERVED_FIELDS & doc.keys()
    if clash:
        raise ArchiveError(f"transcript may not set reserved fields {sorted(clash)}")
    return call_id


def part_id(call_id: str, write_id: str, index: int) -> str:
    """Id of one part; the write id in it means a new write never overwrites a live part."""
    return f"{call_id}:part:{write_id}:{index}"


def split_transcript(
    doc: dict[str, Any], *, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES
) -> TranscriptItems:
    """Lay ``doc`` out as items no larger than ``max_item_bytes`` each (pure).

    The head carries every field but ``turns`` plus ``write_id`` (a hash of the content, so a
    retried put rewrites the same items) and ``part_count``. When everything fits in one item the
    head also carries the turns and ``part_count`` is 0.
    """
    call_id = validate_transcript(doc)
    turns: list[dict[str, Any]] = doc["turns"]
    turn_sizes = [encoded_size(t) for t in turns]
    meta = {k: v for k, v in doc.items() if k != "turns"}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    write_id = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    head = {
        **meta,
        "id": call_id,
        "doc_type": HEAD_KIND,
        "write_id": write_id,
        "turn_count": len(turns),
        "part_count": 0,
    }
    whole = {**head, "turns": turns}
    # One comma per turn after the first; the list brackets are in the empty-turns size.
    if encoded_size({**head, "turns": []}) + sum(turn_sizes) + len(turns) <= max_item_bytes:
        return TranscriptItems(head=whole, parts=[])

    groups = list(_pack(turns, turn_sizes, call_id, write_id, max_item_bytes))
    head["part_count"] = len(groups)
    head["turns"] = []
    if encoded_size(head) > max_item_bytes:
        raise PayloadTooLargeError(f"transcript {call_id}: metadata alone exceeds one item")
    parts = [
        {
            "id": part_id(call_id, write_id, index),
            "call_id": call_id,
            "doc_type": PART_KIND,
            "write_id": write_id,
            "part_index": index,
            "turns": group,
        }
        for index, group in enumerate(groups)
    ]
    return TranscriptItems(head=head, parts=parts)


def _pack(
    turns: list[dict[str, Any]], sizes: list[int], call_id: str, write_id: str, limit: int
) -> Iterable[list[dict[str, Any]]]:
    """Greedy in-order packing of turns into groups whose part item stays within ``limit``."""
    # Largest possible part envelope: the index is at most len(turns) digits.
    envelope = encoded_size(
        {
            "id": part_id(call_id, write_id, 10 ** len(str(len(turns)))),
            "call_id": call_id,
            "doc_type": PART_KIND,
            "write_id": write_id,
            "part_index": 10 ** len(str(len(turns))),
            "turns": [],
        }
    )
    group: list[dict[str, Any]] = []
    used = envelope
    for turn, size in zip(turns, sizes, strict=True):
        if envelope + size > limit:
            raise PayloadTooLargeError(
                f"transcript {call_id}: a turn of {size} bytes exceeds the {limit} byte item limit"
            )
        cost = size + (1 if group else 0)
        if group and used + cost > limit:
            yield group
            group, used = [], envelope
            cost = size
        group.append(turn)
        used += cost
    if group:
        yield group


def reassemble_transcript(call_id: str, items: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The whole transcript from its stored items (any order, stale parts ignored) or None.

    Raises :class:`ArchiveError` if the head names parts that are not all present (a reader
    racing a rewrite); the caller may read again.
    """
    head: dict[str, Any] | None = None
    parts: dict[int, dict[str, Any]] = {}
    candidates = list(items)
    for item in candidates:
        if item.get("id") == call_id and item.get("doc_type") == HEAD_KIND:
            head = item
    if head is None:
        return None
    write_id = head.get("write_id")
    part_count = int(head.get("part_count", 0))
    for item in candidates:
        if item.get("doc_type") == PART_KIND and item.get("write_id") == write_id:
            parts[int(item["part_index"])] = item
    missing = [i for i in range(part_count) if i not in parts]
    if missing:
        raise ArchiveError(f"transcript {call_id}: parts {missing} of write {write_id} missing")
    turns: list[dict[str, Any]] = list(head.get("turns", []))
    for index in range(part_count):
        turns.extend(parts[index]["turns"])
    doc = {k: v for k, v in head.items() if k not in RESERVED_FIELDS and not k.startswith("_")}
    doc["turns"] = turns
    return doc


def transcript_summary(head: dict[str, Any]) -> dict[str, Any]:
    """The listing entry of a transcript head: call id, end time, turn count."""
    return {
        "call_id": head["call_id"],
        "ended_at": head.get("ended_at"),
        "turn_count": int(head.get("turn_count", 0)),
    }


def _ended_at_key(entry: dict[str, Any]) -> tuple[int, float | str]:
    value = entry.get("ended_at")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, float(value))
    if isinstance(value, str):
        return (2, value)
    return (0, 0.0)


def latest_first(entries: Iterable[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Listing entries, most recently ended first (no end time last), at most ``limit``."""
    return sorted(entries, key=_ended_at_key, reverse=True)[: max(limit, 0)]


def strip_system_fields(item: dict[str, Any]) -> dict[str, Any]:
    """Drop the store's own bookkeeping (Cosmos ``_rid``, ``_etag``, ``_ts`` ...)."""
    return {k: v for k, v in item.items() if not k.startswith("_")}


def open_archive(
    settings: StorageSettings, *, credential: AsyncTokenCredential | None = None
) -> ArchiveStore:
    """Cosmos DB when its endpoint is set, else the embedded SQLite file. No I/O here."""
    if settings.cosmos.endpoint:
        from storage.cosmos_archive import CosmosArchive

        return CosmosArchive.from_settings(settings.cosmos, credential=credential)
    from storage.sqlite_archive import SqliteArchive

    return SqliteArchive(settings.archive_path)
