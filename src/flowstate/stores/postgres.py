"""The PostgreSQL store (``postgresql://user@host/db``): many server processes, one database.

Layout as in SQLite: ``fs_records`` (one row per record), ``fs_fields`` (one row per top-level
field, ``json`` text kept verbatim), ``fs_meta`` (schema version), plus ``fs_events`` for live
events too large for a NOTIFY payload. Keys use ``COLLATE "C"``, so prefix scans are index
range scans in code-point order.

Writes. Holding a record's row lock across read → resolve in Python → write → commit costs
four round trips, so :meth:`PostgresStore.apply` runs optimistically instead. It resolves the
change against a per-process cache of recently seen records (validated, never trusted: each
entry carries the record's ``version`` and ``gen``, an id that changes when a key is deleted
and created again) and writes with one statement that succeeds only if the record is still at
that version and generation: one round trip per write. An outcome that is not a commit
(no-op, conflict, missing, validation error) counts only if decided on what the database
showed during the call (a fresh read, or what a write sent during the call found), never on
an older cache entry. After a few failed attempts (contention from other processes) it falls
back to ``SELECT … FOR UPDATE`` in one transaction, which always makes progress. Lists that
are only appended to are extended in SQL (``fs_append``) without being loaded.

Within a process, writers of one key take turns, and writes of concurrent callers are
committed together: a caller that finds the writer idle writes at once on a connection kept
for that; meanwhile others queue and flusher tasks write them in batches, one statement per
batch, locking rows in key order so that batches of different processes cannot deadlock.

Caps: ``create`` with a cap takes a transaction-scoped advisory lock on the collection prefix,
so count, eviction and insert are serialised across processes.

Events: ``publish`` delivers locally at once and queues a NOTIFY (sent by one background task,
batched, in order); each process LISTENs on one dedicated connection, on one channel per
subscribed topic (a hash of schema and topic). Payloads over the NOTIFY limit go through
``fs_events`` and the notification carries the row id.

URL options (removed before connecting): ``schema`` (created if missing, set as the search
path of every connection), ``migrate`` (``false``: do not migrate on first use), ``min_size`` /
``max_size`` (pool), ``cache_size`` (records kept in the write cache, 0 disables it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from ..errors import StateValidationError
from ..ops import UNCHANGED, Change, Mutation, append_target_error
from .base import Applied, Cap, Created, Record, Store, prefix_end

__all__ = ["SCHEMA_VERSION", "PostgresStore", "migrate"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = Any  # asyncpg ships no type information
Pool = Any

# Server clock in nanoseconds (microsecond resolution): one clock for every process.
_NOW = "((extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000)"

# ------------------------------------------------------------------------------ migrations

_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            "CREATE SEQUENCE IF NOT EXISTS fs_record_gen CACHE 64",
            """CREATE TABLE IF NOT EXISTS fs_records (
                key TEXT COLLATE "C" PRIMARY KEY,
                version BIGINT NOT NULL,
                content TEXT,
                created_at BIGINT NOT NULL,
                accessed_at BIGINT NOT NULL,
                gen BIGINT NOT NULL DEFAULT nextval('fs_record_gen')
            ) WITH (fillfactor = 85)""",
            """CREATE TABLE IF NOT EXISTS fs_fields (
                key TEXT COLLATE "C" NOT NULL,
                name TEXT COLLATE "C" NOT NULL,
                value JSON NOT NULL,
                PRIMARY KEY (key, name)
            ) WITH (fillfactor = 85)""",
            """CREATE TABLE IF NOT EXISTS fs_events (
                id BIGSERIAL PRIMARY KEY,
                topic TEXT NOT NULL,
                payload JSON NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX IF NOT EXISTS fs_events_created_at ON fs_events (created_at)",
            # delete(key) in one round trip: lock and delete the record first, then (a new
            # statement, so a fresh snapshot) its fields, which no writer can touch any more.
            """CREATE OR REPLACE FUNCTION fs_delete(p_key TEXT)
            RETURNS TABLE (o_version BIGINT, o_content TEXT, o_created_at BIGINT,
                           o_accessed_at BIGINT, o_names TEXT[], o_values JSON[])
            LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM fs_records r WHERE r.key = p_key
                RETURNING r.version, r.content, r.created_at, r.accessed_at
                INTO o_version, o_content, o_created_at, o_accessed_at;
                IF NOT FOUND THEN
                    RETURN;
                END IF;
                WITH d AS (DELETE FROM fs_fields f WHERE f.key = p_key RETURNING f.name, f.value)
                SELECT array_agg(d.name), array_agg(d.value) INTO o_names, o_values FROM d;
                RETURN NEXT;
            END $$""",
            # push_state without loading the list: append the items' JSON text to the stored
            # array's text (kept verbatim by the json type); absent or null → ``p_full``.
            """CREATE OR REPLACE FUNCTION fs_append(p_name TEXT, p_old JSON, p_full TEXT,
                                                  p_items TEXT)
            RETURNS JSON LANGUAGE plpgsql IMMUTABLE AS $$
            DECLARE
                kind TEXT := json_typeof(p_old);
                t TEXT;
            BEGIN
                IF kind IS NULL OR kind = 'null' THEN
                    RETURN p_full::json;
                END IF;
                IF kind <> 'array' THEN
                    kind := CASE kind
                        WHEN 'number' THEN
                            CASE WHEN p_old::text ~ '[.eE]' THEN 'float' ELSE 'int' END
                        WHEN 'string' THEN 'str'
                        WHEN 'object' THEN 'dict'
                        WHEN 'boolean' THEN 'bool'
                        ELSE kind END;
                    RAISE EXCEPTION USING ERRCODE = 'FS001', MESSAGE = p_name, DETAIL = kind;
                END IF;
                t := rtrim(left(rtrim(p_old::text, E' \t\r\n'), -1), E' \t\r\n');
                IF right(t, 1) = '[' THEN
                    RETURN (t || p_items || ']')::json;
                END IF;
                RETURN (t || ',' || p_items || ']')::json;
            END $$""",
            # The current version of records (for a compare-and-swap that lost): a volatile
            # plpgsql function, so its query sees a fresh snapshot, not its caller's.
            """CREATE OR REPLACE FUNCTION fs_current(p_keys TEXT[])
            RETURNS TABLE (o_key TEXT, o_version BIGINT, o_gen BIGINT)
            LANGUAGE plpgsql VOLATILE AS $$
            BEGIN
                RETURN QUERY SELECT f.key, f.version, f.gen FROM fs_records f
                    WHERE f.key = ANY(p_keys);
            END $$""",
            # delete_prefix: records first (waiting for their writers), then every field row
            # in the range whose record is gone.
            """CREATE OR REPLACE FUNCTION fs_delete_prefix(p_lo TEXT, p_hi TEXT)
            RETURNS BIGINT LANGUAGE plpgsql AS $$
            DECLARE n BIGINT;
            BEGIN
                DELETE FROM fs_records r
                WHERE r.key >= p_lo COLLATE "C" AND r.key < p_hi COLLATE "C";
                GET DIAGNOSTICS n = ROW_COUNT;
                DELETE FROM fs_fields f
                WHERE f.key >= p_lo COLLATE "C" AND f.key < p_hi COLLATE "C"
                  AND NOT EXISTS (SELECT 1 FROM fs_records r WHERE r.key = f.key);
                RETURN n;
            END $$""",
        ),
    ),
)

