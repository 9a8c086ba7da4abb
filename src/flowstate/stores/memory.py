"""The in-memory store: the reference implementation of the store contract, for tests.

One lock guards everything, so every method is trivially atomic. Keys are kept in a sorted
list beside the dict so that prefix scans cost what they match.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..limits import MAX_RECORD_BYTES
from ..ops import MISSING, UNCHANGED, Change, Mutation, push_target_error, same_json
from ..schema import copy_json
from .base import (
    Applied,
    Created,
    Creation,
    Guard,
    Record,
    Store,
    field_bytes,
    json_bytes,
    plan_commit,
    prefix_end,
    pushed_bytes,
    text_bytes,
)

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Row:
    version: int
    fields: dict[str, Any]
    content: str | None
    created_at: int
    accessed_at: int = field(default=0)
    sizes: dict[str, int] = field(default_factory=dict)
    """Each field's value size (``base.json_bytes``)."""
    size: int = 0
    """The record's size (``Store.max_record_bytes`` counts it)."""

    @classmethod
    def of(
        cls,
        version: int,
        fields: Mapping[str, Any],
        content: str | None,
        created_at: int,
        accessed_at: int,
        sizes: Mapping[str, int] | None = None,
    ) -> _Row:
        """A row holding a copy of ``fields``, with its sizes (computed unless given)."""
        if sizes is None:
            sizes = {name: json_bytes(value) for name, value in fields.items()}
        size = sum(field_bytes(name, n) for name, n in sizes.items()) + text_bytes(content)
        return cls(
            version, copy_json(dict(fields)), content, created_at, accessed_at, dict(sizes), size
        )


