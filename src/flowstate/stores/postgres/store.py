"""The PostgreSQL store: connections, reads, optimistic and locked writes, caps, events."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg  # type: ignore[import-untyped]

from ...errors import StateValidationError, StoreUnavailableError
from ...limits import MAX_RECORD_BYTES
from ...ops import UNCHANGED, Change, Mutation, compose, push_target_error
from ..base import (
    Applied,
    Created,
    Creation,
    Guard,
    Record,
    Store,
    field_bytes,
    plan_commit,
    prefix_end,
    text_bytes,
)
from .cache import BLANK, Cache, Encoded, Entry, dumps
from .events import Events
from .migrations import check_version, migrate_conn, parse_url, quote_ident
from .sql import (
    FIELD_TEXT,
    FIELDS_SQL,
    FOLD_AFTER,
    ITEMS_OF,
    NOW,
    POOL_OPTIONS,
    READ_MANY_SQL,
    RETRYABLE,
    Job,
    Outcome,
    Retry,
    check_guard,
    load_sql,
    write_batch,
)

__all__ = ["PostgresStore"]

log = logging.getLogger("flowstate.stores.postgres")

T = TypeVar("T")
P = ParamSpec("P")
Connection = Any  # asyncpg ships no type information
Pool = Any

# What a lost or refused connection raises: the network (OSError, including timeouts), the
# driver (a closed or detached connection), the server going away (class 08, and 57P0x:
# terminated by an administrator, shutting down, starting up) or refusing more connections.
LOST = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InternalClientError,  # a connection left mid-protocol by a loss
)


# Which records a bulk delete selects: a USING clause and a condition on table alias {0}.
_BY_KEYS = ("", "{0}.key = ANY($1::text[])")
_IN_RANGES = (
    "USING unnest($1::text[], $2::text[]) AS p(lo, hi)",
    '{0}.key >= p.lo COLLATE "C" AND {0}.key < p.hi COLLATE "C"',
)

Method = Callable[Concatenate["PostgresStore", P], Coroutine[Any, Any, T]]


def _alive(conn: Connection) -> bool:
    """Whether a kept pool connection can still be used (a lost one is detached by the pool)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


