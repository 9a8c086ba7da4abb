"""PostgreSQL's record sizes (schema version 3): tables made at version 2 get every record's
size on migration (pushed rows not yet folded included), and the limit holds from then on;
whole-record writes keep sizes exact."""

from __future__ import annotations

import json
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from flowstate.errors import StateValidationError
from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores import Record
from flowstate.stores.postgres import PostgresStore, migrate
from flowstate.stores.postgres.migrations import MIGRATIONS, parse_url, quote_ident

FREE = Schema(None)


def text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def size_of(record: Record | None) -> int:
    assert record is not None
    fields = sum(len(n.encode()) + len(text(v).encode()) for n, v in record.fields.items())
    return fields + len((record.content or "").encode())


async def sizes(store: PostgresStore) -> dict[str, int]:
    pool = await store._get_pool()
    return dict(await pool.fetch("SELECT key, size FROM fs_records"))


async def test_version_2_tables_get_their_sizes_on_migration(postgres_store_url: str) -> None:
    config = parse_url(postgres_store_url)
    assert config.schema is not None
    conn = await asyncpg.connect(config.dsn)
    try:  # the tables as flowstate made them at schema version 2, with records in them
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(config.schema)}")
        await conn.execute(f"SET search_path = {quote_ident(config.schema)}")
        assert [version for version, _ in MIGRATIONS[:2]] == [1, 2]
        for _, statements in MIGRATIONS[:2]:
            for statement in statements:
                await conn.execute(statement)
        await conn.execute("CREATE TABLE fs_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        await conn.execute("INSERT INTO fs_meta VALUES ('schema_version', '2')")
        await conn.executemany(
            "INSERT INTO fs_records (key, version, content, created_at, accessed_at) "
            "VALUES ($1, 1, $2, 1, 1)",
            [("a", "héllo"), ("b", None), ("c", None)],
        )
        await conn.executemany(
            "INSERT INTO fs_fields (key, name, value) VALUES ($1, $2, $3::json)",
            [("a", "log", '[1,"ü"]'), ("a", "n", "5"), ("b", "e", "[]"), ("c", "f", "[0]")],
        )
        # pushes not folded yet: onto a non-empty and onto an empty array; a fold's marker
        await conn.executemany(
            "INSERT INTO fs_items (key, name, seq, items) VALUES ($1, $2, $3, $4)",
            [("a", "log", 1, "3"), ("a", "log", 2, '4,"é"'), ("b", "e", 1, "7"), ("c", "f", 0, "")],
        )
    finally:
        await conn.close()
    assert await migrate(postgres_store_url) == MIGRATIONS[-1][0] == 3
    store = PostgresStore(postgres_store_url, max_record_bytes=40)
    try:
        a, b, c = await store.read("a"), await store.read("b"), await store.read("c")
        assert a is not None and a.fields["log"] == [1, "ü", 3, 4, "é"]
        assert await sizes(store) == {"a": size_of(a), "b": size_of(b), "c": size_of(c)}
        assert await sizes(store) == {"a": 3 + 17 + 1 + 1 + 6, "b": 1 + 3, "c": 1 + 3}
        # from the computed size on: 28 + 12 fits exactly, one byte more does not
        await store.apply("a", Change(FREE, ops=(FieldOp("push", "log", "x" * 9),)))
        assert (await sizes(store))["a"] == 40 == size_of(await store.read("a"))
        # pushes onto arrays that have pushed rows or only a fold's marker
        await store.apply("c", Change(FREE, ops=(FieldOp("push", "f", 1),)))
        await store.apply("b", Change(FREE, ops=(FieldOp("push", "e", 1),)))
        b, c = await store.read("b"), await store.read("c")
        assert b is not None and c is not None and c.fields["f"] == [0, 1]
        assert (await sizes(store))["b"] == size_of(b) and (await sizes(store))["c"] == size_of(c)
        with pytest.raises(StateValidationError, match='record "a" would be larger'):
            await store.apply("a", Change(FREE, ops=(FieldOp("push", "log", 0),)))
    finally:
        await store.aclose()


async def test_whole_record_writes_keep_sizes_exact(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url)
    try:
        await store.apply("k", Change(FREE, ops=(FieldOp("set", "log", []),)))
        for i in range(3):
            items = (FieldOp("push", "log", f"é{i}"), FieldOp("push", "log", i))
            await store.apply("k", Change(FREE, ops=items))
        await store.apply("k", Change(FREE, content="çontent"))
        record = await store.read("k")
        assert record is not None and (await sizes(store))["k"] == size_of(record)
        await store.import_records([record])
        assert (await sizes(store))["k"] == size_of(record)
        moved = Record("k", 20, {"a": "ü" * 3}, "c", record.created_at, record.accessed_at)
        assert await store.swap_records([moved], [record.version]) == ["k"]
        assert await sizes(store) == {"k": 1 + 8 + 1}
        await store.create("k", {"b": [1, 2]}, "xyz", replace=True)
        assert await sizes(store) == {"k": 1 + 5 + 3}
        await store.create("new", {"c": "ç"})
        assert (await sizes(store))["new"] == 1 + 4
    finally:
        await store.aclose()
