"""The SQLite store: the embedded default (``sqlite:///path/to/state.db``).

One connection, owned by one writer thread, takes jobs from a queue. Jobs that arrive while a
transaction is being committed are committed together in the next one (group commit, each job
in its own savepoint so one failing job rolls back alone), so concurrent writers share fsyncs
instead of starving each other on the file lock. ``BEGIN IMMEDIATE`` plus a busy timeout makes
several processes on one file safe: each transaction holds the database write lock while it
reads and writes. WAL mode lets other processes read meanwhile.

Durability: ``synchronous=FULL`` by default: a committed write survives power loss. Pass
``?synchronous=normal`` in the URL to trade that for speed (WAL stays consistent, but the last
transactions before a power cut may be lost).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..limits import MAX_RECORD_BYTES
from ..ops import UNCHANGED, Change, Mutation, push_target_error, same_json
from .base import (
    Applied,
    Created,
    Creation,
    Guard,
    Record,
    Store,
    field_bytes,
    plan_commit,
    prefix_end,
    pushed_bytes,
    text_bytes,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")

SCHEMA_VERSION = 3
# Version 3: ``size`` columns. A field's is the UTF-8 bytes of its value's JSON text (with
# the items pushed onto it, folded or not); a record's is what ``max_record_bytes`` counts:
# its fields' name and value bytes plus its content's.
_DDL = [
    """CREATE TABLE IF NOT EXISTS fs_records (
        key TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        content TEXT,
        created_at INTEGER NOT NULL,
        accessed_at INTEGER NOT NULL,
        size INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS fs_fields (
        key TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key, name)
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS fs_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # Version 2: items pushed onto a stored list, one row per push (their JSON texts joined
    # by commas), so a push writes a few bytes whatever the list's length. A read appends
    # them, in seq order, to the field's stored array; every ``fold_after`` pushes they are folded
    # into it, and a set or delete of the field removes them.
    """CREATE TABLE IF NOT EXISTS fs_items (
        key TEXT NOT NULL,
        name TEXT NOT NULL,
        seq INTEGER NOT NULL,
        items TEXT NOT NULL,
        PRIMARY KEY (key, name, seq)
    ) WITHOUT ROWID""",
]


_INSERT_FIELD = "INSERT INTO fs_fields (key, name, value, size) VALUES (?, ?, ?, ?)"
_BY_KEY = "key = ?"
_IN_RANGE = "key >= ? AND key < ?"
# 2 → 3: add the size columns to tables made before them, and compute every size (pushed items
# not yet folded count as they will once folded: their bytes and a comma each, but for the
# first one pushed onto an empty array).
_SIZES = [
    "ALTER TABLE fs_records ADD COLUMN size INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE fs_fields ADD COLUMN size INTEGER NOT NULL DEFAULT 0",
    """UPDATE fs_fields SET size = length(CAST(value AS BLOB)) + coalesce((
        SELECT sum(length(CAST(i.items AS BLOB)) + 1) - (fs_fields.value = '[]')
        FROM fs_items i WHERE i.key = fs_fields.key AND i.name = fs_fields.name), 0)""",
    """UPDATE fs_records SET size = coalesce(length(CAST(content AS BLOB)), 0) + coalesce((
        SELECT sum(length(CAST(f.name AS BLOB)) + f.size)
        FROM fs_fields f WHERE f.key = fs_records.key), 0)""",
]