def _reachable(*, retry: bool = False) -> Callable[[Method[P, T]], Method[P, T]]:
    """Turn a lost connection into :class:`StoreUnavailableError` (``retry``: once more first,
    for reads, which the pool serves on a fresh connection)."""

    def wrap(fn: Method[P, T]) -> Method[P, T]:
        @functools.wraps(fn)
        async def call(self: PostgresStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await fn(self, *args, **kwargs)
            except LOST as exc:
                if not retry or self._closed:
                    raise self._unavailable(exc) from exc
            try:
                return await fn(self, *args, **kwargs)
            except LOST as exc:
                raise self._unavailable(exc) from exc

        return call

    return wrap


@dataclasses.dataclass(slots=True)
class _Request:
    """A write waiting for its key's next combined commit."""

    change: Change
    start: int
    future: asyncio.Future[Applied]
    guard: Guard | None = None


def _resolve_group(
    group: list[_Request], entry: Entry | None
) -> tuple[list[Applied | BaseException | tuple[Mutation, int]], list[Mutation]]:
    """Each request's outcome against the record as left by the ones before it.

    A commit is ``(mutation, n)``: the n-th committed write of the group (1-based).
    """
    results: list[Applied | BaseException | tuple[Mutation, int]] = []
    mutations: list[Mutation] = []
    state = entry
    version = 0 if entry is None else entry.version
    for request in group:
        change = request.change
        try:
            planned = plan_commit(
                change, None if state is None else version, (state or BLANK).loaded
            )
            if not isinstance(planned, Applied) and state is not None:
                for name in planned.push:  # a known stored non-list: this caller's error
                    text = state.fields.get(name)
                    if text is not None and not text.lstrip().startswith(("[", "null")):
                        value = json.loads(text)
                        found = {float: "float", int: "int", str: "str", dict: "dict"}
                        raise push_target_error(name, found.get(type(value), "bool"))
        except Exception as exc:
            results.append(exc)
            continue
        if isinstance(planned, Applied):
            results.append(planned)
            continue
        mutation = planned
        version += 1
        mutations.append(mutation)
        results.append((mutation, len(mutations)))
        base = state or BLANK
        state = base.after(mutation, Encoded.of(mutation), version, base.gen, base.seen)
    return results, mutations


# Bulk maintenance statements (a batch of keys or key ranges joined to an array) touch a few
# rows per key through the primary keys, but without table statistics (just after a bulk
# load; autovacuum off) the planner takes every key, or range, for a large share of the
# table: it scans whole tables (one batch of 10^6 sessions' gc took seconds) and JIT-compiles
# each statement. Inside their transactions they are told to go by index.
_BY_INDEX = (
    "SET LOCAL jit = off; SET LOCAL enable_seqscan = off; "
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
)

# Every field row and pushed item of records this transaction holds locked (has just deleted
# or rewritten: nobody can create or write those keys before it commits).
_ROWS_OF = [
    f"DELETE FROM {table} f USING unnest($1::text[]) AS d(key) WHERE f.key = d.key"
    for table in ("fs_fields", "fs_items")
]


async def _delete_rows_of(conn: Connection, keys: list[str]) -> None:
    """Delete the field and item rows of ``keys`` (see ``_ROWS_OF``)."""
    if keys:
        for sql in _ROWS_OF:
            await conn.execute(sql, keys)


async def _replace_fields(conn: Connection, records: Iterable[Record]) -> None:
    """Make the stored fields of ``records`` exactly theirs, and the records' sizes match
    (inside the caller's transaction, which holds or has just written their record rows, and
    has run ``_BY_INDEX``)."""
    keys: list[str] = []
    sizes: list[int] = []
    owners: list[str] = []
    names: list[str] = []
    values: list[str] = []
    for r in records:
        keys.append(r.key)
        size = text_bytes(r.content)
        for name, value in r.fields.items():
            owners.append(r.key)
            names.append(name)
            values.append(dumps(value, name))
            size += field_bytes(name, text_bytes(values[-1]))
        sizes.append(size)
    if not keys:
        return
    await _delete_rows_of(conn, keys)
    await conn.execute(
        "INSERT INTO fs_fields (key, name, value) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::json[])",
        owners,
        names,
        values,
    )
    await conn.execute(  # their sizes, as written (bulk writes are not held to the limit)
        "UPDATE fs_records r SET size = u.size FROM unnest($1::text[], $2::bigint[]) "
        "AS u(key, size) WHERE r.key = u.key",
        keys,
        sizes,
    )
    await conn.execute(  # their sizes, as written (bulk writes are not held to the limit)
        "UPDATE fs_records r SET size = u.size FROM unnest($1::text[], $2::bigint[]) "
        "AS u(key, size) WHERE r.key = u.key",
        keys,
        sizes,
    )


class PostgresStore(Store):
    """Records in PostgreSQL, shared by any number of processes (``postgresql://…``)."""

    optimistic_attempts = 3
    max_batch = 64
    max_group = 256
    fold_after = FOLD_AFTER
    """Pushes kept as ``fs_items`` rows before they are folded into the stored array."""

    def __init__(
        self,
        url: str,
        *,
        migrate: bool | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        super().__init__(max_record_bytes=max_record_bytes)
        self._config = parse_url(url)
        if migrate is not None:
            self._config = dataclasses.replace(self._config, migrate=migrate)
        self.url = url
        self._pool: Pool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._connecting: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._cache = Cache(self._config.cache_size)
        self._groups: dict[str, collections.deque[_Request]] = {}
        self._events: Events | None = None
        self._closed = False
        self._pending: list[Job] = []
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
                self._groups = {}
                self._writer_conn = None
            config = self._config
            conn = await asyncpg.connect(
                config.dsn,
                timeout=config.connect_timeout,
                server_settings={"application_name": config.application_name},
            )
            try:
                if config.migrate:
                    await migrate_conn(conn, config.schema)
                else:
                    if config.schema is not None:
                        await conn.execute(
                            "SELECT set_config('search_path', $1, false)",
                            quote_ident(config.schema),
                        )
                    await check_version(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                config.dsn,
                min_size=min(config.min_size, config.max_size),
                max_size=config.max_size,
                server_settings=config.server_settings,
                timeout=config.connect_timeout,
                command_timeout=config.command_timeout,
                **POOL_OPTIONS,
            )
            self._pool_loop = loop
            return self._pool

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        """The error a caller gets while the database cannot be reached (logged with detail)."""
        writer = self._writer_conn
        if writer is not None and not _alive(writer):
            self._writer_conn = None
        log.warning("flowstate: PostgreSQL store unavailable: %r", exc)
        return StoreUnavailableError(
            "the store is unavailable (the PostgreSQL connection was lost or refused); "
            "nothing is known to have been written; retry shortly"
        )

    async def _connect_listener(self) -> Connection:
        """A connection of its own for LISTEN (kept outside the pool)."""
        config = self._config
        return await asyncpg.connect(
            config.dsn,
            timeout=config.connect_timeout,
            server_settings=config.server_settings,
        )

    async def _transact(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``fn`` in a transaction, again on deadlocks and lost insert races."""
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            for attempt in range(100):
                try:
                    async with conn.transaction():
                        return await fn(conn)
                except RETRYABLE:
                    await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
        raise RuntimeError("flowstate: a PostgreSQL transaction kept failing; giving up")

    # ------------------------------------------------------------------ reading

    def _tick(self) -> int:
        """The store's clock: orders what this process sent and saw (see ``Entry.seen``)."""
        self._clock += 1
        return self._clock

    async def _load(
        self, conn: Connection, key: str, names: frozenset[str] | None, content: bool
    ) -> tuple[Entry, Record] | None:
        seen = self._tick()
        if names is None:
            row = await conn.fetchrow(load_sql("all", content), key)
        elif not names:
            row = await conn.fetchrow(load_sql("none", content), key)
        else:
            row = await conn.fetchrow(load_sql("some", content), key, list(names))
        if row is None:
            return None
        version, gen, text, created_at, accessed_at, fnames, fvalues = row
        fields = dict(zip(fnames, fvalues, strict=True)) if fnames else {}
        known = None if names is None else frozenset(names)
        entry = Entry(version, gen, fields, known, text, content, seen)
        record = Record(
            key,
            version,
            {k: json.loads(v) for k, v in fields.items()},
            text,
            created_at,
            accessed_at,
        )
        return entry, record

    @_reachable(retry=True)
    async def read(self, key: str, fields: frozenset[str] | None = None) -> Record | None:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            loaded = await self._load(conn, key, fields, True)
        if loaded is None:
            return None
        self._cache.merge(key, loaded[0])
        return loaded[1]

    @_reachable(retry=True)
    async def read_many(
        self, wanted: Mapping[str, frozenset[str] | None]
    ) -> dict[str, Record | None]:
        """One statement (one snapshot) for every key; what it shows also warms the cache."""
        if not wanted:
            return {}
        keys = list(wanted)
        every = [wanted[k] is None for k in keys]
        pairs = [(k, n) for k in keys for n in (wanted[k] or ())]
        pool = await self._get_pool()
        seen = self._tick()
        rows = await pool.fetch(
            READ_MANY_SQL, keys, every, [k for k, _ in pairs], [n for _, n in pairs]
        )
        out: dict[str, Record | None] = dict.fromkeys(keys)
        for key, version, gen, text, created_at, accessed_at, fnames, fvalues in rows:
            fields = dict(zip(fnames, fvalues, strict=True)) if fnames else {}
            names = wanted[key]
            known = None if names is None else frozenset(names)
            self._cache.merge(key, Entry(version, gen, fields, known, text, True, seen))
            decoded = {k: json.loads(v) for k, v in fields.items()}
            out[key] = Record(key, version, decoded, text, created_at, accessed_at)
        return out

    # ------------------------------------------------------------------ writing

    # Writes from concurrent callers are committed together: a caller that finds the writer
    # idle writes its own record at once; while that is in flight, others queue up and one
    # or more flusher tasks write them in batches (one statement each). Every record in a
    # batch is still guarded by its own version and generation.

    async def _commit(self, job: Job) -> Outcome | None:
        """Write one resolved job, alone or in a batch."""
        if not self._pending and self._flushers == 0:
            self._flushers += 1
            written: Outcome | None = None
            try:
                pool = await self._get_pool()
                if self._config.max_size < 2:
                    async with pool.acquire() as conn:
                        written = await self._write_alone(conn, job)
                else:  # a connection kept for these writes: no pool round trip per write
                    conn = self._writer_conn
                    if conn is not None and not _alive(conn):  # lost while kept: take another
                        self._writer_conn = conn = None
                    if conn is None:
                        conn = self._writer_conn = await pool.acquire()
                    try:
                        written = await self._write_alone(conn, job)
                    except BaseException as exc:
                        statement_failed = isinstance(
                            exc, (StateValidationError, asyncpg.PostgresError)
                        ) and not isinstance(exc, LOST)
                        if not statement_failed:  # lost, cancelled or broken: not reusable
                            if self._writer_conn is conn:
                                self._writer_conn = None
                            with contextlib.suppress(BaseException):
                                conn.terminate()
                            with contextlib.suppress(BaseException):
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

    async def _write_alone(self, conn: Connection, job: Job) -> Outcome | None:
        job.sent = self._tick()
        try:
            return (
                await write_batch(conn, [job], self.fold_after, limit=self.max_record_bytes)
            ).get(job.key)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            return None  # treated like a moved record: the caller reloads and tries again

    def _spawn_flusher(self) -> None:
        self._flushers += 1
        task = asyncio.get_running_loop().create_task(self._flush_loop())
        self._flush_tasks.add(task)
        task.add_done_callback(self._flush_tasks.discard)

    def _take_batch(self) -> list[Job]:
        batch: list[Job] = []
        rest: list[Job] = []
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

    async def _flush(self, batch: list[Job]) -> None:
        def settle(job: Job, value: Outcome | BaseException | None) -> None:
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
                        written = await write_batch(
                            conn, batch, self.fold_after, limit=self.max_record_bytes
                        )
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

    # Writers of one key in this process do not race each other to the database. The first
    # writes alone; callers arriving while it is in flight queue up, and the next turn
    # resolves all of them in arrival order against one copy of the record and commits
    # them in one statement (the record's version advances by one per committed caller).
    # Each caller gets its own outcome; one caller's validation error fails only that caller.

    @_reachable()
    async def apply(self, key: str, change: Change, *, guard: Guard | None = None) -> Applied:
        await self._get_pool()
        start = self._tick()
        queue = self._groups.get(key)
        if queue is not None:  # the key is being written: join the next combined commit
            future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
            queue.append(_Request(change, start, future, guard))
            return await future
        self._groups[key] = queue = collections.deque()
        try:
            return await self._apply_alone(key, change, start, guard)
        finally:
            if queue:
                task = asyncio.get_running_loop().create_task(self._drain(key, queue))
                self._flush_tasks.add(task)
                task.add_done_callback(self._flush_tasks.discard)
            else:
                del self._groups[key]

    async def _drain(self, key: str, queue: collections.deque[_Request]) -> None:
        """Commit the queued writers of ``key``, in groups, until none is left."""
        try:
            while queue:
                group = [r for r in (queue.popleft() for _ in range(len(queue)))]
                group = [r for r in group if not r.future.done()][: self.max_group]
                if not group:
                    continue
                try:
                    if len(group) == 1:
                        one = group[0]
                        results: list[Applied | BaseException] = [
                            await self._apply_alone(key, one.change, one.start, one.guard)
                        ]
                    elif any(r.guard != group[0].guard for r in group):
                        results = await self._apply_each(key, group)
                    else:
                        results = await self._apply_group(key, group)
                except Exception as exc:
                    results = [exc] * len(group)
                for request, result in zip(group, results, strict=True):
                    if request.future.done():
                        continue
                    if isinstance(result, BaseException):
                        request.future.set_exception(result)
                    else:
                        request.future.set_result(result)
        finally:
            del self._groups[key]
            for request in queue:  # only if cancelled (the store closing): nobody is left hanging
                if not request.future.done():
                    request.future.set_exception(RuntimeError(f"store {self.url} is closed"))

    async def _copy(
        self, pool: Pool, key: str, names: frozenset[str] | None, content: bool, start: int
    ) -> tuple[Entry | None, bool]:
        """A copy of the record with ``names`` (None: every field) and, if ``content``, its
        content: the cached one if it has them, else loaded now (None: no record); and whether
        it is fresh — seen since ``start``, so it shows the database during the operation."""
        entry = self._cache.get(key)
        if entry is not None and entry.covers(names, content):
            return entry, entry.seen > start
        loaded = await self._load(pool, key, names, content)
        if loaded is None:
            return None, True
        self._cache.merge(key, loaded[0])
        return self._cache.get(key) or loaded[0], True

    async def _apply_group(self, key: str, group: list[_Request]) -> list[Applied | BaseException]:
        """Resolve ``group`` in order against one copy of the record; commit once."""
        pool = await self._get_pool()
        names: frozenset[str] | None = frozenset()
        for request in group:
            wanted = request.change.load_fields
            names = None if names is None or wanted is None else names | wanted
        want_content = any(r.change.content is not UNCHANGED for r in group)
        start = max(r.start for r in group)
        guard = group[0].guard
        try:
            for _ in range(self.optimistic_attempts):
                entry, fresh = await self._copy(pool, key, names, want_content, start)
                results, mutations = _resolve_group(group, entry)
                if not mutations:
                    if not fresh:  # decided on an old copy: look at the database first
                        self._cache.drop(key)
                        continue
                    await check_guard(pool, guard)  # a deleted session decides first
                    return [r for r in results if isinstance(r, Applied | BaseException)]
                net = compose(mutations)
                enc = Encoded.of(net)
                job = Job(
                    key,
                    entry,
                    net,
                    enc,
                    report=any(r.change.expected_version is not None for r in group),
                    guard=guard,
                    steps=len(mutations),
                )
                try:
                    outcome = await self._commit(job)
                except StateValidationError:
                    # an append onto a stored non-list this copy did not show: one by one,
                    # so that only its caller sees the error
                    return await self._apply_each(key, group)
                if self._settled(job, outcome):
                    # The write was guarded by the version resolved against: every outcome
                    # above was decided on the record as it was during each call.
                    first = job.entry.version if job.entry else 0
                    return [
                        r
                        if isinstance(r, Applied | BaseException)
                        else Applied("committed", first + r[1], r[0])
                        for r in results
                    ]
        except BaseException:
            self._cache.drop(key)
            raise
        return await self._apply_each(key, group)

    def _settled(self, job: Job, outcome: Outcome | None) -> bool:
        """Whether ``job`` was written; either way the cache learns what its commit found
        (a failed guard raises its error)."""
        if outcome is not None and outcome.written is None and job.guard is not None:
            raise job.guard.gone()
        if outcome is None:
            self._cache.drop(job.key)
            return False
        if outcome.written:
            base = job.entry or BLANK
            after = base.after(job.mutation, job.enc, outcome.version, outcome.gen, job.sent)
            self._cache.put(job.key, after)
            return True
        # the version as the failed write found it: a conflict, or go again
        moved = Entry(outcome.version, outcome.gen, {}, frozenset(), None, False, job.sent)
        self._cache.put(job.key, moved)
        return False

    async def _apply_each(self, key: str, group: list[_Request]) -> list[Applied | BaseException]:
        results: list[Applied | BaseException] = []
        for request in group:
            try:
                results.append(
                    await self._apply_alone(key, request.change, request.start, request.guard)
                )
            except Exception as exc:
                results.append(exc)
        return results

    async def _apply_alone(
        self, key: str, change: Change, start: int, guard: Guard | None
    ) -> Applied:
        pool = await self._get_pool()
        names = change.load_fields
        want_content = change.content is not UNCHANGED
        expected = change.expected_version
        try:
            for _ in range(self.optimistic_attempts):
                cached = self._cache.get(key)  # a conflict may be known without any field:
                if expected is not None and cached and cached.seen > start:
                    if expected != cached.version:
                        return Applied("conflict", cached.version)
                entry, fresh = await self._copy(pool, key, names, want_content, start)
                version = None if entry is None else entry.version
                try:
                    planned = plan_commit(change, version, (entry or BLANK).loaded)
                except Exception:
                    if fresh:
                        raise
                    self._cache.drop(key)  # maybe only because the cache is stale
                    continue
                if isinstance(planned, Applied):
                    if not fresh:  # decided on an old copy: look at the database first
                        self._cache.drop(key)
                        continue
                    if planned.status != "conflict":
                        await check_guard(pool, guard)  # a deleted session decides first
                    return planned
                mutation = planned
                enc = Encoded.of(mutation)
                job = Job(key, entry, mutation, enc, report=expected is not None, guard=guard)
                if self._settled(job, await self._commit(job)):
                    return Applied("committed", (version or 0) + 1, mutation)
            async with pool.acquire() as conn:
                return await self._apply_locked(conn, key, change, guard)
        except BaseException:
            self._cache.drop(key)
            raise

    async def _apply_locked(
        self, conn: Connection, key: str, change: Change, guard: Guard | None
    ) -> Applied:
        """The pessimistic path: lock the record row for the whole read-resolve-write."""
        names = change.load_fields
        for attempt in range(100):
            try:
                async with conn.transaction():
                    await check_guard(conn, guard)
                    row = await conn.fetchrow(
                        "SELECT version, gen, content FROM fs_records WHERE key = $1 FOR UPDATE",
                        key,
                    )
                    entry: Entry | None = None
                    if row is not None:  # a new statement, so it sees the latest fields
                        if names is None:
                            rows = await conn.fetch(FIELDS_SQL, key)
                        else:
                            rows = await conn.fetch(
                                FIELDS_SQL + " AND x.name = ANY($2::text[])", key, list(names)
                            )
                        known = None if names is None else frozenset(names)
                        entry = Entry(row[0], row[1], dict(rows), known, row[2], True)
                    version = None if entry is None else entry.version
                    planned = plan_commit(change, version, (entry or BLANK).loaded)
                    if isinstance(planned, Applied):
                        return planned
                    mutation = planned
                    enc = Encoded.of(mutation)
                    job = Job(key, entry, mutation, enc, sent=self._tick())
                    written = (
                        await write_batch(conn, [job], self.fold_after, limit=self.max_record_bytes)
                    ).get(key)
                    if written is None or not written.written:
                        raise Retry  # created meanwhile (we saw no row to lock): again
            except RETRYABLE:
                await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))
                continue
            after = (entry or BLANK).after(mutation, enc, written.version, written.gen, job.sent)
            self._cache.put(key, after)
            return Applied("committed", written.version, mutation)
        raise RuntimeError(f"flowstate: could not write {key!r}: the record keeps being recreated")

    @_reachable()
    async def _create(self, key: str, creation: Creation) -> Created:
        fields, content = creation.fields, creation.content
        cap, guard = creation.cap, creation.guard
        encoded = {name: dumps(value, name) for name, value in fields.items()}
        names, values = list(encoded), list(encoded.values())
        schema = self._config.schema or ""
        gen = 0

        async def txn(conn: Connection) -> Created:
            nonlocal gen
            await check_guard(conn, guard)
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
                if not creation.replace:
                    return Created("exists", row[0])
                old = await conn.fetch(FIELDS_SQL, key)
                previous = Record(
                    key, row[0], {n: json.loads(v) for n, v in old}, row[2], row[3], row[4]
                )
                new = await conn.fetchrow(
                    "WITH r AS (UPDATE fs_records SET version = version + 1, content = $4, "
                    f"size = $5, accessed_at = {NOW} WHERE key = $1 RETURNING version, gen), "
                    "d AS (DELETE FROM fs_fields f USING r "
                    "WHERE f.key = $1 AND NOT (f.name = ANY($2::text[]))), "
                    "s AS (INSERT INTO fs_fields (key, name, value) SELECT $1, u.name, u.value "
                    "FROM r, unnest($2::text[], $3::json[]) AS u(name, value) "
                    "ON CONFLICT (key, name) DO UPDATE SET value = EXCLUDED.value), "
                    "i AS (DELETE FROM fs_items x USING r WHERE x.key = $1) "
                    "SELECT version, gen FROM r",
                    key,
                    names,
                    values,
                    content,
                    creation.size,
                )
                gen = new[1]
                return Created("replaced", new[0], previous=previous)
            evicted: list[str] = []
            if cap is not None:
                lo, hi = cap.prefix, prefix_end(cap.prefix)
                count = await conn.fetchval(
                    "SELECT count(*) FROM fs_records WHERE key >= $1 AND key < $2", lo, hi
                )
                excess = cap.to_evict(count)
                if excess is None:
                    return Created("full", 0)
                if excess:
                    victims = await conn.fetch(
                        # pick by age, lock in key order (as batch writes do): no deadlocks
                        f"WITH v AS (SELECT key FROM fs_records WHERE key >= $1 AND key < $2 "
                        f"ORDER BY {cap.order}, key LIMIT $3), "
                        "l AS (SELECT f.key FROM fs_records f WHERE f.key IN (SELECT key FROM v) "
                        "ORDER BY f.key FOR UPDATE) "
                        "DELETE FROM fs_records r USING l WHERE r.key = l.key RETURNING r.key",
                        lo,
                        hi,
                        excess,
                    )
                    evicted = sorted(r[0] for r in victims)
                    await conn.execute("DELETE FROM fs_fields WHERE key = ANY($1::text[])", evicted)
                    await conn.execute("DELETE FROM fs_items WHERE key = ANY($1::text[])", evicted)
            job = Job(key, None, Mutation(set=fields, content=content), Encoded(encoded, {}))
            new = (
                await write_batch(conn, [job], self.fold_after, limit=self.max_record_bytes)
            ).get(key)
            if new is None or not new.written:
                raise Retry  # created meanwhile without the cap lock: look again
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
            self._cache.put(key, Entry(created.version, gen, encoded, None, content, True))
        return created

    @_reachable()
    async def delete(self, key: str, *, guard: Guard | None = None) -> Record | None:
        pool = await self._get_pool()
        self._cache.drop(key)
        try:
            if guard is None:
                row = await pool.fetchrow("SELECT * FROM fs_delete($1)", key)
            else:

                async def txn(conn: Connection) -> Any:
                    await check_guard(conn, guard)
                    return await conn.fetchrow("SELECT * FROM fs_delete($1)", key)

                row = await self._transact(txn)
        finally:
            self._cache.drop(key)
        if row is None:
            return None
        version, content, created_at, accessed_at, fnames, fvalues = row
        fields = {n: json.loads(v) for n, v in zip(fnames or (), fvalues or (), strict=True)}
        return Record(key, version, fields, content, created_at, accessed_at)

    @_reachable()
    async def delete_prefix(self, prefix: str) -> int:
        pool = await self._get_pool()
        try:
            n = await pool.fetchval("SELECT fs_delete_prefix($1, $2)", prefix, prefix_end(prefix))
        finally:
            self._cache.drop_prefix(prefix)
        return int(n)

    @_reachable()
    async def touch(self, key: str) -> None:
        pool = await self._get_pool()
        await pool.execute(f"UPDATE fs_records SET accessed_at = {NOW} WHERE key = $1", key)

    @_reachable(retry=True)
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

    @_reachable(retry=True)
    async def export_records(
        self, prefix: str = "", *, after: str | None = None, limit: int = 500
    ) -> list[Record]:
        pool = await self._get_pool()
        lo = after if after is not None and after >= prefix else None
        sql = (
            "SELECT key, version, content, created_at, accessed_at FROM fs_records "
            "WHERE key < $1 AND " + ("key > $2" if lo is not None else "key >= $2") + " "
            "ORDER BY key LIMIT $3"
        )
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            rows = await conn.fetch(
                sql, prefix_end(prefix), lo if lo is not None else prefix, max(limit, 0)
            )
            if not rows:
                return []
            fields: dict[str, dict[str, Any]] = {row[0]: {} for row in rows}
            # One snapshot for both statements; the batch is a contiguous key range.
            for key, name, value in await conn.fetch(
                f"SELECT x.key, x.name, {FIELD_TEXT} FROM fs_fields x {ITEMS_OF} "
                "WHERE x.key >= $1 AND x.key <= $2 ORDER BY x.key, x.name",
                rows[0][0],
                rows[-1][0],
            ):
                if key in fields:
                    fields[key][name] = json.loads(value)
        return [Record(r[0], r[1], fields[r[0]], r[2], r[3], r[4]) for r in rows]

    @_reachable()
    async def import_records(self, records: Sequence[Record]) -> int:
        if not records:
            return 0
        latest = {r.key: r for r in records}  # the last of one key wins, as one by one
        keys = list(latest)

        async def txn(conn: Connection) -> int:
            await conn.execute(_BY_INDEX)
            await conn.execute(
                "INSERT INTO fs_records (key, version, content, created_at, accessed_at) "
                "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], "
                "$5::bigint[]) ON CONFLICT (key) DO UPDATE SET version = excluded.version, "
                "content = excluded.content, created_at = excluded.created_at, "
                "accessed_at = excluded.accessed_at, gen = nextval('fs_record_gen')",
                keys,
                [latest[k].version for k in keys],
                [latest[k].content for k in keys],
                [latest[k].created_at for k in keys],
                [latest[k].accessed_at for k in keys],
            )
            await _replace_fields(conn, latest.values())
            return len(keys)

        try:
            return await self._transact(txn)
        finally:
            for key in keys:
                self._cache.drop(key)

    @_reachable()
    async def swap_records(
        self, records: Sequence[Record], expected_versions: Sequence[int]
    ) -> list[str]:
        latest = {r.key: (r, e) for r, e in zip(records, expected_versions, strict=True)}
        keys = sorted(latest)  # rows are locked in key order, as batches do
        if not keys:
            return []

        async def txn(conn: Connection) -> list[str]:
            await conn.execute(_BY_INDEX)
            rows = await conn.fetch(
                "UPDATE fs_records r SET version = u.version, content = u.content, "
                "created_at = u.created_at, accessed_at = u.accessed_at, "
                "gen = nextval('fs_record_gen') "
                "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], "
                "$6::bigint[]) AS u(key, expected, version, content, created_at, accessed_at) "
                "WHERE r.key = u.key AND r.version = u.expected "
                "AND r.created_at = u.created_at RETURNING r.key",
                keys,
                [latest[k][1] for k in keys],
                [latest[k][0].version for k in keys],
                [latest[k][0].content for k in keys],
                [latest[k][0].created_at for k in keys],
                [latest[k][0].accessed_at for k in keys],
            )
            written = sorted(row[0] for row in rows)
            # The record rows are locked by this transaction: no writer touches their fields.
            await _replace_fields(conn, [latest[key][0] for key in written])
            return written

        try:
            return await self._transact(txn)
        finally:
            for key in keys:
                self._cache.drop(key)

    @_reachable()
    async def delete_records(self, records: Sequence[Record]) -> list[str]:
        wanted = sorted((r.key, r.version, r.created_at) for r in records)  # key order
        if not wanted:
            return []

        async def txn(conn: Connection) -> list[str]:
            # Version and creation time are checked on the locked record row itself, so a
            # writer that commits first (waited for) is seen; then the field rows of the
            # records deleted.
            await conn.execute(_BY_INDEX)
            rows = await conn.fetch(
                "DELETE FROM fs_records r USING unnest($1::text[], $2::bigint[], $3::bigint[]) "
                "AS u(key, version, created_at) WHERE r.key = u.key AND r.version = u.version "
                "AND r.created_at = u.created_at RETURNING r.key",
                [w[0] for w in wanted],
                [w[1] for w in wanted],
                [w[2] for w in wanted],
            )
            deleted = sorted({row[0] for row in rows})
            await _delete_rows_of(conn, deleted)
            return deleted

        try:
            return await self._transact(txn)
        finally:
            for key, _, _ in wanted:
                self._cache.drop(key)

    async def _delete_where(self, where: tuple[str, str], *args: Any) -> int:
        """Delete the records ``where`` selects (``_BY_KEYS`` or ``_IN_RANGES``); how many."""
        using, condition = where

        async def txn(conn: Connection) -> int:
            # Records first (waiting for their writers), then the field and item rows of
            # those deleted.
            await conn.execute(_BY_INDEX)
            rows = await conn.fetch(
                f"DELETE FROM fs_records r {using} WHERE {condition.format('r')} RETURNING r.key",
                *args,
            )
            deleted = [row[0] for row in rows]
            await _delete_rows_of(conn, deleted)
            return len(deleted)

        return await self._transact(txn)

    @_reachable()
    async def delete_keys(self, keys: Sequence[str]) -> int:
        unique = sorted(set(keys))  # rows are locked in key order, as batches do
        try:
            return await self._delete_where(_BY_KEYS, unique)
        finally:
            for key in unique:
                self._cache.drop(key)

    @_reachable()
    async def delete_prefixes(self, prefixes: Sequence[str]) -> int:
        unique = sorted(set(prefixes))
        if not unique:
            return 0
        try:  # as fs_delete_prefix, for many ranges in one statement each
            return await self._delete_where(_IN_RANGES, unique, [prefix_end(p) for p in unique])
        finally:
            for prefix in unique:
                self._cache.drop_prefix(prefix)

    @_reachable(retry=True)
    async def count(self, prefix: str) -> int:
        pool = await self._get_pool()
        n = await pool.fetchval(
            "SELECT count(*) FROM fs_records WHERE key >= $1 AND key < $2",
            prefix,
            prefix_end(prefix),
        )
        return int(n)

    # ------------------------------------------------------------------ PubSub (LISTEN/NOTIFY)

    def _event_hub(self) -> Events:
        if self._events is None or self._events.loop is not asyncio.get_running_loop():
            self._events = Events(
                url=self.url,
                connect=self._connect_listener,
                schema=self._config.schema,
                get_pool=self._get_pool,
                broker=self.broker,
            )
        return self._events

    async def publish(self, topic: str, message: Any) -> None:
        """Deliver locally now; other processes get it through NOTIFY (sent in the background)."""
        if self._closed:
            raise RuntimeError(f"store {self.url} is closed")
        self.broker.publish_local(topic, message)
        self._event_hub().send(topic, message)

    def recent(self, key: str, fields: frozenset[str] | None, content: bool) -> Record | None:
        # The write cache: every entry is the record as one statement of this process saw
        # or wrote it, at the entry's version (a version-guarded write is cached only once
        # it succeeded).
        entry = self._cache.get(key)
        if entry is None or not entry.covers(fields, content):
            return None
        return Record(key, entry.version, entry.decoded(fields), entry.content)

    def may_deliver(self, topic: str) -> bool:
        return True  # other processes may subscribe: NOTIFY reaches them

    async def flush_events(self) -> None:
        """Wait until every event published so far has been handed to PostgreSQL."""
        if self._events is not None:
            await self._events.flush()

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[asyncio.Queue[Any]]:
        hub = self._event_hub()
        async with self.broker.listen(topic) as queue:
            try:
                await self._get_pool()
                await hub.add(topic)
            except LOST as exc:
                raise self._unavailable(exc) from exc
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
