"""The SQL of reads and batch writes: one statement per batch, every record guarded by its
version and generation."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from typing import Any, Literal, NamedTuple

import asyncpg  # type: ignore[import-untyped]

from ...ops import UNCHANGED, Change, Mutation, push_target_error
from ..base import Guard, field_bytes, record_too_large, text_bytes
from .cache import Encoded, Entry, dumps

__all__ = [
    "FIELDS_SQL",
    "FOLD_AFTER",
    "NOW",
    "POOL_OPTIONS",
    "READ_MANY_SQL",
    "RETRYABLE",
    "Job",
    "Outcome",
    "Retry",
    "fields_to_load",
    "load_sql",
    "write_batch",
]

Connection = Any  # asyncpg ships no type information

# Server clock in nanoseconds (microsecond resolution): one clock for every process.
NOW = "((extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000)"

FOLD_AFTER = 1024
"""Pushes kept as rows of ``fs_items`` before they are folded into the stored array."""

# A field row ``x`` with its pushed items (``it.items``, comma-joined, or NULL): ``FIELD_TEXT``
# is its value as one JSON text. Items exist only while the stored value is an array.
ITEMS_OF = (
    "LEFT JOIN LATERAL (SELECT string_agg(i.items, ',' ORDER BY i.seq) AS items "
    "FROM fs_items i WHERE i.key = x.key AND i.name = x.name AND i.seq > 0) it ON true"
)
FIELD_TEXT = (
    "CASE WHEN it.items IS NULL THEN x.value::text ELSE fs_joined(x.value::text, it.items) END"
)


@functools.cache
def load_sql(which: Literal["all", "some", "none"], content: bool) -> str:
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
        f"SELECT array_agg(x.name) AS names, array_agg({FIELD_TEXT}) AS vals "
        f"FROM fs_fields x {ITEMS_OF} WHERE x.key = r.key{where}) f ON true WHERE r.key = $1"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """Which parts a batch write has; one prepared statement per shape."""

    updates: bool = False
    update_content: bool = False
    inserts: bool = False
    changed: bool = False  # fields that exist: UPDATE
    added: bool = False  # fields that do not: INSERT
    deletes: bool = False
    pushes: bool = False
    report: bool = False  # also return the current version of records not written
    guards: bool = False  # some records are written only while a guard record holds
    steps: bool = False  # some record takes several versions at once (combined writes)
    clears: bool = False  # fields set or deleted that may have pushed items to remove
    fold_after: int = FOLD_AFTER


@functools.cache
def batch_sql(shape: Shape) -> str:
    """One statement writing a batch of records (distinct keys), each guarded by its version
    and generation; returns ``(key, version, gen)`` for every record it wrote.

    Records are locked in key order (an index scan of ``key = ANY(...)``, inserts sorted), so
    batches from several processes cannot deadlock each other. Field rows are touched only for
    records this statement wrote, whose row locks it holds. Parameters, in order, for the parts
    present: update keys, versions, gens, [content flags, contents]; insert keys, contents;
    changed keys, names, values; added keys, names, values; delete keys, names; push keys,
    names, whole lists, items; cleared keys, names. With guards, first: guarded keys, guard
    keys, fields, values (JSON text); a guarded record whose guard fails is not written and
    comes back with ``written`` NULL.

    A push onto a stored array inserts one ``fs_items`` row (the next ``seq``) without reading
    or rewriting the array; every ``fold_after``-th push folds the rows into the array instead
    (and leaves a marker row, ``seq`` 0). A push onto an absent or null field stores the whole
    list; onto another value, ``fs_not_a_list`` raises. The record's version guard makes the
    statement's snapshot the record's latest state: another writer's commit moves the
    version, and then nothing here is written.
    """
    n = 0

    def p(kind: str) -> str:
        nonlocal n
        n += 1
        return f"${n}::{kind}"

    parts: list[str] = []
    results: list[str] = []
    touched: list[str] = []
    unguarded = ""
    limit = p("int8")  # max_record_bytes: fs_sized raises FS002 past it
    if shape.guards:
        keys, gkeys, gfields, gvalues = p("text[]"), p("text[]"), p("text[]"), p("text[]")
        parts.append(
            f"gd AS (SELECT * FROM unnest({keys}, {gkeys}, {gfields}, {gvalues}) "
            "AS g(k, gk, gf, gv))"
        )
        # Share-lock the guard records and their guard fields: deleting one waits for this
        # write to commit (and then sees what it wrote), and a write that comes after the
        # delete finds no row. Both rows are locked: a write that waited for a tombstone
        # (the guard field rewritten) re-reads both and fails; a field row joined to a
        # locked record row only would be the one of the statement's snapshot, and pass.
        parts.append(
            "gl AS (SELECT gd.k FROM gd JOIN fs_records x ON x.key = gd.gk JOIN fs_fields y "
            "ON y.key = x.key AND y.name = gd.gf WHERE y.value::jsonb = gd.gv::jsonb "
            "ORDER BY x.key FOR SHARE OF x, y)"
        )
        parts.append("gbad AS (SELECT gd.k FROM gd WHERE gd.k NOT IN (SELECT k FROM gl))")
        unguarded = " AND {0} NOT IN (SELECT k FROM gbad)"
    grown = "0"
    if shape.updates and shape.pushes:
        # What pushes add to each updated record's size, from the fields as they are (this
        # statement's snapshot, which the version guard below makes the latest): onto an
        # absent field the whole list and the name, onto null the whole list for the null,
        # onto an array the items and a comma, but none onto an empty one. A field with
        # pushed rows (or a fold's marker) is a non-empty array: its value is not read.
        # Parameters: keys, names, byte sizes of the whole list and of the joined items.
        keys, names, wholes, items = p("text[]"), p("text[]"), p("int8[]"), p("int8[]")
        parts.append(
            "ag AS (SELECT v.key, sum(CASE WHEN s.pushed THEN v.items + 1 "
            "WHEN x.kind IS NULL THEN octet_length(v.name) + v.whole "
            "WHEN x.kind = 'null' THEN v.whole - 4 WHEN x.kind <> 'array' THEN 0 "
            "WHEN x.empty THEN v.items ELSE v.items + 1 END)::int8 AS grown "
            f"FROM unnest({keys}, {names}, {wholes}, {items}) AS v(key, name, whole, items) "
            "CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM fs_items i "
            "WHERE i.key = v.key AND i.name = v.name) AS pushed) s "
            "LEFT JOIN LATERAL (SELECT json_typeof(y.value) AS kind, "
            "y.value::text = '[]' AS empty FROM fs_fields y "
            "WHERE NOT s.pushed AND y.key = v.key AND y.name = v.name) x ON true "
            "GROUP BY v.key)"
        )
        grown = "coalesce((SELECT ag.grown FROM ag WHERE ag.key = f.key), 0)"
    if shape.updates:
        keys, versions, gens = p("text[]"), p("int8[]"), p("int8[]")
        touched.append(keys)
        at = f"array_position({keys}, f.key)"
        bump = f"({p('int8[]')})[{at}]" if shape.steps else "1"
        deltas = p("int8[]")  # what sets, deletes and content add to the size
        content = ""
        if shape.update_content:
            flags, texts = p("bool[]"), p("text[]")
            content = (
                f", content = CASE WHEN ({flags})[{at}] THEN ({texts})[{at}] ELSE f.content END"
            )
        parts.append(
            f"ru AS (UPDATE fs_records f SET version = f.version + {bump}, accessed_at = {NOW}, "
            f"size = fs_sized(f.key, f.size + ({deltas})[{at}] + {grown}, {limit}){content} "
            f"WHERE f.key = ANY({keys}) AND f.version = ({versions})[{at}] "
            f"AND f.gen = ({gens})[{at}]{unguarded.format('f.key')} "
            "RETURNING f.key, f.version, f.gen)"
        )
        results.append("SELECT key, version, gen FROM ru")
    if shape.inserts:
        keys, texts = p("text[]"), p("text[]")
        touched.append(keys)
        first = f", {p('int8[]')}" if shape.steps else ""
        sizes = p("int8[]")
        parts.append(
            "ri AS (INSERT INTO fs_records (key, version, content, created_at, accessed_at, size) "
            f"SELECT u.key, {'u.s' if shape.steps else '1'}, u.c, t.now, t.now, "
            f"fs_sized(u.key, u.z, {limit}) FROM unnest({keys}, {texts}{first}, {sizes}) "
            f"AS u(key, c{', s' if shape.steps else ''}, z), "
            f"(SELECT {NOW} AS now) t WHERE true{unguarded.format('u.key')} ORDER BY u.key "
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
    if shape.pushes:
        keys, names, wholes, items = p("text[]"), p("text[]"), p("text[]"), p("text[]")
        fold = shape.fold_after
        blank = "(' ', E'\\t', E'\\n', E'\\r')"
        # ``last``: the field's highest item row (a row exists only while the field is an
        # array, so then its value is not read at all); otherwise the value's first character
        # tells an array from null and other values (json has no slice access: reading it
        # reads the whole value, once after each set of the field).
        parts.append(
            "ak AS MATERIALIZED (SELECT v.key, v.name, v.whole, v.items, x.value, "
            "coalesce(s.last, 0) + 1 AS seq, CASE WHEN s.last IS NOT NULL THEN 'array' "
            "WHEN x.head IS NULL OR x.head = 'n' THEN 'whole' WHEN x.head = '[' THEN 'array' "
            f"WHEN x.head IN {blank} THEN CASE json_typeof(x.value) WHEN 'array' THEN 'array' "
            "WHEN 'null' THEN 'whole' ELSE 'other' END ELSE 'other' END AS kind "
            f"FROM unnest({keys}, {names}, {wholes}, {items}) AS v(key, name, whole, items) "
            "JOIN r ON r.key = v.key CROSS JOIN LATERAL (SELECT max(i.seq) AS last "
            "FROM fs_items i WHERE i.key = v.key AND i.name = v.name) s "
            "LEFT JOIN LATERAL (SELECT y.value, substr(y.value::text, 1, 1) AS head "
            "FROM fs_fields y WHERE s.last IS NULL AND y.key = v.key AND y.name = v.name) x "
            "ON true)"
        )
        parts.append(
            "aw AS (INSERT INTO fs_fields (key, name, value) SELECT ak.key, ak.name, "
            "ak.whole::json FROM ak WHERE ak.kind = 'whole' "
            "ON CONFLICT (key, name) DO UPDATE SET value = EXCLUDED.value)"
        )
        # A push: one row; every fold_after-th, the rows join the array instead, and a marker
        # row (seq 0, no items) stays to say that the field is an array.
        parts.append(
            "ai AS (INSERT INTO fs_items (key, name, seq, items) "
            "SELECT ak.key, ak.name, ak.seq, ak.items FROM ak WHERE CASE ak.kind "
            f"WHEN 'array' THEN ak.seq % {fold} <> 0 "
            "WHEN 'other' THEN fs_not_a_list(ak.name, ak.value) ELSE false END)"
        )
        parts.append(
            "am AS (INSERT INTO fs_items (key, name, seq, items) SELECT ak.key, ak.name, 0, '' "
            f"FROM ak WHERE ak.kind = 'array' AND ak.seq % {fold} = 0 "
            "ON CONFLICT (key, name, seq) DO NOTHING)"
        )
        parts.append(
            "af AS (UPDATE fs_fields f SET value = fs_joined(f.value::text, concat_ws(',', "
            "(SELECT string_agg(i.items, ',' ORDER BY i.seq) FROM fs_items i "
            "WHERE i.key = ak.key AND i.name = ak.name AND i.seq > 0), ak.items))::json FROM ak "
            "WHERE f.key = ak.key AND f.name = ak.name AND ak.kind = 'array' "
            f"AND ak.seq % {fold} = 0)"
        )
        parts.append(
            "ax AS (DELETE FROM fs_items i USING ak WHERE i.key = ak.key AND i.name = ak.name "
            f"AND (ak.kind = 'whole' OR (ak.kind = 'array' AND ak.seq % {fold} = 0 "
            "AND i.seq > 0)))"
        )
    if shape.clears:
        keys, names = p("text[]"), p("text[]")
        parts.append(
            f"xc AS (DELETE FROM fs_items i USING unnest({keys}, {names}) AS v(key, name), r "
            "WHERE i.key = v.key AND i.name = v.name AND r.key = v.key)"
        )
    main = "SELECT key, version, gen, true FROM r"
    if shape.report:
        # Where the version check failed: the record as it is now (fs_current reads with a
        # fresh snapshot, taken after any wait above), so a compare-and-swap can report its
        # conflict without another round trip.
        wanted = " || ".join(touched)
        parts.append(
            f"cur AS (SELECT * FROM fs_current(ARRAY(SELECT k FROM unnest({wanted}) AS k "
            f"WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.key = k){unguarded.format('k')})) "
            f"WHERE (SELECT count(*) FROM r) < cardinality({wanted}))"  # only if one failed
        )
        main += " UNION ALL SELECT o_key, o_version, o_gen, false FROM cur"
    if shape.guards:
        main += " UNION ALL SELECT k, 0, 0, NULL FROM gbad"
    return "WITH " + ", ".join(parts) + " " + main


@dataclasses.dataclass(eq=False, slots=True)
class Job:
    """One record write waiting to be committed, possibly together with others."""

    key: str
    entry: Entry | None  # what it was resolved against (None: the record did not exist)
    mutation: Mutation
    enc: Encoded
    report: bool = False  # a compare-and-swap: wants the current version if not written
    guard: Guard | None = None  # written only while this holds
    future: asyncio.Future[Outcome | None] | None = None
    sent: int = 0  # the store's clock when its statement was sent
    steps: int = 1  # versions this write adds (several callers' writes combined)


def _may_have_items(entry: Entry, name: str) -> bool:
    """Whether field ``name`` may have pushed items in ``fs_items`` (at ``entry``'s version):
    only a stored array has them, so a field known absent or known to be another value (a
    counter, a string) needs no clearing when it is set or deleted."""
    text = entry.fields.get(name)
    if text is None:
        return name in entry.forgotten or (entry.known is not None and name not in entry.known)
    return text.lstrip(" \t\r\n")[:1] == "["


def _size_change(job: Job) -> int:
    """What ``job`` adds to its record's size, but for its pushes onto stored fields (which
    the statement counts); all of it for a new record.

    The entry it was resolved against holds every field it sets or deletes (they were loaded
    for it), and the content if it changes it.
    """
    entry, enc, mutation = job.entry, job.enc, job.mutation
    fields = {} if entry is None else entry.fields
    delta = 0
    for name, text in enc.sets.items():
        old = fields.get(name)
        delta += field_bytes(name, text_bytes(text))
        delta -= field_bytes(name, None if old is None else text_bytes(old))
    for name in mutation.delete:
        old = fields.get(name)
        delta -= field_bytes(name, None if old is None else text_bytes(old))
    if entry is None:
        delta += sum(
            field_bytes(name, text_bytes(whole)) for name, (whole, _) in enc.pushes.items()
        )
    if mutation.content is not UNCHANGED:
        new = mutation.content if isinstance(mutation.content, str) else None
        delta += text_bytes(new) - text_bytes(None if entry is None else entry.content)
    return delta


def batch_args(
    jobs: list[Job], fold_after: int = FOLD_AFTER, *, limit: int
) -> tuple[Shape, list[Any]]:
    """The statement shape and parameters that write ``jobs`` (distinct keys), none of whose
    records may grow past ``limit`` bytes."""
    upd: list[Job] = []
    ins: list[Job] = []
    changed: tuple[list[str], list[str], list[str]] = ([], [], [])
    added: tuple[list[str], list[str], list[str]] = ([], [], [])
    deletes: tuple[list[str], list[str]] = ([], [])
    pushes: tuple[list[str], list[str], list[str], list[str]] = ([], [], [], [])
    clears: tuple[list[str], list[str]] = ([], [])
    for job in sorted(jobs, key=lambda j: j.key):
        entry, enc, key = job.entry, job.enc, job.key
        if entry is None:
            ins.append(job)
            sets = {**enc.sets, **{name: whole for name, (whole, _) in enc.pushes.items()}}
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
        for name in (*enc.sets, *job.mutation.delete):
            if _may_have_items(entry, name):
                clears[0].append(key)
                clears[1].append(name)
        for name, (whole, items) in enc.pushes.items():
            for column, value in zip(pushes, (key, name, whole, items), strict=True):
                column.append(value)
    update_content = any(j.mutation.content is not UNCHANGED for j in upd)
    shape = Shape(
        updates=bool(upd),
        update_content=update_content,
        inserts=bool(ins),
        changed=bool(changed[0]),
        added=bool(added[0]),
        deletes=bool(deletes[0]),
        pushes=bool(pushes[0]),
        report=any(j.report for j in jobs),
        guards=any(j.guard is not None for j in jobs),
        steps=any(j.steps != 1 for j in jobs),
        clears=bool(clears[0]),
        fold_after=fold_after,
    )
    args: list[Any] = [limit]
    if shape.guards:
        guarded = [(j.key, j.guard) for j in jobs if j.guard is not None]
        args.append([k for k, _ in guarded])
        args.append([g.key for _, g in guarded])
        args.append([g.name for _, g in guarded])
        args.append([dumps(g.value, g.name) for _, g in guarded])
    if upd and shape.pushes:
        grows = [(j.key, n, a) for j in upd for n, a in j.enc.pushes.items()]
        args.append([key for key, _, _ in grows])
        args.append([name for _, name, _ in grows])
        args.append([text_bytes(whole) for _, _, (whole, _) in grows])
        args.append([text_bytes(items) for _, _, (_, items) in grows])
    if upd:
        args += [[j.key for j in upd], [j.entry.version for j in upd if j.entry]]
        args.append([j.entry.gen for j in upd if j.entry])
        if shape.steps:
            args.append([j.steps for j in upd])
        args.append([_size_change(j) for j in upd])
        if update_content:
            args.append([j.mutation.content is not UNCHANGED for j in upd])
            args.append(
                [None if j.mutation.content is UNCHANGED else j.mutation.content for j in upd]
            )
    if ins:
        args.append([j.key for j in ins])
        args.append([None if j.mutation.content is UNCHANGED else j.mutation.content for j in ins])
        if shape.steps:
            args.append([j.steps for j in ins])
        args.append([_size_change(j) for j in ins])
    for part in (changed, added, deletes, pushes, clears):
        if part[0]:
            args += part
    return shape, args


class Outcome(NamedTuple):
    """A job's write: done (``version``, ``gen`` are the new ones) or not (the current ones);
    ``written`` None: not written because its guard failed."""

    written: bool | None
    version: int
    gen: int


GUARD_SQL = (
    "SELECT 1 FROM fs_records r JOIN fs_fields f ON f.key = r.key AND f.name = $2 "
    "WHERE r.key = $1 AND f.value::jsonb = $3::jsonb FOR SHARE OF r, f"
)
"""A guard check inside a transaction (share-locks the guard record and field until commit:
a check that waited for a tombstone re-reads both, so it fails; see ``batch_sql``)."""


async def check_guard(conn: Connection, guard: Guard | None) -> None:
    """Raise ``guard.gone()`` unless the guard holds (call inside the write's transaction)."""
    if guard is None:
        return
    if await conn.fetchval(GUARD_SQL, guard.key, guard.name, dumps(guard.value, guard.name)):
        return
    raise guard.gone()


async def write_batch(
    conn: Connection, jobs: list[Job], fold_after: int = FOLD_AFTER, *, limit: int
) -> dict[str, Outcome]:
    """Write ``jobs`` in one statement; ``key → outcome`` (absent: not written, unknown).

    A record that would grow past ``limit`` bytes fails the statement (nothing is written)
    with :func:`record_too_large`."""
    shape, args = batch_args(jobs, fold_after, limit=limit)
    try:
        rows = await conn.fetch(batch_sql(shape), *args)
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == "FS001":  # raised by fs_not_a_list
            raise push_target_error(exc.message, exc.detail) from None
        if getattr(exc, "sqlstate", None) == "FS002":  # raised by fs_sized
            raise record_too_large(exc.message, limit) from None
        raise
    return {row[0]: Outcome(row[3], row[1], row[2]) for row in rows}


FIELDS_SQL = f"SELECT x.name, {FIELD_TEXT} FROM fs_fields x {ITEMS_OF} WHERE x.key = $1"
"""A record's fields with their pushed items (append ``AND x.name = ANY($2::text[])``)."""

# Several records with the fields asked for, in one statement: $1 keys, $2 "all fields" flags,
# $3/$4 the (key, name) pairs wanted of the other keys.
READ_MANY_SQL = (
    "SELECT r.key, r.version, r.gen, r.content, r.created_at, r.accessed_at, f.names, f.vals "
    "FROM unnest($1::text[], $2::bool[]) AS w(key, every) JOIN fs_records r ON r.key = w.key "
    f"LEFT JOIN LATERAL (SELECT array_agg(x.name) AS names, array_agg({FIELD_TEXT}) AS vals "
    f"FROM fs_fields x {ITEMS_OF} WHERE x.key = r.key AND (w.every OR x.name = ANY(ARRAY("
    "SELECT p.n FROM unnest($3::text[], $4::text[]) AS p(k, n) WHERE p.k = w.key)))) f ON true"
)


def fields_to_load(change: Change) -> frozenset[str] | None:
    """Fields to load for ``change``: lists that are only appended to are appended in SQL."""
    names = change.needed_fields
    return None if names is None else names - change.lazy_pushes


async def _keep_session(conn: Connection) -> None:
    """Pool release without asyncpg's reset query (a round trip per operation).

    The store leaves no session state behind: the search path is a startup setting, advisory
    locks are transaction-scoped, and it never LISTENs, opens cursors or SETs on pool
    connections. An open transaction is still rolled back by asyncpg itself.
    """


POOL_OPTIONS: dict[str, Any] = (
    {"reset": _keep_session} if "reset" in inspect.signature(asyncpg.create_pool).parameters else {}
)


class Retry(Exception):
    """Roll back and run the transaction again (a concurrent insert won a race)."""


RETRYABLE = (
    Retry,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,
)