_JSON_TYPES = {
    "integer": "int",
    "real": "float",
    "text": "str",
    "object": "dict",
    "true": "bool",
    "false": "bool",
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _encoded(record: Record) -> tuple[list[tuple[str, str, str, int]], int]:
    """A whole record's field rows (key, name, JSON text, size) and its size."""
    rows = []
    size = text_bytes(record.content)
    for name, value in record.fields.items():
        text = _dumps(value)
        n = text_bytes(text)
        rows.append((record.key, name, text, n))
        size += field_bytes(name, n)
    return rows, size


def _joined(array: str, items: str) -> str:
    """A stored array's JSON text with pushed items' texts (comma-joined) appended."""
    head = array.rstrip()[:-1].rstrip()
    return f"{head}{items}]" if head.endswith("[") else f"{head},{items}]"


class _Busy(Exception):
    """The inline fast path found the database write-locked by another process."""


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.future = future


_Recent = tuple[int, frozenset[str] | None, dict[str, str], str | None]
"""A record as one commit of this process left it: version, the fields whose presence is
known (None: all), their JSON texts, content."""


def _recent_after(
    mutation: Mutation,
    new: bool,
    asked: list[frozenset[str] | None],
    texts: dict[str, str],
    version: int,
    content: str | None,
) -> _Recent | None:
    """The record after ``mutation``, written onto what the commit loaded (``asked``,
    ``texts``; for a ``new`` record, nothing), or None where that is not known."""
    if new:
        for name, (base, items) in mutation.push.items():
            texts[name] = _dumps([*base, *items])  # what _push writes onto no field
        return version, None, texts, content
    names = asked[0] if asked else frozenset()
    if names is None:
        if mutation.push:
            return None
        known = None
    else:  # pushed-onto lists were not loaded: their values stay unknown
        known = (names | set(mutation.set) | mutation.delete) - set(mutation.push)
    for name in mutation.delete:
        texts.pop(name, None)
    for name in mutation.push:
        texts.pop(name, None)
    return version, known, texts, content


def _settle(job: _Job, ok: bool, value: Any) -> None:
    def done() -> None:
        if job.future.done():
            return
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)

    try:
        job.loop.call_soon_threadsafe(done)
    except RuntimeError:  # the caller's loop is closed; nobody is waiting
        pass


