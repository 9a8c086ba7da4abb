"""SQLite specifics: the inline fast path never stalls the event loop on another process."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

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