SCHEMA_VERSION = _MIGRATIONS[-1][0]
"""The schema version this code writes and expects."""

_MIGRATE_LOCK = "flowstate:migrate"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclasses.dataclass(frozen=True, slots=True)
class _Config:
    dsn: str
    schema: str | None
    migrate: bool
    min_size: int
    max_size: int
    cache_size: int

    @property
    def server_settings(self) -> dict[str, str]:
        settings = {"application_name": "flowstate"}
        if self.schema is not None:
            settings["search_path"] = _quote_ident(self.schema)
        return settings


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_url(url: str) -> _Config:
    """Split flowstate's own query options off a PostgreSQL URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(f"a PostgreSQL URL starts with postgresql://, got {url!r}")
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("schema", "migrate", "min_size", "max_size", "cache_size"):
            ours[name] = value
        else:
            rest.append((name, value))
    schema = ours.get("schema") or None
    if schema is not None and (len(schema.encode()) > 63 or "\x00" in schema):
        raise ValueError(f"schema name {schema!r} is not a valid PostgreSQL identifier")
    flag = ours.get("migrate", "true").lower()
    if flag not in _TRUE | _FALSE:
        raise ValueError(f"migrate must be true or false, got {flag!r}")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), parts.fragment))
    min_size = int(ours.get("min_size", "1"))
    max_size = max(int(ours.get("max_size", "10")), min_size, 1)
    return _Config(
        dsn, schema, flag in _TRUE, min_size, max_size, int(ours.get("cache_size", "4096"))
    )


async def _migrate_conn(conn: Connection, schema: str | None) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION` (serialised by an advisory lock)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _MIGRATE_LOCK)
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(schema)}")
            await conn.execute("SELECT set_config('search_path', $1, true)", _quote_ident(schema))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS fs_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        raw = await conn.fetchval("SELECT value FROM fs_meta WHERE name = 'schema_version'")
        current = int(raw) if raw is not None else 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the flowstate tables are at schema version {current}, newer than this "
                f"flowstate ({SCHEMA_VERSION}); upgrade flowstate"
            )
        for version, statements in _MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            current = version
        await conn.execute(
            "INSERT INTO fs_meta (name, value) VALUES ('schema_version', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            str(current),
        )
        return current


async def _check_version(conn: Connection) -> None:
    """With ``migrate=false``: refuse to run against missing or outdated tables."""
    exists = await conn.fetchval("SELECT to_regclass('fs_meta') IS NOT NULL")
    raw = None
    if exists:
        raw = await conn.fetchval("SELECT value FROM fs_meta WHERE name = 'schema_version'")
    if raw is None or int(raw) != SCHEMA_VERSION:
        found = "no flowstate tables" if raw is None else f"schema version {raw}"
        raise RuntimeError(
            f"found {found}, expected version {SCHEMA_VERSION}: run `flowstate db migrate "
            "--store URL` (or open the store without migrate=false)"
        )


async def migrate(url: str) -> int:
    """Create or upgrade the flowstate tables at ``url`` (and its ``?schema=``).

    Idempotent and safe to run from several processes at once. Returns the schema version.
    """
    config = _parse_url(url)
    conn = await asyncpg.connect(config.dsn)
    try:
        return await _migrate_conn(conn, config.schema)
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- write cache


def _dumps(value: Any, name: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise StateValidationError(
            f'field "{name}": NaN and infinity are not JSON and cannot be stored',
            errors=[{"loc": [name], "msg": "value is not valid JSON", "type": "json_type"}],
        ) from None


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    """What one process last saw of a record, as of ``version`` and ``gen``.

    ``fields`` maps present field names to their JSON text; ``known`` are the names whose
    presence is known (None: all of them). ``content`` is meaningful only if ``has_content``.
    ``seen`` is the store's clock when the statement that saw it was sent: an entry seen after
    an operation began shows the database as it was during that operation.
    """

    version: int
    gen: int
    fields: dict[str, str]
    known: frozenset[str] | None
    content: str | None
    has_content: bool
    seen: int = 0

    @property
    def size(self) -> int:
        return sum(len(v) + len(k) for k, v in self.fields.items()) + len(self.content or "")

    def covers(self, names: frozenset[str] | None, content: bool) -> bool:
        if content and not self.has_content:
            return False
        if self.known is None:
            return True
        return names is not None and names <= self.known

    def decoded(self, names: frozenset[str] | None) -> dict[str, Any]:
        if names is None:
            return {k: json.loads(v) for k, v in self.fields.items()}
        return {k: json.loads(self.fields[k]) for k in names if k in self.fields}

    def merged(self, newer: _Entry) -> _Entry:
        """Combine two reads of the same version (each may know different fields)."""
        if (newer.version, newer.gen) != (self.version, self.gen):
            return newer
        if self.known is None or newer.known is None:
            known = None
        else:
            known = self.known | newer.known
        content_from = newer if newer.has_content else self
        return _Entry(
            self.version,
            self.gen,
            {**self.fields, **newer.fields},
            known,
            content_from.content,
            content_from.has_content,
            max(self.seen, newer.seen),
        )

    def after(self, mutation: Mutation, enc: _Encoded, version: int, gen: int, seen: int) -> _Entry:
        """This entry once ``mutation`` is written (appended lists only if already known)."""
        fields = {k: v for k, v in self.fields.items() if k not in mutation.delete}
        fields.update(enc.sets)
        known = None if self.known is None else set(self.known | set(enc.sets) | mutation.delete)
        for name, (full, items) in enc.appends.items():
            old = fields.get(name)
            if old is not None and old != "null":
                fields[name] = _append_text(old, items)
            elif old is not None or known is None or name in known:
                fields[name] = full  # absent or null: the store writes the full list
            if known is not None and name in fields:
                known.add(name)
        frozen = None if known is None else frozenset(known)
        if mutation.content is UNCHANGED:
            content, has_content = self.content, self.has_content
        else:
            content, has_content = mutation.content, True  # type: ignore[assignment]
        return _Entry(version, gen, fields, frozen, content, has_content, seen)


def _append_text(old: str, items: str) -> str:
    """What ``fs_append`` makes of a stored array's text (kept identical to the SQL)."""
    head = old.rstrip(" \t\r\n")[:-1].rstrip(" \t\r\n")
    return f"{head}{items}]" if head.endswith("[") else f"{head},{items}]"