class SQLiteStore(Store):
    """Records in one SQLite file, safe for several processes on one machine."""

    fold_after = 1024  # pushes kept as rows of fs_items before they join the stored array
    # Records remembered as this process's last commit left them (Store.recent): at most
    # this many, each at most recent_bytes of JSON (a larger one is read again instead).
    recent_records = 256
    recent_bytes = 64 << 10

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        max_batch: int = 64,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        super().__init__(max_record_bytes=max_record_bytes)
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        sync = synchronous.upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be off, normal, full or extra, got {synchronous!r}")
        self.synchronous = sync
        self._busy_timeout = busy_timeout
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._clock = 0
        self._closed = False
        # The connection is shared by the writer thread and the inline fast path (see
        # _submit); this lock serialises them.
        self._conn_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._waiting = 0
        self._recent: OrderedDict[str, _Recent] = OrderedDict()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        ready: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"flowstate-sqlite:{self.path}", daemon=True
        )
        self._thread.start()
        error = ready.get()
        if error is not None:
            raise error

    # ------------------------------------------------------------------ the writer thread

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        if self.path != ":memory:":
            self._set_wal(conn)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for ddl in _DDL:
                conn.execute(ddl)
            row = conn.execute("SELECT value FROM fs_meta WHERE name = 'schema_version'").fetchone()
            found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: the flowstate tables are at schema version {found}, newer "
                    f"than this flowstate ({SCHEMA_VERSION}); upgrade flowstate"
                )
            columns = {row[1] for row in conn.execute("PRAGMA table_info(fs_records)")}
            if "size" not in columns:  # made before version 3
                for sql in _SIZES:
                    conn.execute(sql)
            if found < SCHEMA_VERSION:  # 1 → 2: fs_items, created above; 2 → 3: sizes
                conn.execute(
                    "INSERT INTO fs_meta (name, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new database to WAL fails at once with "database is locked" (the busy
        # timeout does not apply) while another process opens it too: retry until the timeout.
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.001
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _run(self, ready: queue.SimpleQueue[BaseException | None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            ready.put(exc)
            return
        self._conn = conn
        ready.put(None)
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            with self._conn_lock:
                self._conn = None
                conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        with self._conn_lock:
            self._run_batch_locked(conn, batch)

    def _run_batch_locked(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[_Job, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for job in batch:
                _settle(job, False, exc)
            return
        for job in batch:
            conn.execute("SAVEPOINT job")
            try:
                value = job.fn(conn)
            except BaseException as exc:  # the job's own error: undo only its writes
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                results.append((job, False, exc))
            else:
                conn.execute("RELEASE job")
                results.append((job, True, value))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            for job, _, _ in results:
                _settle(job, False, exc)
            return
        for job, ok, value in results:
            _settle(job, ok, value)

    def _run_inline(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], write: bool
    ) -> T:
        """Run one job on the caller's thread; raise _Busy if another process holds the lock.

        Never waits for another process (busy timeout 0 while taking the write lock), so it
        cannot stall the event loop for longer than the transaction's own work and fsync.
        A read takes no write lock: a deferred transaction is one snapshot, and in WAL mode
        readers do not wait for writers.
        """
        if not write:
            conn.execute("BEGIN")
        else:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _Busy from exc
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        try:
            value = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return value

    async def _submit(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        if self._closed:
            raise RuntimeError(f"store {self.url} is closed")
        # Fast path: a lone caller runs its transaction right here, saving two thread
        # switches. First yield once, so concurrent callers show up and go to the writer
        # thread together instead (group commit).
        self._waiting += 1
        try:
            await asyncio.sleep(0)
        finally:
            self._waiting -= 1
        conn = self._conn
        if (
            conn is not None
            and self._waiting == 0
            and self._jobs.empty()
            and self._conn_lock.acquire(blocking=False)
        ):
            try:
                if not self._closed:
                    return self._run_inline(conn, fn, write)
            except _Busy:
                pass  # another process is writing: wait for it in the writer thread
            finally:
                self._conn_lock.release()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, loop, future))
        return await future

    def _now(self) -> int:
        self._clock = max(self._clock + 1, time.time_ns())
        return self._clock

    # ------------------------------------------------------------------ contract

    @staticmethod
    def _load_fields(
        conn: sqlite3.Connection,
        key: str,
        names: frozenset[str] | None,
        sizes: dict[str, int] | None = None,
        pushed: set[str] | None = None,
        texts_out: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The fields ``names`` (None: all) of ``key``, their pushed items included, in one
        statement; their value sizes go into ``sizes``, the names of fields that have pushed
        rows into ``pushed`` and their JSON texts into ``texts_out``, if given."""
        if names is None:
            rows = conn.execute(
                "SELECT 0, name, value, size FROM fs_fields WHERE key = ? "
                "UNION ALL SELECT 1, name, items, seq FROM fs_items WHERE key = ?",
                (key, key),
            )
        elif not names:
            return {}
        else:
            marks = ",".join("?" * len(names))
            rows = conn.execute(
                f"SELECT 0, name, value, size FROM fs_fields WHERE key = ? AND name IN ({marks}) "
                f"UNION ALL SELECT 1, name, items, seq FROM fs_items "
                f"WHERE key = ? AND name IN ({marks})",
                (key, *names, key, *names),
            )
        texts: dict[str, str] = {}
        extra: dict[str, list[tuple[int, str]]] = {}
        for kind, name, value, size in rows:
            if kind:  # a pushed row: value is its items, size its sequence number
                extra.setdefault(name, []).append((size, value))
                continue
            texts[name] = value
            if sizes is not None:
                sizes[name] = size
        for name, parts in extra.items():
            if pushed is not None:
                pushed.add(name)
            if name in texts:
                parts.sort()  # in push order, whatever order the rows came in
                texts[name] = _joined(texts[name], ",".join(items for _, items in parts))
        if texts_out is not None:
            texts_out.update(texts)
        return {name: json.loads(value) for name, value in texts.items()}

    def _push(
        self, conn: sqlite3.Connection, key: str, name: str, base: list[Any], items: list[Any]
    ) -> int:
        """Append without reading or rewriting the stored list: one small row per push.

        Returns how many bytes the record grew by (the field's ``size`` is kept up to date).
        """
        row = conn.execute(
            "SELECT substr(value, 1, 1), size FROM fs_fields WHERE key = ? AND name = ?",
            (key, name),
        ).fetchone()
        if row is None or row[0] == "n":  # absent or null: store the whole list
            whole = _dumps([*base, *items])
            size = text_bytes(whole)
            conn.execute(
                "INSERT INTO fs_fields (key, name, value, size) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key, name) DO UPDATE SET value = excluded.value, size = excluded.size",
                (key, name, whole, size),
            )
            conn.execute("DELETE FROM fs_items WHERE key = ? AND name = ?", (key, name))
            return field_bytes(name, size) - field_bytes(name, None if row is None else row[1])
        if row[0] != "[":
            (kind,) = conn.execute(
                "SELECT json_type(value) FROM fs_fields WHERE key = ? AND name = ?", (key, name)
            ).fetchone()
            raise push_target_error(name, _JSON_TYPES.get(kind, kind))
        (seq,) = conn.execute(
            "SELECT coalesce(max(seq), 0) + 1 FROM fs_items WHERE key = ? AND name = ?",
            (key, name),
        ).fetchone()
        joined = ",".join(_dumps(item) for item in items)
        grown = pushed_bytes(row[1], False, 0, text_bytes(joined))
        conn.execute(
            "INSERT INTO fs_items (key, name, seq, items) VALUES (?, ?, ?, ?)",
            (key, name, seq, joined),
        )
        conn.execute(
            "UPDATE fs_fields SET size = size + ? WHERE key = ? AND name = ?", (grown, key, name)
        )
        if seq % self.fold_after == 0:  # fold the rows into the array (1 push in fold_after)
            parts = [
                r[0]
                for r in conn.execute(
                    "SELECT items FROM fs_items WHERE key = ? AND name = ? ORDER BY seq",
                    (key, name),
                )
            ]
            (stored,) = conn.execute(
                "SELECT value FROM fs_fields WHERE key = ? AND name = ?", (key, name)
            ).fetchone()
            conn.execute(
                "UPDATE fs_fields SET value = ? WHERE key = ? AND name = ?",
                (_joined(stored, ",".join(parts)), key, name),
            )
            conn.execute("DELETE FROM fs_items WHERE key = ? AND name = ?", (key, name))
        return grown

    def _read(
        self, conn: sqlite3.Connection, key: str, fields: frozenset[str] | None
    ) -> Record | None:
        row = conn.execute(
            "SELECT version, content, created_at, accessed_at FROM fs_records WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return Record(key, row[0], self._load_fields(conn, key, fields), row[1], row[2], row[3])

    async def read(self, key: str, fields: frozenset[str] | None = None) -> Record | None:
        return await self._submit(lambda conn: self._read(conn, key, fields), write=False)

    async def read_many(
        self, wanted: Mapping[str, frozenset[str] | None]
    ) -> dict[str, Record | None]:
        items = list(wanted.items())

        def job(conn: sqlite3.Connection) -> dict[str, Record | None]:
            return {key: self._read(conn, key, fields) for key, fields in items}

        return await self._submit(job, write=False)

    @staticmethod
    def _check(conn: sqlite3.Connection, guard: Guard | None) -> None:
        """Raise ``guard.gone()`` unless the guard holds (inside the write transaction)."""
        if guard is None:
            return
        row = conn.execute(
            "SELECT value FROM fs_fields WHERE key = ? AND name = ?", (guard.key, guard.name)
        ).fetchone()
        if row is None or not same_json(json.loads(row[0]), guard.value):
            raise guard.gone()

    async def apply(self, key: str, change: Change, *, guard: Guard | None = None) -> Applied:
        def job(conn: sqlite3.Connection) -> tuple[Applied, _Recent | None]:
            self._check(conn, guard)
            row = conn.execute(
                "SELECT version, content, size FROM fs_records WHERE key = ?", (key,)
            ).fetchone()
            version = None if row is None else row[0]
            loaded: dict[str, int] = {}  # value sizes of the fields the plan loads
            asked: list[frozenset[str] | None] = []
            pushed: set[str] = set()  # of those, the fields with pushed rows
            texts: dict[str, str] = {}  # and their JSON texts

            def load(names: frozenset[str] | None) -> tuple[dict[str, Any], str | None]:
                asked.append(names)
                return self._load_fields(conn, key, names, loaded, pushed, texts), row[1]

            planned = plan_commit(change, version, load)
            if isinstance(planned, Applied):
                return planned, None
            mutation = planned
            now = self._now()
            size = 0 if row is None else row[2]
            dropped = [*mutation.set, *mutation.delete]
            unread: list[str] = []
            if dropped and row is not None:
                seen = asked[0] if asked else frozenset()
                unread = [] if seen is None else [n for n in dropped if n not in seen]
                if unread:  # not loaded for the plan (every set field is, in practice)
                    marks = ",".join("?" * len(unread))
                    loaded.update(
                        conn.execute(
                            f"SELECT name, size FROM fs_fields WHERE key = ? AND name IN ({marks})",
                            (key, *unread),
                        ).fetchall()
                    )
                for name in dropped:
                    size -= field_bytes(name, loaded.get(name))
            if mutation.set:
                rows = []
                for name, value in mutation.set.items():
                    text = _dumps(value)
                    texts[name] = text
                    n = text_bytes(text)
                    size += field_bytes(name, n)
                    rows.append((key, name, text, n))
                conn.executemany(
                    "INSERT INTO fs_fields (key, name, value, size) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(key, name) DO UPDATE SET value = excluded.value, "
                    "size = excluded.size",
                    rows,
                )
            if dropped and row is not None:
                # The pushed rows of a field set or deleted go with it; a field read above
                # is known to have none unless ``pushed`` says so.
                stale = [n for n in dropped if n in pushed or n in unread]
                if stale:
                    conn.executemany(
                        "DELETE FROM fs_items WHERE key = ? AND name = ?",
                        [(key, name) for name in stale],
                    )
            for name, (base, items) in mutation.push.items():
                size += self._push(conn, key, name, base, items)
            if mutation.delete:
                conn.executemany(
                    "DELETE FROM fs_fields WHERE key = ? AND name = ?",
                    [(key, name) for name in mutation.delete],
                )
            new_content = mutation.content if isinstance(mutation.content, str) else None
            if mutation.content is not UNCHANGED:
                size += text_bytes(new_content) - text_bytes(None if row is None else row[1])
            self.check_size(key, size)  # raising rolls this job back: nothing is written
            if row is None:
                conn.execute(
                    "INSERT INTO fs_records (key, version, content, created_at, accessed_at, "
                    "size) VALUES (?, 1, ?, ?, ?, ?)",
                    (key, new_content, now, now, size),
                )
            elif mutation.content is UNCHANGED:
                conn.execute(
                    "UPDATE fs_records SET version = version + 1, accessed_at = ?, size = ? "
                    "WHERE key = ?",
                    (now, size, key),
                )
            else:
                conn.execute(
                    "UPDATE fs_records SET version = version + 1, accessed_at = ?, content = ?, "
                    "size = ? WHERE key = ?",
                    (now, new_content, size, key),
                )
            new_version = (version or 0) + 1
            content = new_content if mutation.content is not UNCHANGED or row is None else row[1]
            recent = _recent_after(mutation, row is None, asked, texts, new_version, content)
            return Applied("committed", new_version, mutation), recent

        applied, recent = await self._submit(job)
        self._recent.pop(key, None)  # whatever it held is older than this commit
        if recent is not None and sum(map(len, recent[2].values())) <= self.recent_bytes:
            self._recent[key] = recent  # committed: remember the record as of this commit
            self._recent.move_to_end(key)
            if len(self._recent) > self.recent_records:
                self._recent.popitem(last=False)
        return applied

    def recent(self, key: str, fields: frozenset[str] | None, content: bool) -> Record | None:
        seen = self._recent.get(key)
        if seen is None:
            return None
        version, known, texts, stored_content = seen
        if known is not None and (fields is None or not fields <= known):
            return None
        picked = texts.items() if fields is None else [(k, texts[k]) for k in fields if k in texts]
        return Record(key, version, {k: json.loads(v) for k, v in picked}, stored_content)

    async def _create(self, key: str, new: Creation) -> Created:
        encoded = [(key, name, text, new.sizes[name]) for name, text in new.texts.items()]
        content, cap, size = new.content, new.cap, new.size

        def job(conn: sqlite3.Connection) -> Created:
            self._check(conn, new.guard)
            now = self._now()
            row = conn.execute(
                "SELECT version, content, created_at, accessed_at FROM fs_records WHERE key = ?",
                (key,),
            ).fetchone()
            if row is not None:
                if not new.replace:
                    return Created("exists", row[0])
                previous = Record(key, row[0], self._load_fields(conn, key, None), *row[1:])
                self._drop(conn, _BY_KEY, [(key,)], records=False)
                conn.executemany(_INSERT_FIELD, encoded)
                conn.execute(
                    "UPDATE fs_records SET version = version + 1, content = ?, accessed_at = ?, "
                    "size = ? WHERE key = ?",
                    (content, now, size, key),
                )
                return Created("replaced", row[0] + 1, previous=previous)
            evicted: list[str] = []
            if cap is not None:
                lo, hi = cap.prefix, prefix_end(cap.prefix)
                (count,) = conn.execute(
                    "SELECT count(*) FROM fs_records WHERE key >= ? AND key < ?", (lo, hi)
                ).fetchone()
                excess = cap.to_evict(count)
                if excess is None:
                    return Created("full", 0)
                if excess:
                    evicted = [
                        k
                        for (k,) in conn.execute(
                            "SELECT key FROM fs_records WHERE key >= ? AND key < ? "
                            f"ORDER BY {cap.order}, key LIMIT ?",
                            (lo, hi, excess),
                        )
                    ]
                    self._drop(conn, _BY_KEY, [(k,) for k in evicted])
            conn.execute(
                "INSERT INTO fs_records (key, version, content, created_at, accessed_at, size) "
                "VALUES (?, 1, ?, ?, ?, ?)",
                (key, content, now, now, size),
            )
            conn.executemany(_INSERT_FIELD, encoded)
            return Created("created", 1, tuple(evicted))

        return await self._submit(job)

    @staticmethod
    def _drop(
        conn: sqlite3.Connection,
        where: str,
        params: Sequence[tuple[str, ...]],
        records: bool = True,
    ) -> int:
        """Delete the rows of the records ``where`` selects (fields, pushed items and, with
        ``records``, the records); return how many records were deleted."""
        conn.executemany(f"DELETE FROM fs_fields WHERE {where}", params)
        conn.executemany(f"DELETE FROM fs_items WHERE {where}", params)
        if not records:
            return 0
        before = conn.total_changes
        conn.executemany(f"DELETE FROM fs_records WHERE {where}", params)
        return conn.total_changes - before

    async def delete(self, key: str, *, guard: Guard | None = None) -> Record | None:
        def job(conn: sqlite3.Connection) -> Record | None:
            self._check(conn, guard)
            record = self._read(conn, key, None)
            if record is not None:
                self._drop(conn, _BY_KEY, [(key,)])
            return record

        return await self._submit(job)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.delete_prefixes([prefix])

    async def touch(self, key: str) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE fs_records SET accessed_at = ? WHERE key = ?", (self._now(), key))

        await self._submit(job)

    async def scan(
        self, prefix: str, *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        lo = after if after is not None and after >= prefix else None
        sql = "SELECT key FROM fs_records WHERE key < ? AND " + (
            "key > ?" if lo is not None else "key >= ?"
        )
        params: list[Any] = [prefix_end(prefix), lo if lo is not None else prefix]
        sql += " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(limit, 0))

        def job(conn: sqlite3.Connection) -> list[str]:
            return [k for (k,) in conn.execute(sql, params)]

        return await self._submit(job, write=False)

    async def export_records(
        self, prefix: str = "", *, after: str | None = None, limit: int = 500
    ) -> list[Record]:
        lo = after if after is not None and after >= prefix else None
        sql = (
            "SELECT key, version, content, created_at, accessed_at FROM fs_records "
            "WHERE key < ? AND " + ("key > ?" if lo is not None else "key >= ?") + " "
            "ORDER BY key LIMIT ?"
        )
        params = (prefix_end(prefix), lo if lo is not None else prefix, max(limit, 0))

        def job(conn: sqlite3.Connection) -> list[Record]:
            rows = conn.execute(sql, params).fetchall()
            if not rows:
                return []
            texts: dict[str, dict[str, str]] = {row[0]: {} for row in rows}
            span = (rows[0][0], rows[-1][0])
            # The batch is a contiguous key range: one range scan fetches all its fields, and
            # one more the pushed items not yet folded into their arrays (joined as read does).
            for key, name, value in conn.execute(
                "SELECT key, name, value FROM fs_fields WHERE key >= ? AND key <= ? "
                "ORDER BY key, name",
                span,
            ):
                if key in texts:
                    texts[key][name] = value
            pushed: dict[tuple[str, str], list[str]] = {}
            for key, name, items in conn.execute(
                "SELECT key, name, items FROM fs_items WHERE key >= ? AND key <= ? "
                "ORDER BY key, name, seq",
                span,
            ):
                pushed.setdefault((key, name), []).append(items)
            for (key, name), parts in pushed.items():
                if key in texts and name in texts[key]:
                    texts[key][name] = _joined(texts[key][name], ",".join(parts))
            return [
                Record(k, v, {n: json.loads(t) for n, t in texts[k].items()}, c, ca, aa)
                for k, v, c, ca, aa in rows
            ]

        return await self._submit(job)

    async def import_records(self, records: Sequence[Record]) -> int:
        latest = list({r.key: r for r in records}.values())  # the last of one key wins
        rows = []
        values = []
        for r in latest:
            fields, size = _encoded(r)
            rows.append((r.key, r.version, r.content, r.created_at, r.accessed_at, size))
            values += fields
        keys = [(r.key,) for r in latest]

        def job(conn: sqlite3.Connection) -> int:
            self._drop(conn, _BY_KEY, keys, records=False)
            conn.executemany(
                "INSERT INTO fs_records (key, version, content, created_at, accessed_at, size) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "version = excluded.version, content = excluded.content, "
                "created_at = excluded.created_at, accessed_at = excluded.accessed_at, "
                "size = excluded.size",
                rows,
            )
            conn.executemany(_INSERT_FIELD, values)
            return len(rows)

        return await self._submit(job)

    async def swap_records(
        self, records: Sequence[Record], expected_versions: Sequence[int]
    ) -> list[str]:
        pairs = list(zip(records, expected_versions, strict=True))

        def job(conn: sqlite3.Connection) -> list[str]:
            written: list[str] = []
            for r, expected in pairs:
                fields, size = _encoded(r)
                cursor = conn.execute(
                    "UPDATE fs_records SET version = ?, content = ?, created_at = ?, "
                    "accessed_at = ?, size = ? WHERE key = ? AND version = ? AND created_at = ?",
                    (
                        r.version,
                        r.content,
                        r.created_at,
                        r.accessed_at,
                        size,
                        r.key,
                        expected,
                        r.created_at,
                    ),
                )
                if cursor.rowcount != 1:
                    continue
                self._drop(conn, _BY_KEY, [(r.key,)], records=False)
                conn.executemany(_INSERT_FIELD, fields)
                written.append(r.key)
            return written

        return await self._submit(job)

    async def delete_records(self, records: Sequence[Record]) -> list[str]:
        wanted = [(r.key, r.version, r.created_at) for r in records]

        def job(conn: sqlite3.Connection) -> list[str]:
            deleted: set[str] = set()
            for key, version, created_at in wanted:
                cursor = conn.execute(
                    "DELETE FROM fs_records WHERE key = ? AND version = ? AND created_at = ?",
                    (key, version, created_at),
                )
                if cursor.rowcount != 1:
                    continue
                self._drop(conn, _BY_KEY, [(key,)], records=False)
                deleted.add(key)
            return sorted(deleted)

        return await self._submit(job)

    async def delete_keys(self, keys: Sequence[str]) -> int:
        params = [(k,) for k in dict.fromkeys(keys)]
        return await self._submit(lambda conn: self._drop(conn, _BY_KEY, params))

    async def delete_prefixes(self, prefixes: Sequence[str]) -> int:
        bounds = [(p, prefix_end(p)) for p in dict.fromkeys(prefixes)]
        return await self._submit(lambda conn: self._drop(conn, _IN_RANGE, bounds))

    async def count(self, prefix: str) -> int:
        def job(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute(
                "SELECT count(*) FROM fs_records WHERE key >= ? AND key < ?",
                (prefix, prefix_end(prefix)),
            ).fetchone()
            return int(n)

        return await self._submit(job, write=False)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
