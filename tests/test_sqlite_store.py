"""SQLite specifics: the inline fast path never stalls the event loop on another process."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores import SQLiteStore

INC = Change(Schema(None), ops=(FieldOp("inc", "n", 1),))


async def test_a_write_waits_for_another_process_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    store = SQLiteStore(path)
    try:
        await store.apply("k", INC)
        other = sqlite3.connect(path, isolation_level=None)  # stands in for another process
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(store.apply("k", INC))
        ticks = 0
        start = time.monotonic()
        while time.monotonic() - start < 0.3:  # the loop keeps running meanwhile
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        assert ticks >= 10
        other.execute("COMMIT")
        other.close()
        result = await asyncio.wait_for(write, 10)
        assert (result.status, result.version) == ("committed", 2)
        record = await store.read("k")
        assert record is not None and dict(record.fields) == {"n": 2}
    finally:
        await store.aclose()


async def test_lone_and_concurrent_callers_both_commit_everything(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mixed.db")
    try:
        for _ in range(20):  # lone caller: the inline path
            await store.apply("k", INC)
        await asyncio.gather(*(store.apply("k", INC) for _ in range(80)))  # the writer thread
        record = await store.read("k")
        assert record is not None and record.version == 100 and dict(record.fields) == {"n": 100}
    finally:
        await store.aclose()
    assert store._conn is None  # closed with the writer thread


def _version_1_database(path: Path) -> None:
    """A file as flowstate 1 (schema version 1, no fs_items) left it, holding a list."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE fs_records (key TEXT PRIMARY KEY, version INTEGER NOT NULL, content TEXT, "
        "created_at INTEGER NOT NULL, accessed_at INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE fs_fields (key TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, "
        "PRIMARY KEY (key, name)) WITHOUT ROWID"
    )
    conn.execute("CREATE TABLE fs_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO fs_meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO fs_records VALUES ('k', 3, NULL, 1, 1)")
    conn.execute("""INSERT INTO fs_fields VALUES ('k', 'log', '["a","b"]')""")
    conn.close()


async def test_a_version_1_database_is_upgraded_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _version_1_database(path)
    store = SQLiteStore(path)
    try:
        record = await store.read("k")
        assert record is not None and record.version == 3 and record.fields == {"log": ["a", "b"]}
        push = Change(Schema(None), ops=(FieldOp("push", "log", "c"),))
        assert (await store.apply("k", push)).version == 4
        again = await store.read("k")
        assert again is not None and again.fields == {"log": ["a", "b", "c"]}
    finally:
        await store.aclose()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM fs_meta").fetchall() == [("3",)]
    # schema version 3: the record's size was computed on open and kept by the push
    assert conn.execute("SELECT size FROM fs_records").fetchall() == [(3 + len('["a","b","c"]'),)]
    # the push is one small row; the stored array was not rewritten
    assert conn.execute("SELECT value FROM fs_fields").fetchall() == [('["a","b"]',)]
    assert conn.execute("SELECT seq, items FROM fs_items").fetchall() == [(1, '"c"')]
    conn.close()


def test_a_database_from_a_newer_flowstate_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    _version_1_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE fs_meta SET value = '99'")
    conn.close()
    with pytest.raises(RuntimeError) as info:
        SQLiteStore(path)
    assert str(info.value) == (
        f"{path}: the flowstate tables are at schema version 99, newer than this "
        "flowstate (3); upgrade flowstate"
    )