@dataclasses.dataclass(frozen=True, slots=True)
class _Encoded:
    """A mutation's values as JSON text: ``sets``, and ``appends`` as (full list, items)."""

    sets: dict[str, str]
    appends: dict[str, tuple[str, str]]

    @classmethod
    def of(cls, mutation: Mutation) -> _Encoded:
        sets = {name: _dumps(value, name) for name, value in mutation.set.items()}
        appends = {
            name: (_dumps([*base, *items], name), ",".join(_dumps(i, name) for i in items))
            for name, (base, items) in mutation.append.items()
        }
        return cls(sets, appends)


class _Cache:
    """A bounded LRU of :class:`_Entry` by key (entries are validated on use, never trusted)."""

    def __init__(self, max_entries: int, max_bytes: int = 32 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[_Entry, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> _Entry | None:
        item = self._entries.get(key)
        if item is None:
            return None
        self._entries.move_to_end(key)
        return item[0]

    def put(self, key: str, entry: _Entry) -> None:
        self.drop(key)
        size = entry.size
        if self.max_entries <= 0 or size > self.max_bytes // 4:
            return
        self._entries[key] = (entry, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self._bytes -= old

    def merge(self, key: str, entry: _Entry) -> None:
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


class _KeyLocks:
    """A queue per key in use, so writers of one key in this process take turns.

    A key is held while it is in ``_waiters``; its deque holds the futures of those waiting.
    Cheaper than an ``asyncio.Lock`` per key, which would be created and dropped per write.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def hold(self, key: str) -> _Turn:
        return _Turn(self, key)

    def _release(self, key: str) -> None:
        waiters = self._waiters[key]
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)  # the key passes to that waiter
                return
        del self._waiters[key]


class _Turn:
    __slots__ = ("key", "locks")

    def __init__(self, locks: _KeyLocks, key: str) -> None:
        self.locks = locks
        self.key = key

    async def __aenter__(self) -> None:
        waiters = self.locks._waiters.get(self.key)
        if waiters is None:
            self.locks._waiters[self.key] = collections.deque()
            return
        future = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.locks._release(self.key)  # handed the key, but leaving: pass it on
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(future)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.locks._release(self.key)


# ------------------------------------------------------------------------------------ SQL


@functools.cache
def _load_sql(which: Literal["all", "some", "none"], content: bool) -> str:
    """Version, generation, (content), timestamps and fields of one record, in one snapshot.

    ``which``: all fields, those named in ``$2``, or none.
    """
    body = "r.content" if content else "NULL::text"
    head = f"SELECT r.version, r.gen, {body}, r.created_at, r.accessed_at"
    if which == "none":
        return f"{head}, NULL::text[], NULL::json[] FROM fs_records r WHERE r.key = $1"
    where = " AND x.name = ANY($2::text[])" if which == "some" else ""
    return (
        f"{head}, f.names, f.vals FROM fs_records r LEFT JOIN LATERAL ("
        "SELECT array_agg(x.name) AS names, array_agg(x.value) AS vals "
        f"FROM fs_fields x WHERE x.key = r.key{where}) f ON true WHERE r.key = $1"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """Which parts a batch write has; one prepared statement per shape."""

    updates: bool = False
    update_content: bool = False
    inserts: bool = False
    changed: bool = False  # fields that exist: UPDATE
    added: bool = False  # fields that do not: INSERT
    deletes: bool = False
    appends: bool = False
    report: bool = False  # also return the current version of records not written


@functools.cache
def _batch_sql(shape: _Shape) -> str:
    """One statement writing a batch of records (distinct keys), each guarded by its version
    and generation; returns ``(key, version, gen)`` for every record it wrote.

    Records are locked in key order (an index scan of ``key = ANY(...)``, inserts sorted), so
    batches from several processes cannot deadlock each other. Field rows are touched only for
    records this statement wrote, whose row locks it holds. Parameters, in order, for the parts
    present: update keys, versions, gens, [content flags, contents]; insert keys, contents;
    changed keys, names, values; added keys, names, values; delete keys, names; append keys,
    names, whole lists, items.
    """
    n = 0

    def p(kind: str) -> str:
        nonlocal n
        n += 1
        return f"${n}::{kind}"

    parts: list[str] = []
    results: list[str] = []
    touched: list[str] = []
    if shape.updates:
        keys, versions, gens = p("text[]"), p("int8[]"), p("int8[]")
        touched.append(keys)
        at = f"array_position({keys}, f.key)"
        content = ""
        if shape.update_content:
            flags, texts = p("bool[]"), p("text[]")
            content = (
                f", content = CASE WHEN ({flags})[{at}] THEN ({texts})[{at}] ELSE f.content END"
            )
        parts.append(
            f"ru AS (UPDATE fs_records f SET version = f.version + 1, accessed_at = {_NOW}"
            f"{content} WHERE f.key = ANY({keys}) AND f.version = ({versions})[{at}] "
            f"AND f.gen = ({gens})[{at}] RETURNING f.key, f.version, f.gen)"
        )
        results.append("SELECT key, version, gen FROM ru")
    if shape.inserts:
        keys, texts = p("text[]"), p("text[]")
        touched.append(keys)
        parts.append(
            "ri AS (INSERT INTO fs_records (key, version, content, created_at, accessed_at) "
            f"SELECT u.key, 1, u.c, t.now, t.now FROM unnest({keys}, {texts}) AS u(key, c), "
            f"(SELECT {_NOW} AS now) t ORDER BY u.key "
            "ON CONFLICT (key) DO NOTHING RETURNING key, version, gen)"
        )
        results.append("SELECT key, version, gen FROM ri")
    parts.append("r AS (" + " UNION ALL ".join(results) + ")")
    if shape.changed:
        keys, names, values = p("text[]"), p("text[]"), p("json[]")
        parts.append(
            "fc AS (UPDATE fs_fields f SET value = v.value "
            f"FROM unnest({keys}, {names}, {values}) AS v(key, name, value), r "
            "WHERE f.key = v.key AND f.name = v.name AND r.key = v.key)"
        )
    if shape.added:
        keys, names, values = p("text[]"), p("text[]"), p("json[]")
        parts.append(
            "fa AS (INSERT INTO fs_fields (key, name, value) SELECT v.key, v.name, v.value "
            f"FROM unnest({keys}, {names}, {values}) AS v(key, name, value) "
            "JOIN r ON r.key = v.key ON CONFLICT (key, name) DO UPDATE SET value = EXCLUDED.value)"
        )
    if shape.deletes:
        keys, names = p("text[]"), p("text[]")
        parts.append(
            f"fd AS (DELETE FROM fs_fields f USING unnest({keys}, {names}) AS v(key, name), r "
            "WHERE f.key = v.key AND f.name = v.name AND r.key = v.key)"
        )
    if shape.appends:
        keys, names, wholes, items = p("text[]"), p("text[]"), p("text[]"), p("text[]")
        parts.append(
            "fu AS (UPDATE fs_fields f SET value = fs_append(f.name, f.value, v.whole, v.items) "
            f"FROM unnest({keys}, {names}, {wholes}, {items}) AS v(key, name, whole, items), r "
            "WHERE f.key = v.key AND f.name = v.name AND r.key = v.key)"
        )
        parts.append(
            "fi AS (INSERT INTO fs_fields (key, name, value) SELECT v.key, v.name, v.whole::json "
            f"FROM unnest({keys}, {names}, {wholes}) AS v(key, name, whole) "
            "JOIN r ON r.key = v.key WHERE NOT EXISTS "
            "(SELECT 1 FROM fs_fields f WHERE f.key = v.key AND f.name = v.name))"
        )
    main = "SELECT key, version, gen, true FROM r"
    if shape.report:
        # Where the version check failed: the record as it is now (fs_current reads with a
        # fresh snapshot, taken after any wait above), so a compare-and-swap can report its
        # conflict without another round trip.
        wanted = " || ".join(touched)
        parts.append(
            f"cur AS (SELECT * FROM fs_current(ARRAY(SELECT k FROM unnest({wanted}) AS k "
            "WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.key = k))) "
            f"WHERE (SELECT count(*) FROM r) < cardinality({wanted}))"  # only if one failed
        )
        main += " UNION ALL SELECT o_key, o_version, o_gen, false FROM cur"
    return "WITH " + ", ".join(parts) + " " + main


@dataclasses.dataclass(eq=False, slots=True)
class _Job:
    """One record write waiting to be committed, possibly together with others."""

    key: str
    entry: _Entry | None  # what it was resolved against (None: the record did not exist)
    mutation: Mutation
    enc: _Encoded
    report: bool = False  # a compare-and-swap: wants the current version if not written
    future: asyncio.Future[_Outcome | None] | None = None
    sent: int = 0  # the store's clock when its statement was sent


def _batch_args(jobs: list[_Job]) -> tuple[_Shape, list[Any]]:
    """The statement shape and parameters that write ``jobs`` (distinct keys)."""
    upd: list[_Job] = []
    ins: list[_Job] = []
    changed: tuple[list[str], list[str], list[str]] = ([], [], [])
    added: tuple[list[str], list[str], list[str]] = ([], [], [])
    deletes: tuple[list[str], list[str]] = ([], [])
    appends: tuple[list[str], list[str], list[str], list[str]] = ([], [], [], [])
    for job in sorted(jobs, key=lambda j: j.key):
        entry, enc, key = job.entry, job.enc, job.key
        if entry is None:
            ins.append(job)
            sets = {**enc.sets, **{name: whole for name, (whole, _) in enc.appends.items()}}
            for name, value in sets.items():
                for column, item in zip(added, (key, name, value), strict=True):
                    column.append(item)
            continue
        upd.append(job)
        for name, value in enc.sets.items():
            target = changed if name in entry.fields else added
            for column, item in zip(target, (key, name, value), strict=True):
                column.append(item)
        for name in job.mutation.delete:
            deletes[0].append(key)
            deletes[1].append(name)
        for name, (whole, items) in enc.appends.items():
            for column, value in zip(appends, (key, name, whole, items), strict=True):
                column.append(value)
    update_content = any(j.mutation.content is not UNCHANGED for j in upd)
    shape = _Shape(
        updates=bool(upd),
        update_content=update_content,
        inserts=bool(ins),
        changed=bool(changed[0]),
        added=bool(added[0]),
        deletes=bool(deletes[0]),
        appends=bool(appends[0]),
        report=any(j.report for j in jobs),
    )
    args: list[Any] = []
    if upd:
        args += [[j.key for j in upd], [j.entry.version for j in upd if j.entry]]
        args.append([j.entry.gen for j in upd if j.entry])
        if update_content:
            args.append([j.mutation.content is not UNCHANGED for j in upd])
            args.append(
                [None if j.mutation.content is UNCHANGED else j.mutation.content for j in upd]
            )
    if ins:
        args.append([j.key for j in ins])
        args.append([None if j.mutation.content is UNCHANGED else j.mutation.content for j in ins])
    for part in (changed, added, deletes, appends):
        if part[0]:
            args += part
    return shape, args


class _Outcome(NamedTuple):
    """A job's write: done (``version``, ``gen`` are the new ones) or not (the current ones)."""

    written: bool
    version: int
    gen: int


async def _write_batch(conn: Connection, jobs: list[_Job]) -> dict[str, _Outcome]:
    """Write ``jobs`` in one statement; ``key → outcome`` (absent: not written, unknown)."""
    shape, args = _batch_args(jobs)
    try:
        rows = await conn.fetch(_batch_sql(shape), *args)
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == "FS001":  # raised by fs_append
            raise append_target_error(exc.message, exc.detail) from None
        raise
    return {row[0]: _Outcome(row[3], row[1], row[2]) for row in rows}


_FIELDS_SQL = "SELECT name, value FROM fs_fields WHERE key = $1"


def _needed(change: Change) -> frozenset[str] | None:
    """Fields to load for ``change``: lists that are only appended to are appended in SQL."""
    names = change.needed_fields
    return None if names is None else names - change.lazy_appends


async def _keep_session(conn: Connection) -> None:
    """Pool release without asyncpg's reset query (a round trip per operation).

    The store leaves no session state behind: the search path is a startup setting, advisory
    locks are transaction-scoped, and it never LISTENs, opens cursors or SETs on pool
    connections. An open transaction is still rolled back by asyncpg itself.
    """


_POOL_OPTIONS: dict[str, Any] = (
    {"reset": _keep_session} if "reset" in inspect.signature(asyncpg.create_pool).parameters else {}
)


class _Retry(Exception):
    """Roll back and run the transaction again (a concurrent insert won a race)."""


_RETRYABLE = (
    _Retry,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,
)

# ------------------------------------------------------------------------------- events

_NOTIFY_LIMIT = 7900  # bytes; PostgreSQL refuses payloads of 8000 or more
_EVENT_RETENTION = "5 minutes"


class _Events:
    """Live events across processes: one LISTEN connection, one background NOTIFY sender."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.loop = asyncio.get_running_loop()
        self.origin = uuid.uuid4().hex
        self.conn: Connection | None = None
        self.channels: dict[str, int] = {}
        self.lock = asyncio.Lock()
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.outbox: asyncio.Queue[tuple[str, str, str, Any]] = asyncio.Queue()
        self.sender: asyncio.Task[None] | None = None
        self.dispatcher: asyncio.Task[None] | None = None
        self.reconnecting: asyncio.Future[None] | None = None
        self.last_prune = 0.0
        self.closed = False

    def channel(self, topic: str) -> str:
        digest = hashlib.sha1(f"{self.store._config.schema}\0{topic}".encode()).hexdigest()
        return f"fs_{digest[:40]}"

    # outgoing

    def send(self, topic: str, message: Any) -> None:
        if self.sender is None:
            self.sender = asyncio.create_task(self._send_loop(), name="flowstate-pg-notify")
        self.outbox.put_nowait((self.channel(topic), topic, self.origin, message))

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            batch = [item]
            while not self.outbox.empty() and len(batch) < 256:
                batch.append(self.outbox.get_nowait())
            try:
                await self._notify(batch)
            except Exception:  # live events are best effort; never kill the sender
                log.exception("flowstate: could not publish %d event(s)", len(batch))
            finally:
                for _ in batch:
                    self.outbox.task_done()

    async def _notify(self, batch: list[tuple[str, str, str, Any]]) -> None:
        pool = await self.store._get_pool()
        channels: list[str] = []
        payloads: list[str] = []
        large: list[tuple[str, str, str]] = []
        for channel, topic, origin, message in batch:
            payload = json.dumps({"o": origin, "t": topic, "m": message}, ensure_ascii=False)
            if len(payload.encode()) <= _NOTIFY_LIMIT:
                channels.append(channel)
                payloads.append(payload)
            else:
                large.append((channel, topic, json.dumps(message, ensure_ascii=False)))
        async with pool.acquire() as conn:
            if large:  # keep publication order: store the large ones first, then notify all
                async with conn.transaction():
                    ids = await conn.fetch(
                        "INSERT INTO fs_events (topic, payload) "
                        "SELECT * FROM unnest($1::text[], $2::json[]) RETURNING id",
                        [t for _, t, _ in large],
                        [p for _, _, p in large],
                    )
                by_payload = iter(r["id"] for r in ids)
                channels, payloads = [], []
                for channel, topic, origin, message in batch:
                    payload = json.dumps(
                        {"o": origin, "t": topic, "m": message}, ensure_ascii=False
                    )
                    if len(payload.encode()) > _NOTIFY_LIMIT:
                        payload = json.dumps({"o": origin, "t": topic, "id": next(by_payload)})
                    channels.append(channel)
                    payloads.append(payload)
            await conn.execute(
                "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY "
                "AS u(c, p, i) ORDER BY i",
                channels,
                payloads,
            )
            if large and time.monotonic() - self.last_prune > 30:
                self.last_prune = time.monotonic()
                await conn.execute(
                    "DELETE FROM fs_events "
                    f"WHERE created_at < now() - interval '{_EVENT_RETENTION}'"
                )

    async def flush(self) -> None:
        if self.sender is not None and not self.sender.done():
            await self.outbox.join()

    # incoming

    def _on_notify(self, conn: Connection, pid: int, channel: str, payload: str) -> None:
        self.inbox.put_nowait(payload)

    def _on_lost(self, conn: Connection) -> None:
        if conn is self.conn and not self.closed:
            self.conn = None
            self.reconnecting = asyncio.ensure_future(self._reconnect())

    async def _connect(self) -> None:
        config = self.store._config
        conn = await asyncpg.connect(config.dsn, server_settings={"application_name": "flowstate"})
        conn.add_termination_listener(self._on_lost)
        for channel in self.channels:
            await conn.add_listener(channel, self._on_notify)
        self.conn = conn
        if self.dispatcher is None:
            self.dispatcher = asyncio.create_task(self._dispatch(), name="flowstate-pg-listen")

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self.closed and self.conn is None:
            try:
                async with self.lock:
                    if self.conn is None and not self.closed:
                        await self._connect()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("flowstate: event listener reconnect failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def add(self, topic: str) -> None:
        channel = self.channel(topic)
        async with self.lock:
            if self.closed:
                raise RuntimeError(f"store {self.store.url} is closed")
            if self.conn is None:
                await self._connect()
            count = self.channels.get(channel, 0)
            if count == 0 and self.conn is not None:
                await self.conn.add_listener(channel, self._on_notify)
            self.channels[channel] = count + 1

    async def remove(self, topic: str) -> None:
        channel = self.channel(topic)
        async with self.lock:
            count = self.channels.get(channel, 0) - 1
            if count > 0:
                self.channels[channel] = count
                return
            self.channels.pop(channel, None)
            if self.conn is not None and not self.conn.is_closed():
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await self.conn.remove_listener(channel, self._on_notify)

    async def _dispatch(self) -> None:
        while True:
            raw = await self.inbox.get()
            try:
                data = json.loads(raw)
                if data.get("o") == self.origin:
                    continue  # published here: already delivered locally
                topic = data["t"]
                if topic not in self.store.broker._queues:
                    continue
                if "id" in data:
                    pool = await self.store._get_pool()
                    payload = await pool.fetchval(
                        "SELECT payload FROM fs_events WHERE id = $1", data["id"]
                    )
                    if payload is None:
                        log.warning("flowstate: event %s expired before delivery", data["id"])
                        continue
                    message = json.loads(payload)
                else:
                    message = data["m"]
                self.store.broker.publish_local(topic, message)
            except Exception:
                log.exception("flowstate: could not deliver an event")

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 10)
        self.closed = True
        if self.sender is not None:
            self.sender.cancel()
        if self.dispatcher is not None:
            self.dispatcher.cancel()
        for task in (self.sender, self.dispatcher):
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)


# --------------------------------------------------------------------------------- store


class PostgresStore(Store):
    """Records in PostgreSQL, shared by any number of processes (``postgresql://…``)."""

    optimistic_attempts = 3
    max_batch = 64

    def __init__(self, url: str, *, migrate: bool | None = None) -> None:
        super().__init__()
        self._config = _parse_url(url)
        if migrate is not None:
            self._config = dataclasses.replace(self._config, migrate=migrate)
        self.url = url
        self._pool: Pool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._connecting: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._cache = _Cache(self._config.cache_size)
        self._locks = _KeyLocks()
        self._events: _Events | None = None
        self._closed = False
        self._pending: list[_Job] = []
        self._flushers = 0
        self._clock = 0
        self._writer_conn: Connection | None = None
        self._max_flushers = max(1, self._config.max_size // 2)
        self._flush_tasks: set[asyncio.Task[None]] = set()

    @property
    def schema(self) -> str | None:
        """The PostgreSQL schema holding the tables (None: the server's search path)."""
        return self._config.schema

    # ------------------------------------------------------------------ connections

    async def _get_pool(self) -> Pool:
        if self._closed:
            raise RuntimeError(f"store {self.url} is closed")
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._pool_loop is loop:
            return self._pool
        if self._connecting is None or self._connecting[0] is not loop:
            self._connecting = (loop, asyncio.Lock())
        async with self._connecting[1]:
            if self._pool is not None and self._pool_loop is loop:
                return self._pool
            if self._pool is not None:  # used from a new event loop: the old pool is unusable
                with contextlib.suppress(Exception):
                    self._pool.terminate()
                self._pool = None
                self._events = None
                self._pending, self._flushers, self._flush_tasks = [], 0, set()
                self._writer_conn = None
            config = self._config
            conn = await asyncpg.connect(config.dsn)
            try:
                if config.migrate:
                    await _migrate_conn(conn, config.schema)
                else:
                    if config.schema is not None:
                        await conn.execute(
                            "SELECT set_config('search_path', $1, false)",
                            _quote_ident(config.schema),
                        )
                    await _check_version(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                config.dsn,
                min_size=min(config.min_size, config.max_size),
                max_size=config.max_size,
                server_settings=config.server_settings,
                **_POOL_OPTIONS,
            )
            self._pool_loop = loop
            return self._pool

    async def _transact(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``fn`` in a transaction, again on deadlocks and lost insert races."""
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            for attempt in range(100):
                try:
                    async with conn.transaction():
                        return await fn(conn)
                except _RETRYABLE:
                    await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
        raise RuntimeError("flowstate: a PostgreSQL transaction kept failing; giving up")

    # ------------------------------------------------------------------ reading

    def _tick(self) -> int:
        """The store's clock: orders what this process sent and saw (see ``_Entry.seen``)."""
        self._clock += 1
        return self._clock

    async def _load(
        self, conn: Connection, key: str, names: frozenset[str] | None, content: bool
    ) -> tuple[_Entry, Record] | None:
        seen = self._tick()
        if names is None:
            row = await conn.fetchrow(_load_sql("all", content), key)
        elif not names:
            row = await conn.fetchrow(_load_sql("none", content), key)
        else:
            row = await conn.fetchrow(_load_sql("some", content), key, list(names))
        if row is None:
            return None
        version, gen, text, created_at, accessed_at, fnames, fvalues = row
        fields = dict(zip(fnames, fvalues, strict=True)) if fnames else {}
        known = None if names is None else frozenset(names)
        entry = _Entry(version, gen, fields, known, text, content, seen)
        record = Record(
            key,
            version,
            {k: json.loads(v) for k, v in fields.items()},
            text,
            created_at,
            accessed_at,
        )
        return entry, record

    async def read(self, key: str, fields: frozenset[str] | None = None) -> Record | None:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            loaded = await self._load(conn, key, fields, True)
        if loaded is None:
            return None
        self._cache.merge(key, loaded[0])
        return loaded[1]

    # ------------------------------------------------------------------ writing

    # Writes from concurrent callers are committed together: a caller that finds the writer
    # idle writes its own record at once; while that is in flight, others queue up and one
    # or more flusher tasks write them in batches (one statement each). Every record in a
    # batch is still guarded by its own version and generation.

    async def _commit(self, job: _Job) -> _Outcome | None:
        """Write one resolved job, alone or in a batch."""
        if not self._pending and self._flushers == 0:
            self._flushers += 1
            written: _Outcome | None = None
            try:
                pool = await self._get_pool()
                if self._config.max_size < 2:
                    async with pool.acquire() as conn:
                        written = await self._write_alone(conn, job)
                else:  # a connection kept for these writes: no pool round trip per write
                    conn = self._writer_conn
                    if conn is None or conn.is_closed():
                        conn = self._writer_conn = await pool.acquire()
                    try:
                        written = await self._write_alone(conn, job)
                    except (StateValidationError, asyncpg.PostgresError):
                        raise  # the statement failed, the connection is fine
                    except BaseException:  # cancelled or broken mid-statement: not reusable
                        self._writer_conn = None
                        with contextlib.suppress(BaseException):
                            conn.terminate()
                            await pool.release(conn)
                        raise
            finally:
                self._flushers -= 1
                if self._pending:
                    self._spawn_flusher()
            return written
        job.future = asyncio.get_running_loop().create_future()
        self._pending.append(job)
        if self._flushers < self._max_flushers:
            self._spawn_flusher()
        return await job.future

    async def _write_alone(self, conn: Connection, job: _Job) -> _Outcome | None:
        job.sent = self._tick()
        try:
            return (await _write_batch(conn, [job])).get(job.key)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            return None  # treated like a moved record: the caller reloads and tries again

    def _spawn_flusher(self) -> None:
        self._flushers += 1
        task = asyncio.get_running_loop().create_task(self._flush_loop())
        self._flush_tasks.add(task)
        task.add_done_callback(self._flush_tasks.discard)

    def _take_batch(self) -> list[_Job]:
        batch: list[_Job] = []
        rest: list[_Job] = []
        keys: set[str] = set()
        for job in self._pending:
            if job.future is not None and job.future.done():
                continue  # its caller gave up: do not write it
            if job.key in keys or len(batch) >= self.max_batch:
                rest.append(job)
            else:
                keys.add(job.key)
                batch.append(job)
        self._pending = rest
        return batch

    async def _flush_loop(self) -> None:
        try:
            while batch := self._take_batch():
                await self._flush(batch)
        finally:
            self._flushers -= 1

    async def _flush(self, batch: list[_Job]) -> None:
        def settle(job: _Job, value: _Outcome | BaseException | None) -> None:
            future = job.future
            if future is None or future.done():
                return
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                if len(batch) > 1:
                    sent = self._tick()
                    for job in batch:
                        job.sent = sent
                    try:
                        written = await _write_batch(conn, batch)
                    except (asyncpg.PostgresError, StateValidationError):
                        pass  # one job's error (or a deadlock): write them one by one
                    else:
                        for job in batch:
                            settle(job, written.get(job.key))
                        return
                for job in batch:
                    try:
                        settle(job, await self._write_alone(conn, job))
                    except Exception as exc:
                        settle(job, exc)
        except BaseException as exc:
            for job in batch:
                settle(job, exc)
            if not isinstance(exc, Exception):
                raise

    async def apply(self, key: str, change: Change, *, touch: bool = False) -> Applied:
        pool = await self._get_pool()
        names = _needed(change)
        want_content = change.content is not UNCHANGED
        expected = change.expected_version
        start = self._tick()
        async with self._locks.hold(key):  # writers of one key in this process take turns
            try:
                for _ in range(self.optimistic_attempts):
                    entry = self._cache.get(key)
                    # what was seen since this call began is the database during this call
                    fresh = entry is not None and entry.seen > start
                    if fresh and entry is not None and expected not in (None, entry.version):
                        return Applied("conflict", entry.version)
                    if entry is None or not entry.covers(names, want_content):
                        loaded = await self._load(pool, key, names, want_content)
                        fresh = True
                        entry = None if loaded is None else loaded[0]
                        if entry is not None:
                            self._cache.merge(key, entry)
                            entry = self._cache.get(key) or entry
                    if entry is None and change.must_exist:
                        return Applied("missing", 0)
                    version = 0 if entry is None else entry.version
                    if expected is not None and expected != version:
                        if fresh:
                            return Applied("conflict", version)
                        self._cache.drop(key)
                        continue
                    stored = {} if entry is None else entry.decoded(names)
                    content: Any = UNCHANGED
                    if want_content:
                        content = None if entry is None else entry.content
                    if fresh:
                        mutation = change.resolve(stored, content, lazy_appends=True)
                    else:
                        try:
                            mutation = change.resolve(stored, content, lazy_appends=True)
                        except Exception:  # maybe only because the cache is stale
                            self._cache.drop(key)
                            continue
                    if mutation is None:
                        if not fresh:
                            self._cache.drop(key)
                            continue
                        if touch and entry is not None:
                            await pool.execute(
                                f"UPDATE fs_records SET accessed_at = {_NOW} WHERE key = $1", key
                            )
                        return Applied("noop", version)
                    enc = _Encoded.of(mutation)
                    job = _Job(key, entry, mutation, enc, report=expected is not None)
                    outcome = await self._commit(job)
                    if outcome is not None and outcome.written:
                        base = entry or _Entry(0, 0, {}, None, None, True)
                        after = base.after(mutation, enc, outcome.version, outcome.gen, job.sent)
                        self._cache.put(key, after)
                        return Applied("committed", outcome.version, mutation)
                    if outcome is None:
                        self._cache.drop(key)
                    else:  # the version as the failed write found it: a conflict, or go again
                        moved = _Entry(outcome.version, outcome.gen, {}, frozenset(), None, False)
                        self._cache.put(key, dataclasses.replace(moved, seen=job.sent))
                async with pool.acquire() as conn:
                    return await self._apply_locked(conn, key, change, touch)
            except BaseException:
                self._cache.drop(key)
                raise

    async def _apply_locked(
        self, conn: Connection, key: str, change: Change, touch: bool
    ) -> Applied:
        """The pessimistic path: lock the record row for the whole read-resolve-write."""
        names = _needed(change)
        want_content = change.content is not UNCHANGED
        for attempt in range(100):
            try:
                async with conn.transaction():
                    row = await conn.fetchrow(
                        "SELECT version, gen, content FROM fs_records WHERE key = $1 FOR UPDATE",
                        key,
                    )
                    if row is None and change.must_exist:
                        return Applied("missing", 0)
                    version = 0 if row is None else row[0]
                    if change.expected_version is not None and change.expected_version != version:
                        return Applied("conflict", version)
                    entry: _Entry | None = None
                    if row is not None:  # a new statement, so it sees the latest fields
                        if names is None:
                            rows = await conn.fetch(_FIELDS_SQL, key)
                        else:
                            rows = await conn.fetch(
                                _FIELDS_SQL + " AND name = ANY($2::text[])", key, list(names)
                            )
                        known = None if names is None else frozenset(names)
                        entry = _Entry(row[0], row[1], dict(rows), known, row[2], True)
                    content: Any = UNCHANGED
                    if want_content:
                        content = None if entry is None else entry.content
                    stored = {} if entry is None else entry.decoded(names)
                    mutation = change.resolve(stored, content, lazy_appends=True)
                    if mutation is None:
                        if touch and row is not None:
                            await conn.execute(
                                f"UPDATE fs_records SET accessed_at = {_NOW} WHERE key = $1", key
                            )
                        return Applied("noop", version)
                    enc = _Encoded.of(mutation)
                    job = _Job(key, entry, mutation, enc, sent=self._tick())
                    written = (await _write_batch(conn, [job])).get(key)
                    if written is None or not written.written:
                        raise _Retry  # created meanwhile (we saw no row to lock): again
            except _RETRYABLE:
                await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))
                continue
            base = entry or _Entry(0, 0, {}, None, None, True)
            after = base.after(mutation, enc, written.version, written.gen, job.sent)
            self._cache.put(key, after)
            return Applied("committed", written.version, mutation)
        raise RuntimeError(f"flowstate: could not write {key!r}: the record keeps being recreated")

    async def create(
        self,
        key: str,
        fields: Mapping[str, Any],
        content: str | None = None,
        *,
        replace: bool = False,
        cap: Cap | None = None,
    ) -> Created:
        encoded = {name: _dumps(value, name) for name, value in fields.items()}
        names, values = list(encoded), list(encoded.values())
        schema = self._config.schema or ""
        gen = 0

        async def txn(conn: Connection) -> Created:
            nonlocal gen
            if cap is not None:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    f"flowstate:cap:{len(schema)}:{schema}:{cap.prefix}",
                )
            row = await conn.fetchrow(
                "SELECT version, gen, content, created_at, accessed_at FROM fs_records "
                "WHERE key = $1 FOR UPDATE",
                key,
            )
            if row is not None:
                if not replace:
                    return Created("exists", row[0])
                old = await conn.fetch(_FIELDS_SQL, key)
                previous = Record(
                    key, row[0], {n: json.loads(v) for n, v in old}, row[2], row[3], row[4]
                )
                new = await conn.fetchrow(
                    "WITH r AS (UPDATE fs_records SET version = version + 1, content = $4, "
                    f"accessed_at = {_NOW} WHERE key = $1 RETURNING version, gen), "
                    "d AS (DELETE FROM fs_fields f USING r "
                    "WHERE f.key = $1 AND NOT (f.name = ANY($2::text[]))), "
                    "s AS (INSERT INTO fs_fields (key, name, value) SELECT $1, u.name, u.value "
                    "FROM r, unnest($2::text[], $3::json[]) AS u(name, value) "
                    "ON CONFLICT (key, name) DO UPDATE SET value = EXCLUDED.value) "
                    "SELECT version, gen FROM r",
                    key,
                    names,
                    values,
                    content,
                )
                gen = new[1]
                return Created("replaced", new[0], previous=previous)
            evicted: list[str] = []
            if cap is not None:
                lo, hi = cap.prefix, prefix_end(cap.prefix)
                count = await conn.fetchval(
                    "SELECT count(*) FROM fs_records WHERE key >= $1 AND key < $2", lo, hi
                )
                excess = count - cap.max_instances + 1
                if excess > 0:
                    if cap.eviction == "none":
                        return Created("full", 0)
                    order = "accessed_at" if cap.eviction == "lru" else "created_at"
                    victims = await conn.fetch(
                        # pick by age, lock in key order (as batch writes do): no deadlocks
                        f"WITH v AS (SELECT key FROM fs_records WHERE key >= $1 AND key < $2 "
                        f"ORDER BY {order}, key LIMIT $3), "
                        "l AS (SELECT f.key FROM fs_records f WHERE f.key IN (SELECT key FROM v) "
                        "ORDER BY f.key FOR UPDATE) "
                        "DELETE FROM fs_records r USING l WHERE r.key = l.key RETURNING r.key",
                        lo,
                        hi,
                        excess,
                    )
                    evicted = sorted(r[0] for r in victims)
                    await conn.execute("DELETE FROM fs_fields WHERE key = ANY($1::text[])", evicted)
            job = _Job(key, None, Mutation(set=fields, content=content), _Encoded(encoded, {}))
            new = (await _write_batch(conn, [job])).get(key)
            if new is None or not new.written:
                raise _Retry  # created meanwhile without the cap lock: look again
            gen = new.gen
            return Created("created", 1, tuple(evicted))

        try:
            created = await self._transact(txn)
        except BaseException:
            self._cache.drop(key)
            raise
        for victim in created.evicted:
            self._cache.drop(victim)
        if created.status in ("created", "replaced"):
            self._cache.put(key, _Entry(created.version, gen, encoded, None, content, True))
        return created

    async def delete(self, key: str) -> Record | None:
        pool = await self._get_pool()
        self._cache.drop(key)
        try:
            row = await pool.fetchrow("SELECT * FROM fs_delete($1)", key)
        finally:
            self._cache.drop(key)
        if row is None:
            return None
        version, content, created_at, accessed_at, fnames, fvalues = row
        fields = {n: json.loads(v) for n, v in zip(fnames or (), fvalues or (), strict=True)}
        return Record(key, version, fields, content, created_at, accessed_at)

    async def delete_prefix(self, prefix: str) -> int:
        pool = await self._get_pool()
        try:
            n = await pool.fetchval("SELECT fs_delete_prefix($1, $2)", prefix, prefix_end(prefix))
        finally:
            self._cache.drop_prefix(prefix)
        return int(n)

    async def touch(self, key: str) -> None:
        pool = await self._get_pool()
        await pool.execute(f"UPDATE fs_records SET accessed_at = {_NOW} WHERE key = $1", key)

    async def scan(
        self, prefix: str, *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        pool = await self._get_pool()
        lo = after if after is not None and after >= prefix else None
        sql = "SELECT key FROM fs_records WHERE key < $1 AND " + (
            "key > $2" if lo is not None else "key >= $2"
        )
        args: list[Any] = [prefix_end(prefix), lo if lo is not None else prefix]
        sql += " ORDER BY key"
        if limit is not None:
            sql += " LIMIT $3"
            args.append(max(limit, 0))
        return [r[0] for r in await pool.fetch(sql, *args)]

    async def count(self, prefix: str) -> int:
        pool = await self._get_pool()
        n = await pool.fetchval(
            "SELECT count(*) FROM fs_records WHERE key >= $1 AND key < $2",
            prefix,
            prefix_end(prefix),
        )
        return int(n)

    # ------------------------------------------------------------------ events

    def _event_hub(self) -> _Events:
        if self._events is None or self._events.loop is not asyncio.get_running_loop():
            self._events = _Events(self)
        return self._events

    async def publish(self, topic: str, message: Any) -> None:
        """Deliver locally now; other processes get it through NOTIFY (sent in the background)."""
        if self._closed:
            raise RuntimeError(f"store {self.url} is closed")
        self.broker.publish_local(topic, message)
        self._event_hub().send(topic, message)

    async def flush_events(self) -> None:
        """Wait until every event published so far has been handed to PostgreSQL."""
        if self._events is not None:
            await self._events.flush()

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[asyncio.Queue[Any]]:
        await self._get_pool()
        hub = self._event_hub()
        async with self.broker.listen(topic) as queue:
            await hub.add(topic)
            try:
                yield queue
            finally:
                with contextlib.suppress(Exception):
                    await hub.remove(topic)

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        if self._closed:
            return
        events, self._events = self._events, None
        if events is not None:
            await events.aclose()
        while self._flush_tasks:
            await asyncio.gather(*self._flush_tasks, return_exceptions=True)
        self._closed = True
        pool, self._pool = self._pool, None
        writer, self._writer_conn = self._writer_conn, None
        if pool is not None and writer is not None:
            with contextlib.suppress(Exception):
                await pool.release(writer)
        self._cache.clear()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (Exception, asyncio.CancelledError):
                pool.terminate()
