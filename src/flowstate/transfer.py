"""Moving whole stores: copy between backends, export to and import from JSON lines.

Every record travels whole — key, version, every field (including the schema version it was
written at), content, created/accessed timestamps — in key order, in batches, so memory stays
bounded and an interrupted run can continue after the last key it reported. A checksum over
the records in a canonical form (fields sorted by name, compact UTF-8 JSON) tells whether two
stores, or a store and a dump, hold the same data.

Dump format (one JSON object per line): a header ``{"flowstate": "dump", "format": 1}``, one
line per record ``{"key", "version", "createdAt", "accessedAt", "content", "fields"}``, and a
trailer ``{"end": true, "count": n, "checksum": "sha256:…"}`` that ``import`` verifies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .stores.base import Record, Store

__all__ = [
    "DumpError",
    "Progress",
    "StoreDigest",
    "copy_records",
    "digest",
    "export_dump",
    "import_dump",
    "iter_records",
    "record_line",
]

FORMAT = 1
BATCH = 500


class DumpError(Exception):
    """A dump that is malformed, truncated or does not match its checksum."""


@dataclass
class Progress:
    """Where a bulk run is: records done, and the last key committed (to resume after)."""

    done: int = 0
    last_key: str | None = None
    on_batch: Callable[[int], None] | None = field(default=None, repr=False)

    def advance(self, n: int, last_key: str | None) -> None:
        self.done += n
        if last_key is not None:
            self.last_key = last_key
        if self.on_batch is not None:
            self.on_batch(n)


def record_line(record: Record) -> str:
    """The canonical one-line JSON form of a record (fields sorted by name)."""
    return json.dumps(
        {
            "key": record.key,
            "version": record.version,
            "createdAt": record.created_at,
            "accessedAt": record.accessed_at,
            "content": record.content,
            "fields": {name: record.fields[name] for name in sorted(record.fields)},
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def parse_record(line: str) -> Record:
    """A record from its :func:`record_line` form (``DumpError`` naming what is wrong)."""
    try:
        data = json.loads(line)
        fields = data["fields"]
        if not isinstance(data["key"], str) or not isinstance(fields, dict):
            raise TypeError("key must be a string and fields an object")
        return Record(
            data["key"],
            int(data["version"]),
            fields,
            data["content"],
            int(data["createdAt"]),
            int(data["accessedAt"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DumpError(
            f"not a record line ({type(exc).__name__}: {exc}): {line[:120]!r}"
        ) from None


async def iter_records(
    store: Store, prefix: str = "", *, after: str | None = None, batch: int = BATCH
) -> AsyncIterator[list[Record]]:
    """Every record under ``prefix`` (after ``after``), one batch at a time, in key order."""
    while True:
        records = await store.export_records(prefix, after=after, limit=batch)
        if not records:
            return
        yield records
        after = records[-1].key
        if len(records) < batch:
            return


@dataclass(frozen=True)
class StoreDigest:
    """How many records and the checksum of their canonical lines."""

    count: int
    checksum: str


class _Hasher:
    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.count = 0

    def add(self, line: str) -> None:
        self._sha.update(line.encode("utf-8"))
        self._sha.update(b"\n")
        self.count += 1

    def result(self) -> StoreDigest:
        return StoreDigest(self.count, "sha256:" + self._sha.hexdigest())


async def digest(
    store: Store, prefix: str = "", *, progress: Progress | None = None
) -> StoreDigest:
    """Count and checksum every record of ``store`` (under ``prefix``)."""
    hasher = _Hasher()
    async for records in iter_records(store, prefix):
        for record in records:
            hasher.add(record_line(record))
        if progress is not None:
            progress.advance(len(records), records[-1].key)
    return hasher.result()


async def copy_records(
    source: Store,
    target: Store,
    *,
    after: str | None = None,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> int:
    """Copy every record (after ``after``) from ``source`` to ``target``; return how many.

    Each batch is written in one transaction of the target, in key order, so an interrupted
    copy is complete up to ``progress.last_key`` and continues with ``after=`` that key.
    """
    n = 0
    async for records in iter_records(source, after=after, batch=batch):
        await target.import_records(records)
        n += len(records)
        if progress is not None:
            progress.advance(len(records), records[-1].key)
    return n


async def export_dump(
    store: Store, out: TextIO, *, batch: int = BATCH, progress: Progress | None = None
) -> StoreDigest:
    """Write every record of ``store`` to ``out`` as a dump; return its count and checksum."""
    out.write(json.dumps({"flowstate": "dump", "format": FORMAT}) + "\n")
    hasher = _Hasher()
    async for records in iter_records(store, batch=batch):
        lines = [record_line(r) for r in records]
        for line in lines:
            hasher.add(line)
        out.write("\n".join(lines) + "\n")
        if progress is not None:
            progress.advance(len(records), records[-1].key)
    result = hasher.result()
    out.write(json.dumps({"end": True, "count": result.count, "checksum": result.checksum}) + "\n")
    out.flush()
    return result


async def import_dump(
    store: Store,
    lines: Iterable[str],
    *,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> StoreDigest:
    """Write the records of a dump into ``store``, verifying the trailer's count and checksum.

    Raises :class:`DumpError` for a malformed or truncated dump, or one whose checksum does
    not match; batches before the bad line are written (import again after fixing: records
    are replaced, not duplicated).
    """
    it = iter(lines)
    header = next(it, "")
    try:
        head: Any = json.loads(header) if header.strip() else None
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("flowstate") != "dump":
        raise DumpError('not a flowstate dump: the first line must be {"flowstate": "dump", …}')
    if head.get("format") != FORMAT:
        raise DumpError(
            f"unsupported dump format {head.get('format')!r} (this code reads {FORMAT})"
        )
    hasher = _Hasher()
    pending: list[Record] = []
    trailer: dict[str, Any] | None = None

    async def flush() -> None:
        if pending:
            await store.import_records(pending)
            if progress is not None:
                progress.advance(len(pending), pending[-1].key)
            pending.clear()

    for number, raw in enumerate(it, start=2):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if trailer is not None:
            raise DumpError(f"line {number}: data after the end of the dump")
        if line.startswith('{"end":'):
            trailer = json.loads(line)
            continue
        record = parse_record(line)
        hasher.add(record_line(record))
        pending.append(record)
        if len(pending) >= batch:
            await flush()
    await flush()
    result = hasher.result()
    if trailer is None:
        raise DumpError(
            f"the dump is truncated: no end line after {result.count} records (they were "
            "imported; the rest is missing)"
        )
    if trailer.get("count") != result.count or trailer.get("checksum") != result.checksum:
        raise DumpError(
            f"the dump does not match its end line: {result.count} records with "
            f"{result.checksum}, expected {trailer.get('count')} with {trailer.get('checksum')}"
        )
    return result
