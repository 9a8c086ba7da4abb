"""The storage contract every backend implements, and the in-process event broker.

A store holds *records*: a string key, an integer version (0 = never written, +1 per committed
write), a set of top-level JSON fields stored one by one, optional text content, and two
timestamps (created, last accessed) used by collection eviction. Keys are opaque to the store;
ordering is by code point, and prefix scans are range scans.

Every state operation is written once, above the store, as a :class:`~flowstate.ops.Change`;
the store's job is to run :meth:`Change.resolve` inside one write transaction, under a lock
that excludes every other writer of that record (in this process and in others), and to write
the mutation it returns. That gives atomic ``inc``/``push``/``patch`` without retries, and
compare-and-swap through ``Change.expected_version``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import StateValidationError
from ..limits import MAX_RECORD_BYTES
from ..ops import UNCHANGED, Change, Mutation

__all__ = [
    "Applied",
    "Broker",
    "Cap",
    "Created",
    "Creation",
    "Guard",
    "KeyLocks",
    "PubSub",
    "Record",
    "Store",
    "field_bytes",
    "json_bytes",
    "json_text",
    "plan_commit",
    "prefix_end",
    "pushed_bytes",
    "record_too_large",
    "text_bytes",
]

JSON = Any


_MAX_CHAR = "\U0010ffff"
# Bound used when a prefix has no successor ("" or all U+10FFFF): greater than every key of
# fewer code points. Keys are far shorter (flowstate.limits: keys and ids <= 512 UTF-8 bytes).
_UNBOUNDED = _MAX_CHAR * 4096


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix``.

    ``key >= prefix AND key < prefix_end(prefix)`` is a prefix match that an index can serve
    (``LIKE 'p%'`` cannot, and needs escaping). It is the prefix with trailing U+10FFFF dropped
    and its last character incremented (skipping the surrogate block, which no stored key can
    hold): ``"a/"`` → ``"a0"``. Appending U+10FFFF instead, as once done here, missed every
    key that continues with U+10FFFF — and let such collection instances escape counts, caps
    and listings. Code-point order equals UTF-8 byte order, so SQLite (BINARY) and PostgreSQL
    (``COLLATE "C"``) agree with Python.
    """
    stem = prefix.rstrip(_MAX_CHAR)
    if not stem:
        return _UNBOUNDED
    code = ord(stem[-1]) + 1
    if 0xD800 <= code <= 0xDFFF:
        code = 0xE000
    return stem[:-1] + chr(code)


@dataclass(frozen=True, slots=True)
class Record:
    """A stored record as read: ``fields`` holds only the fields that were asked for."""

    key: str
    version: int
    fields: Mapping[str, JSON]
    content: str | None = None
    created_at: int = 0
    accessed_at: int = 0


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of :meth:`Store.apply`.

    ``status``: ``"committed"`` (``version`` is the new one, ``mutation`` what was written),
    ``"noop"`` (nothing to write), ``"conflict"`` (``expected_version`` did not match; ``version``
    is the current one) or ``"missing"`` (``must_exist`` and no record).
    """

    status: Literal["committed", "noop", "conflict", "missing"]
    version: int
    mutation: Mutation | None = None


@dataclass(frozen=True, slots=True)
class Guard:
    """A write condition: commit only while record ``key`` exists with ``fields[name] ==
    value``, checked in the write's own transaction (so a concurrent delete of ``key`` either
    waits for the write or makes it fail; never both succeed).

    A failed guard writes nothing and raises ``gone()``. Scopes use it to tie every write of a
    session to the session binding that was current when the run started (its incarnation).
    """

    key: str
    name: str
    value: JSON
    gone: Callable[[], Exception] = field(compare=False)


@dataclass(frozen=True, slots=True)
class Cap:
    """A collection's cap: at most ``max_instances`` records under ``prefix``."""

    prefix: str
    max_instances: int
    eviction: Literal["none", "lru", "oldest"]

    @property
    def order(self) -> Literal["accessed_at", "created_at"]:
        """The timestamp that picks the victims (smallest first; ties by key)."""
        return "accessed_at" if self.eviction == "lru" else "created_at"

    def to_evict(self, count: int) -> int | None:
        """How many of the ``count`` records under ``prefix`` a new one evicts; None: it
        does not fit (the cap is reached and eviction is ``none``)."""
        excess = count - self.max_instances + 1
        if excess <= 0:
            return 0
        return None if self.eviction == "none" else excess


