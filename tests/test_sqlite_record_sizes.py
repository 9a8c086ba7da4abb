"""SQLite's record sizes (schema version 3): kept exact through pushes, folds and bulk writes,
and computed for a file made by an older flowstate when it is opened."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from flowstate.errors import StateValidationError
from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores import Record, SQLiteStore

FREE = Schema(None)

# The tables as flowstate wrote them at schema version 2 (before the size columns).
V2 = [
    "CREATE TABLE fs_records (key TEXT PRIMARY KEY, version INTEGER NOT NULL, content TEXT, "
    "created_at INTEGER NOT NULL, accessed_at INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE fs_fields (key TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, "
    "PRIMARY KEY (key, name)) WITHOUT ROWID",
    "CREATE TABLE fs_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE fs_items (key TEXT NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL, "
    "items TEXT NOT NULL, PRIMARY KEY (key, name, seq)) WITHOUT ROWID",
    "INSERT INTO fs_meta VALUES ('schema_version', '2')",
]


def text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def size_of(record: Record | None) -> int:
    assert record is not None
    fields = sum(len(n.encode()) + len(text(v).encode()) for n, v in record.fields.items())
    return fields + len((record.content or "").encode())


def stored_sizes(path: Path) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    with sqlite3.connect(path) as conn:
        records = dict(conn.execute("SELECT key, size FROM fs_records").fetchall())
        fields = {(k, n): s for k, n, s in conn.execute("SELECT key, name, size FROM fs_fields")}
    return records, fields


async def test_a_version_2_file_gets_its_sizes_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for sql in V2:
            conn.execute(sql)
        conn.executemany(
            "INSERT INTO fs_records VALUES (?, ?, ?, 1, 1)",
            [("a", 3, "héllo"), ("b", 2, None), ("c", 1, None)],
        )
        conn.executemany(
            "INSERT INTO fs_fields VALUES (?, ?, ?)",
            [("a", "log", "[1,2]"), ("a", "n", "5"), ("b", "e", "[]"), ("c", "x", '"é"')],
        )
        # pushes not folded yet: onto a non-empty list and onto an empty one
        conn.executemany(
            "INSERT INTO fs_items VALUES (?, ?, ?, ?)",
            [("a", "log", 1, "3"), ("a", "log", 2, '4,"ü"'), ("b", "e", 1, "7")],
        )
    store = SQLiteStore(path, max_record_bytes=40)
    try:
        records = {key: await store.read(key) for key in "abc"}
        assert records["a"] is not None and records["a"].fields["log"] == [1, 2, 3, 4, "ü"]
        sizes, fields = stored_sizes(path)
        assert sizes == {key: size_of(record) for key, record in records.items()}
        assert sizes == {"a": 3 + 14 + 1 + 1 + 6, "b": 1 + 3, "c": 1 + 4}
        assert fields[("a", "log")] == len(text([1, 2, 3, 4, "ü"]).encode())
        assert fields[("b", "e")] == 3
        # the computed sizes are what the limit counts from now on: 25 + 15 fits exactly
        await store.apply("a", Change(FREE, ops=(FieldOp("push", "log", "x" * 12),)))
        assert stored_sizes(path)[0]["a"] == 40 == size_of(await store.read("a"))
        with pytest.raises(StateValidationError, match='record "a" would be larger'):
            await store.apply("a", Change(FREE, ops=(FieldOp("push", "log", 0),)))
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM fs_meta").fetchone() == ("3",)


async def test_sizes_stay_exact_through_pushes_folds_and_bulk_writes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    store.fold_after = 3
    try:
        await store.apply("k", Change(FREE, ops=(FieldOp("set", "log", []),)))
        for i in range(8):  # folded twice, two pushes left as rows
            items = (FieldOp("push", "log", f"é{i}"), FieldOp("push", "log", i))
            await store.apply("k", Change(FREE, ops=items))
        await store.apply("k", Change(FREE, ops=(FieldOp("set", "z", None),)))
        await store.apply("k", Change(FREE, ops=(FieldOp("push", "z", [1]),)))
        await store.apply("k", Change(FREE, content="çontent"))
        record = await store.read("k")
        sizes, fields = stored_sizes(path)
        assert sizes["k"] == size_of(record)
        assert record is not None and fields[("k", "log")] == len(
            text(record.fields["log"]).encode()
        )
        # a whole-record write keeps them exact too: import, swap, create with replace
        await store.import_records([record])
        assert stored_sizes(path)[0]["k"] == size_of(record)
        moved = Record("k", 20, {"a": "ü" * 3}, "c", record.created_at, record.accessed_at)
        assert await store.swap_records([moved], [record.version]) == ["k"]
        assert stored_sizes(path)[0]["k"] == 1 + 8 + 1
        await store.create("k", {"b": [1, 2]}, "xyz", replace=True)
        assert stored_sizes(path) == ({"k": 1 + 5 + 3}, {("k", "b"): 5})
    finally:
        await store.aclose()
