"""The per-process write cache: what this process last saw of records (validated on use,
never trusted) and mutations encoded as JSON text. Writers' per-key turns live in
:class:`flowstate.stores.base.KeyLocks`."""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from typing import Any

from ...errors import StateValidationError
from ...ops import UNCHANGED, Mutation

__all__ = ["BLANK", "KEEP_APPENDED", "Cache", "Encoded", "Entry", "append_text", "dumps"]


def dumps(value: Any, name: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise StateValidationError(
            f'field "{name}": NaN and infinity are not JSON and cannot be stored',
            errors=[{"loc": [name], "msg": "value is not valid JSON", "type": "json_type"}],
        ) from None


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """What one process last saw of a record, as of ``version`` and ``gen``.

    ``fields`` maps present field names to their JSON text; ``known`` are the names whose
    presence is known (None: all of them, except ``forgotten``). ``forgotten`` (only with
    ``known`` None) are list fields that exist but whose text is not kept: lists pushed onto
    after they grew past :data:`KEEP_APPENDED`. ``content`` is meaningful only if
    ``has_content``. ``seen`` is the store's clock when the statement that saw it was sent:
    an entry seen after an operation began shows the database as it was during that operation.
    """

    version: int
    gen: int
    fields: dict[str, str]
    known: frozenset[str] | None
    content: str | None
    has_content: bool
    seen: int = 0
    forgotten: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return sum(len(v) + len(k) for k, v in self.fields.items()) + len(self.content or "")

    def covers(self, names: frozenset[str] | None, content: bool) -> bool:
        if content and not self.has_content:
            return False
        if names is None:
            return self.known is None and not self.forgotten
        if self.known is None:
            return self.forgotten.isdisjoint(names)
        return names <= self.known

    def decoded(self, names: frozenset[str] | None) -> dict[str, Any]:
        if names is None:
            return {k: json.loads(v) for k, v in self.fields.items()}
        return {k: json.loads(self.fields[k]) for k in names if k in self.fields}

    def loaded(self, names: frozenset[str] | None) -> tuple[dict[str, Any], str | None]:
        """The fields ``names`` (None: all) and the content, for :func:`plan_commit`."""
        return self.decoded(names), self.content

    def merged(self, newer: Entry) -> Entry:
        """Combine two reads of the same version (each may know different fields)."""
        if (newer.version, newer.gen) != (self.version, self.gen):
            return newer
        fields = {**self.fields, **newer.fields}
        forgotten: frozenset[str] = frozenset()
        if self.known is None or newer.known is None:
            known = None
            forgotten = frozenset(n for n in self.forgotten | newer.forgotten if n not in fields)
        else:
            known = self.known | newer.known
        content_from = newer if newer.has_content else self
        return Entry(
            self.version,
            self.gen,
            fields,
            known,
            content_from.content,
            content_from.has_content,
            max(self.seen, newer.seen),
            forgotten,
        )

    def after(self, mutation: Mutation, enc: Encoded, version: int, gen: int, seen: int) -> Entry:
        """This entry once ``mutation`` is written (appended lists only if already known).

        A list longer than :data:`KEEP_APPENDED` is forgotten instead of extended: copying
        its text on every push would cost what the list weighs, which the store avoids.
        """
        fields = {k: v for k, v in self.fields.items() if k not in mutation.delete}
        fields.update(enc.sets)
        known = None if self.known is None else set(self.known | set(enc.sets) | mutation.delete)
        forgotten = set(self.forgotten) - set(enc.sets) - mutation.delete
        for name, (full, items) in enc.pushes.items():
            if name in forgotten:
                continue  # still a list, still not kept
            old = fields.get(name)
            if old is not None and old != "null":
                if len(old) + len(items) > KEEP_APPENDED:
                    del fields[name]
                    if known is None:
                        forgotten.add(name)
                    else:
                        known.discard(name)
                    continue
                fields[name] = append_text(old, items)
            elif old is not None or known is None or name in known:
                fields[name] = full  # absent or null: the store writes the full list
            if known is not None and name in fields:
                known.add(name)
        frozen = None if known is None else frozenset(known)
        if mutation.content is UNCHANGED:
            content, has_content = self.content, self.has_content
        else:
            content, has_content = mutation.content, True  # type: ignore[assignment]
        return Entry(version, gen, fields, frozen, content, has_content, seen, frozenset(forgotten))


KEEP_APPENDED = 64 << 10
"""Longest list text (bytes of JSON) the cache extends on a push; longer ones are dropped."""


BLANK = Entry(0, 0, {}, None, None, True)
"""A record that does not exist yet (what a first write is written onto)."""


def append_text(old: str, items: str) -> str:
    """A stored array's text with pushed items appended (kept identical to ``fs_joined``)."""
    head = old.rstrip(" \t\r\n")[:-1].rstrip(" \t\r\n")
    return f"{head}{items}]" if head.endswith("[") else f"{head},{items}]"


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded:
    """A mutation's values as JSON text: ``sets``, and ``pushes`` as (full list, items)."""

    sets: dict[str, str]
    pushes: dict[str, tuple[str, str]]

    @classmethod
    def of(cls, mutation: Mutation) -> Encoded:
        sets = {name: dumps(value, name) for name, value in mutation.set.items()}
        pushes = {
            name: (dumps([*base, *items], name), ",".join(dumps(i, name) for i in items))
            for name, (base, items) in mutation.push.items()
        }
        return cls(sets, pushes)


class Cache:
    """A bounded LRU of :class:`Entry` by key (entries are validated on use, never trusted)."""

    def __init__(self, max_entries: int, max_bytes: int = 32 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Entry, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> Entry | None:
        item = self._entries.get(key)
        if item is None:
            return None
        self._entries.move_to_end(key)
        return item[0]

    def put(self, key: str, entry: Entry) -> None:
        self.drop(key)
        size = entry.size
        if self.max_entries <= 0 or size > self.max_bytes // 4:
            return
        self._entries[key] = (entry, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self._bytes -= old

    def merge(self, key: str, entry: Entry) -> None:
        current = self.get(key)
        self.put(key, entry if current is None else current.merged(entry))

    def drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._bytes -= item[1]

    def drop_prefix(self, prefix: str) -> None:
        for key in [k for k in self._entries if k.startswith(prefix)]:
            self.drop(key)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