@dataclass(frozen=True, slots=True)
class Creation:
    """A :meth:`Store.create` call, as handed to a backend's :meth:`Store._create`: the
    fields with their compact JSON ``texts`` and value ``sizes`` (UTF-8 bytes), and the
    record's ``size`` (checked against the store's limit already)."""

    fields: Mapping[str, JSON]
    content: str | None
    replace: bool
    cap: Cap | None
    guard: Guard | None
    texts: Mapping[str, str]
    sizes: Mapping[str, int]
    size: int


# ------------------------------------------------------------------ record sizes
#
# A record's size is what the limit ``Store.max_record_bytes`` counts: for each field the UTF-8
# bytes of its name and of its value as compact JSON, plus the UTF-8 bytes of the content.
# Backends keep each field's value size and the record's size with the record, so that a push
# adds its items' bytes without the list being loaded.


def json_text(value: JSON) -> str:
    """A value as stored: compact JSON, non-ASCII kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def text_bytes(text: str | None) -> int:
    """UTF-8 bytes of ``text`` (0 for None)."""
    return 0 if text is None else len(text.encode("utf-8", "surrogatepass"))


def json_bytes(value: JSON) -> int:
    """UTF-8 bytes of a value stored as compact JSON."""
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    if type(value) is int:
        return len(str(value))  # what json.dumps writes for an int (counters: the hot path)
    return text_bytes(json_text(value))


def field_bytes(name: str, value_bytes: int | None) -> int:
    """What a field of ``value_bytes`` adds to its record (None: an absent field, 0)."""
    return 0 if value_bytes is None else text_bytes(name) + value_bytes


def pushed_bytes(stored: int | None, null: bool, whole: int, items: int) -> int:
    """How much an append changes a list field's value size: ``stored`` is its value size now
    (None: absent), ``null`` whether it holds null; ``whole`` the size of the list the store
    writes for an absent or null field, ``items`` that of the items joined by commas."""
    if stored is None:
        return whole
    if null:
        return whole - stored
    return items if stored == 2 else items + 1  # "[]" takes no comma before the first item


def record_too_large(key: str, limit: int) -> StateValidationError:
    """The error of a write that would make record ``key`` larger than ``limit`` bytes.

    Its message names the key; its ``errors`` entry (what an HTTP client reads, after the
    scope that was written) names only the rule, since a key may be one the client cannot see.
    """
    rule = f"larger than the limit of {limit:,} bytes (max_record_bytes)"
    message = f'record "{key}" would be {rule}; nothing was written'
    return StateValidationError(
        message,
        errors=[{"loc": [], "msg": f"the record would be {rule}", "type": "record_size"}],
    )


@dataclass(frozen=True, slots=True)
class Created:
    """The outcome of :meth:`Store.create`.

    ``status``: ``"created"``, ``"replaced"``, ``"exists"`` (left alone) or ``"full"`` (cap
    reached with eviction ``none``). ``evicted`` lists keys removed to make room.
    """

    status: Literal["created", "replaced", "exists", "full"]
    version: int
    evicted: tuple[str, ...] = ()
    previous: Record | None = None


@dataclass
class Broker:
    """In-process publish/subscribe of JSON messages by topic (used for live event feeds)."""

    _queues: dict[str, set[asyncio.Queue[JSON]]] = field(default_factory=lambda: defaultdict(set))

    def publish_local(self, topic: str, message: JSON) -> None:
        for queue in list(self._queues.get(topic, ())):
            queue.put_nowait(message)

    def has_listeners(self, topic: str) -> bool:
        """Whether anyone in this process listens to ``topic``."""
        return bool(self._queues.get(topic))

    @contextlib.asynccontextmanager
    async def listen(self, topic: str) -> AsyncIterator[asyncio.Queue[JSON]]:
        queue: asyncio.Queue[JSON] = asyncio.Queue()
        self._queues[topic].add(queue)
        try:
            yield queue
        finally:
            self._queues[topic].discard(queue)
            if not self._queues[topic]:
                del self._queues[topic]


def plan_commit(
    change: Change,
    version: int | None,
    load: Callable[[frozenset[str] | None], tuple[Mapping[str, JSON], str | None]],
) -> Applied | Mutation:
    """The commit protocol, once for every backend: what :meth:`Store.apply` does with
    ``change`` against the record at ``version`` (None: there is no record).

    In this order: ``must_exist`` and no record → ``missing``; ``expected_version`` given and
    different → ``conflict``; ``change.resolve`` (its exceptions propagate) on what
    ``load(change.load_fields)`` returns — the stored fields and content, called only for an
    existing record that gets this far — and a None result → ``noop``. Otherwise the mutation
    for the backend to write at ``version + 1``. Pure: a backend may plan against a cached
    copy, as long as what it writes is planned against the version it replaces.
    """
    if version is None and change.must_exist:
        return Applied("missing", 0)
    current = version or 0
    if change.expected_version is not None and change.expected_version != current:
        return Applied("conflict", current)
    stored, content = ({}, None) if version is None else load(change.load_fields)
    mutation = change.resolve(stored, UNCHANGED if change.content is UNCHANGED else content)
    if mutation is None:
        return Applied("noop", current)
    return mutation


class KeyLocks:
    """Turns per key in this process: *exclusive* (``update_state``'s read-modify-write) or
    *shared* (atomic operations, which the store resolves itself, so concurrent ones may run —
    and be committed — together). Waiters are served in arrival order, so a stream of atomic
    writes cannot starve an ``update_state``, nor the reverse.
    """

    def __init__(self) -> None:
        self._keys: dict[str, _KeyState] = {}

    def hold(self, key: str, *, shared: bool = False) -> _Turn:
        return _Turn(self, key, shared)

    def _release(self, key: str, shared: bool) -> None:
        state = self._keys[key]
        if shared:
            state.shared -= 1
        else:
            state.exclusive = False
        self._wake(key)

    def _wake(self, key: str) -> None:
        state = self._keys.get(key)
        if state is None:
            return
        waiters = state.waiters
        while waiters:
            shared, future = waiters[0]
            if future.done():  # cancelled while waiting
                waiters.popleft()
                continue
            if state.exclusive or (not shared and state.shared):
                break
            waiters.popleft()
            if shared:
                state.shared += 1
            else:
                state.exclusive = True
            future.set_result(None)  # the turn passes to that waiter
            if not shared:
                break
        if not waiters and not state.exclusive and not state.shared:
            del self._keys[key]


class _KeyState:
    __slots__ = ("exclusive", "shared", "waiters")

    def __init__(self) -> None:
        self.shared = 0
        self.exclusive = False
        self.waiters: collections.deque[tuple[bool, asyncio.Future[None]]] = collections.deque()


class _Turn:
    __slots__ = ("key", "locks", "shared")

    def __init__(self, locks: KeyLocks, key: str, shared: bool) -> None:
        self.locks = locks
        self.key = key
        self.shared = shared

    async def __aenter__(self) -> None:
        state = self.locks._keys.get(self.key)
        if state is None:
            state = self.locks._keys[self.key] = _KeyState()
        if not state.waiters and not state.exclusive and (self.shared or not state.shared):
            if self.shared:
                state.shared += 1
            else:
                state.exclusive = True
            return
        future = asyncio.get_running_loop().create_future()
        state.waiters.append((self.shared, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.locks._release(self.key, self.shared)  # handed the turn, but leaving
            else:
                with contextlib.suppress(ValueError):
                    state.waiters.remove((self.shared, future))
                self.locks._wake(self.key)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.locks._release(self.key, self.shared)


class PubSub:
    """Live messages by topic, the other half of a store: ``publish`` and ``subscribe``.

    This implementation delivers to subscribers in this process (through :class:`Broker`),
    which is all a store used by one process needs. A backend shared by several processes
    implements both to carry messages between them (``PostgresStore``: LISTEN/NOTIFY).
    """

    def __init__(self) -> None:
        self.broker = Broker()

    async def publish(self, topic: str, message: JSON) -> None:
        """Deliver ``message`` to every current subscriber of ``topic``."""
        self.broker.publish_local(topic, message)

    def may_deliver(self, topic: str) -> bool:
        """Whether a message published to ``topic`` now could reach a subscriber.

        Publishers may skip building a message nobody can receive. Subscribers in this process
        are known; an implementation that carries messages between processes answers True.
        """
        return self.broker.has_listeners(topic)

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[asyncio.Queue[JSON]]:
        """Receive the messages published to ``topic`` from now on, through a queue."""
        async with self.broker.listen(topic) as queue:
            yield queue


class Store(PubSub, ABC):
    """A flowstate storage backend: the storage contract below, plus :class:`PubSub`.

    Implement the abstract methods; everything above (scopes, resources, collections) is built
    on them. ``tests/test_store_conformance.py`` is the executable contract.
    """

    url: str = ""

    def __init__(self, *, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        super().__init__()
        if isinstance(max_record_bytes, bool) or not isinstance(max_record_bytes, int):
            raise TypeError(f"max_record_bytes must be an int, got {max_record_bytes!r}")
        if max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be at least 1, got {max_record_bytes}")
        self.max_record_bytes = max_record_bytes
        """The most bytes one record may take (see :data:`flowstate.limits.MAX_RECORD_BYTES`);
        every write that would make a record larger raises :func:`record_too_large`."""
        self.turns = KeyLocks()
        """Writers of one key in this process take turns here (see ``StateCell``)."""

    @abstractmethod
    async def read(self, key: str, fields: frozenset[str] | None = None) -> Record | None:
        """Return the record (only ``fields`` of it, or all when None), or None if absent.

        Reading never creates a record and never changes ``accessed_at``.
        """

    async def read_many(
        self, wanted: Mapping[str, frozenset[str] | None]
    ) -> dict[str, Record | None]:
        """Read several records in one round trip and one snapshot: ``key → fields`` (None:
        all of them) in, ``key → Record`` (None if absent) out.

        What a run needs to start (the session binding, the scope records, the static
        resources) is read with one call. The backends here read every key in one transaction
        (one statement on PostgreSQL); this fallback, for stores that do not override it,
        reads them one by one.
        """
        return {key: await self.read(key, fields) for key, fields in wanted.items()}

    @abstractmethod
    async def apply(self, key: str, change: Change, *, guard: Guard | None = None) -> Applied:
        """Resolve ``change`` against the record and write the result, atomically.

        Under the record's write lock, :func:`plan_commit` decides (``missing``, ``conflict``,
        ``noop``, or a mutation), loading the version, the fields in ``change.load_fields``
        (all when None) and, unless ``change.content`` is UNCHANGED, the content; a missing
        record has version 0 and no fields. A mutation is written: its sets and deletes, its
        appends onto the stored lists without loading them (a stored non-list raises
        :func:`~flowstate.ops.push_target_error`), the version bumped (creating the record
        at version 1 with ``created_at`` = now), ``accessed_at`` = now, commit →
        ``committed``. A noop changes nothing (not ``accessed_at``: :meth:`touch` does). With
        ``guard``, a write (not a noop) first checks the guard in the same transaction (see
        :class:`Guard`). A write that would make the record larger than
        :attr:`max_record_bytes` raises :func:`record_too_large` and writes nothing; the
        backend tracks sizes so that a push is checked without loading the list.

        The plan is pure, so a backend may make it more than once (e.g. first against a
        cached copy); what it writes must be planned against the version it replaces, so that
        no other commit is ever lost.
        """

    async def create(
        self,
        key: str,
        fields: Mapping[str, JSON],
        content: str | None = None,
        *,
        replace: bool = False,
        cap: Cap | None = None,
        guard: Guard | None = None,
    ) -> Created:
        """Create a record at version 1 (or, with ``replace``, overwrite an existing one).

        An existing record without ``replace`` → ``exists``, nothing written. With ``cap``,
        creating a *new* key while ``cap.max_instances`` records exist under ``cap.prefix``
        evicts (``lru``: smallest ``accessed_at``; ``oldest``: smallest ``created_at``; ties
        by key; see :meth:`Cap.to_evict`) or returns ``full`` (``none``). Count, eviction and
        insert commit together, so the cap holds under concurrent creates. ``previous`` is the
        replaced record. With ``guard``, checked first in the same transaction. A record over
        :attr:`max_record_bytes` raises :func:`record_too_large` before anything is written
        (nothing is evicted for it).
        """
        texts = {name: json_text(value) for name, value in fields.items()}
        sizes = {name: text_bytes(text) for name, text in texts.items()}
        size = sum(field_bytes(name, n) for name, n in sizes.items()) + text_bytes(content)
        self.check_size(key, size)
        creation = Creation(fields, content, replace, cap, guard, texts, sizes, size)
        return await self._create(key, creation)

    def check_size(self, key: str, size: int) -> None:
        """Raise :func:`record_too_large` if a record of ``size`` bytes is over the limit."""
        if size > self.max_record_bytes:
            raise record_too_large(key, self.max_record_bytes)

    @abstractmethod
    async def _create(self, key: str, new: Creation) -> Created:
        """:meth:`create`, as the backend does it."""

    @abstractmethod
    async def delete(self, key: str, *, guard: Guard | None = None) -> Record | None:
        """Delete a record; return it as it was (all fields), or None if it did not exist.

        With ``guard``, checked first in the same transaction (see :class:`Guard`).
        """

    @abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every record whose key starts with ``prefix``; return how many."""

    @abstractmethod
    async def touch(self, key: str) -> None:
        """Mark a record accessed now (for LRU eviction); a missing key is ignored."""

    def recent(self, key: str, fields: frozenset[str] | None, content: bool) -> Record | None:
        """The record as this process last wrote or read it, without I/O, if that shows
        ``fields`` (None: all of them) and, with ``content``, the content; else None.

        A state cell whose commit skipped versions (others wrote in between) takes this
        instead of reading the record again when its ``version`` is at least the commit's, so
        it must be exactly the record at that version (the database may be newer). Stores
        without such a copy answer None.
        """
        return None

    @abstractmethod
    async def scan(
        self, prefix: str, *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Keys starting with ``prefix``, sorted, strictly after ``after``, at most ``limit``.

        Cost grows with the matches, not with the number of other records.
        """

    @abstractmethod
    async def count(self, prefix: str) -> int:
        """How many keys start with ``prefix``."""

    # Bulk access to whole records, for maintenance (backups, copies between stores, schema
    # migrations, retention). Not used on the request path.

    async def export_records(
        self, prefix: str = "", *, after: str | None = None, limit: int = 500
    ) -> list[Record]:
        """Whole records under ``prefix`` in key order, strictly after ``after``, at most ``limit``.

        Every field (including the reserved schema-version field), the content, the version
        and both timestamps, as stored. The default reads the keys one by one; backends
        override it with one range query per batch.
        """
        out: list[Record] = []
        for key in await self.scan(prefix, after=after, limit=limit):
            record = await self.read(key)
            if record is not None:
                out.append(record)
        return out

    @abstractmethod
    async def import_records(self, records: Sequence[Record]) -> int:
        """Write whole records exactly as given, replacing records of the same keys.

        Version, fields, content and both timestamps are kept (no validation, no version
        bump: this restores what :meth:`export_records` returned, possibly from another
        backend). One batch commits together. Returns how many records were written. Exempt
        from :attr:`max_record_bytes` (a backup restores whatever it holds; the sizes are
        recorded, so the next write to a record over the limit is refused), as are
        :meth:`swap_records` and :meth:`delete_records`.
        """

    @abstractmethod
    async def swap_records(
        self, records: Sequence[Record], expected_versions: Sequence[int]
    ) -> list[str]:
        """Replace whole records, each only if still at its expected version; keys written.

        ``records[i]`` (its version, every field, content, timestamps) replaces the stored
        record of its key when that record exists at ``expected_versions[i]`` and was created
        at ``records[i].created_at`` (the record read: one deleted and created again starts
        over at version 1, and only its creation time tells it apart); others are left alone
        (a concurrent write: the caller reads again). One batch commits together. Used for
        bulk upgrades (``flowstate db migrate-state``), which keep ``accessed_at``, and for
        the tombstones of ``flowstate gc``.
        """

    @abstractmethod
    async def delete_records(self, records: Sequence[Record]) -> list[str]:
        """Delete records, each only if unchanged since read; the keys deleted, sorted.

        The stored record of ``records[i].key`` (all its fields and content) is deleted when
        it is at ``records[i].version`` and was created at ``records[i].created_at`` (as for
        :meth:`swap_records`, so that a record deleted and created again is not taken for
        the one read); others are left alone (written, replaced or deleted meanwhile). A key
        given twice is deleted if either matches. One batch commits together. The
        compare-and-delete of :meth:`swap_records`: ``flowstate gc`` removes the tombstones
        it wrote with it, never a binding that a new session of the id wrote meanwhile.
        """

    async def delete_keys(self, keys: Sequence[str]) -> int:
        """Delete these records (all their fields); return how many existed.

        The default deletes one by one; backends delete a batch in one transaction.
        """
        n = 0
        for key in keys:
            if await self.delete(key) is not None:
                n += 1
        return n

    async def delete_prefixes(self, prefixes: Sequence[str]) -> int:
        """:meth:`delete_prefix` for many prefixes; return how many records were deleted.

        The default deletes prefix by prefix; backends delete a batch in one transaction.
        """
        n = 0
        for prefix in prefixes:
            n += await self.delete_prefix(prefix)
        return n

    async def aclose(self) -> None:
        """Release connections and threads. Idempotent."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