class MemoryStore(Store):
    """Records in a dict, for tests and throwaway runs (``memory://``)."""

    def __init__(self, *, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        super().__init__(max_record_bytes=max_record_bytes)
        self.url = "memory://"
        self._rows: dict[str, _Row] = {}
        self._keys: list[str] = []
        self._lock = threading.Lock()
        self._clock = 0

    def _now(self) -> int:
        # Strictly increasing, so LRU order is exact even within one clock tick.
        self._clock = max(self._clock + 1, time.time_ns())
        return self._clock

    def _record(self, key: str, row: _Row, fields: frozenset[str] | None) -> Record:
        chosen = row.fields
        if fields is not None:
            chosen = {k: row.fields[k] for k in fields if k in row.fields}
        return Record(
            key, row.version, copy_json(chosen), row.content, row.created_at, row.accessed_at
        )

    def _stored(
        self, key: str, names: frozenset[str] | None
    ) -> tuple[Mapping[str, Any], str | None]:
        row = self._rows[key]
        return self._record(key, row, names).fields, row.content

    def _insert(self, key: str, row: _Row) -> None:
        if key not in self._rows:
            bisect.insort(self._keys, key)
        self._rows[key] = row

    def _remove(self, key: str) -> _Row | None:
        row = self._rows.pop(key, None)
        if row is not None:
            del self._keys[bisect.bisect_left(self._keys, key)]
        return row

    async def read(self, key: str, fields: frozenset[str] | None = None) -> Record | None:
        with self._lock:
            row = self._rows.get(key)
            return None if row is None else self._record(key, row, fields)

    async def read_many(
        self, wanted: Mapping[str, frozenset[str] | None]
    ) -> dict[str, Record | None]:
        with self._lock:
            out: dict[str, Record | None] = {}
            for key, fields in wanted.items():
                row = self._rows.get(key)
                out[key] = None if row is None else self._record(key, row, fields)
            return out

    def _check(self, guard: Guard | None) -> None:
        if guard is None:
            return
        row = self._rows.get(guard.key)
        if row is None or not same_json(row.fields.get(guard.name, MISSING), guard.value):
            raise guard.gone()

    async def apply(self, key: str, change: Change, *, guard: Guard | None = None) -> Applied:
        with self._lock:
            self._check(guard)
            row = self._rows.get(key)
            version = None if row is None else row.version
            planned = plan_commit(change, version, lambda names: self._stored(key, names))
            if isinstance(planned, Applied):
                return planned
            mutation = planned
            sizes, size = self._sized(key, row, mutation)  # raises if over the limit
            now = self._now()
            if row is None:
                row = _Row(0, {}, None, now)
                self._insert(key, row)
            for name, (base, items) in mutation.push.items():
                current = row.fields.get(name)
                if current is None:
                    row.fields[name] = [*base, *copy_json(items)]
                else:  # extend in place: the stored list is ours alone
                    current.extend(copy_json(items))
            row.fields.update(copy_json(mutation.set))
            for name in mutation.delete:
                row.fields.pop(name, None)
            if isinstance(mutation.content, str) or mutation.content is None:
                row.content = mutation.content
            for name, n in sizes.items():
                if n is None:
                    row.sizes.pop(name, None)
                else:
                    row.sizes[name] = n
            row.size = size
            row.version += 1
            row.accessed_at = now
            return Applied("committed", row.version, mutation)

    def _sized(
        self, key: str, row: _Row | None, mutation: Mutation
    ) -> tuple[dict[str, int | None], int]:
        """The value sizes ``mutation`` leaves (None: deleted) and the record's new size;
        raises if a push targets a non-list or the record would be over the limit."""
        stored = {} if row is None else row.sizes
        fields = {} if row is None else row.fields
        sizes: dict[str, int | None] = {}
        for name, value in mutation.set.items():
            sizes[name] = json_bytes(value)
        for name in mutation.delete:
            sizes[name] = None
        for name, (base, items) in mutation.push.items():
            current = fields.get(name, MISSING)
            if current is not MISSING and current is not None and not isinstance(current, list):
                raise push_target_error(name, type(current).__name__)
            joined = sum(json_bytes(item) for item in items) + len(items) - 1
            whole = json_bytes([*base, *items]) if current is MISSING or current is None else 0
            old = stored.get(name) if current is not MISSING else None
            sizes[name] = (old or 0) + pushed_bytes(old, current is None, whole, joined)
        size = 0 if row is None else row.size
        for name, n in sizes.items():
            size += field_bytes(name, n) - field_bytes(name, stored.get(name))
        if mutation.content is not UNCHANGED:
            new = mutation.content if isinstance(mutation.content, str) else None
            size += text_bytes(new) - text_bytes(None if row is None else row.content)
        self.check_size(key, size)
        return sizes, size

    async def _create(self, key: str, new: Creation) -> Created:
        with self._lock:
            self._check(new.guard)
            existing = self._rows.get(key)
            now = self._now()
            if existing is not None:
                if not new.replace:
                    return Created("exists", existing.version)
                previous = self._record(key, existing, None)
                version = existing.version + 1
                fresh = _Row.of(
                    version, new.fields, new.content, existing.created_at, now, new.sizes
                )
                self._rows[key] = fresh
                return Created("replaced", version, previous=previous)
            evicted: list[str] = []
            cap = new.cap
            if cap is not None:
                members = self._scan(cap.prefix, None, None)
                excess = cap.to_evict(len(members))
                if excess is None:
                    return Created("full", 0)
                order = cap.order
                ordered = sorted(members, key=lambda k: (getattr(self._rows[k], order), k))
                for victim in ordered[:excess]:
                    self._remove(victim)
                    evicted.append(victim)
            self._insert(key, _Row.of(1, new.fields, new.content, now, now, new.sizes))
            return Created("created", 1, tuple(evicted))

    async def delete(self, key: str, *, guard: Guard | None = None) -> Record | None:
        with self._lock:
            self._check(guard)
            row = self._remove(key)
            return None if row is None else self._record(key, row, None)

    async def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            keys = self._scan(prefix, None, None)
            for key in keys:
                self._remove(key)
            return len(keys)

    async def touch(self, key: str) -> None:
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                row.accessed_at = self._now()

    def _scan(self, prefix: str, after: str | None, limit: int | None) -> list[str]:
        lo = (
            bisect.bisect_right(self._keys, after)
            if after is not None and after >= prefix
            else (bisect.bisect_left(self._keys, prefix))
        )
        hi = bisect.bisect_left(self._keys, prefix_end(prefix))
        if limit is not None:
            hi = min(hi, lo + max(limit, 0))
        return self._keys[lo:hi]

    async def scan(
        self, prefix: str, *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        with self._lock:
            return self._scan(prefix, after, limit)

    async def export_records(
        self, prefix: str = "", *, after: str | None = None, limit: int = 500
    ) -> list[Record]:
        with self._lock:
            return [self._record(k, self._rows[k], None) for k in self._scan(prefix, after, limit)]

    async def import_records(self, records: Sequence[Record]) -> int:
        rows = [
            (
                r.key,
                _Row.of(r.version, r.fields, r.content, r.created_at, r.accessed_at),
            )
            for r in records
        ]
        with self._lock:
            for key, row in rows:
                self._insert(key, row)
        return len(rows)

    async def swap_records(
        self, records: Sequence[Record], expected_versions: Sequence[int]
    ) -> list[str]:
        written: list[str] = []
        with self._lock:
            for r, expected in zip(records, expected_versions, strict=True):
                row = self._rows.get(r.key)
                if row is not None and (row.version, row.created_at) == (expected, r.created_at):
                    self._rows[r.key] = _Row.of(
                        r.version, r.fields, r.content, r.created_at, r.accessed_at
                    )
                    written.append(r.key)
        return written

    async def delete_records(self, records: Sequence[Record]) -> list[str]:
        deleted: set[str] = set()
        with self._lock:
            for r in records:
                row = self._rows.get(r.key)
                if row is not None and (row.version, row.created_at) == (r.version, r.created_at):
                    self._remove(r.key)
                    deleted.add(r.key)
        return sorted(deleted)

    async def delete_keys(self, keys: Sequence[str]) -> int:
        with self._lock:
            return sum(1 for key in keys if self._remove(key) is not None)

    async def delete_prefixes(self, prefixes: Sequence[str]) -> int:
        with self._lock:
            n = 0
            for prefix in prefixes:
                for key in self._scan(prefix, None, None):
                    self._remove(key)
                    n += 1
            return n

    async def count(self, prefix: str) -> int:
        with self._lock:
            lo = bisect.bisect_left(self._keys, prefix)
            return bisect.bisect_left(self._keys, prefix_end(prefix)) - lo
