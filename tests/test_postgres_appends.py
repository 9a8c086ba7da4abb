"""PostgreSQL append rows (schema version 2): a push inserts one ``fs_items`` row and never
reads or rewrites the stored array; reads reassemble; folds, sets, deletes, bulk copies,
several writers and processes, a killed connection and the upgrade from version 1.

The shared behaviour (pushes read back through every path, across folds) is in
``test_store_conformance.py``; here are the layout and the races only PostgreSQL has.
"""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from flowstate import StoreUnavailableError
from flowstate.errors import StateValidationError
from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores import Cap, MemoryStore, Record, Store, open_store
from flowstate.stores.postgres import SCHEMA_VERSION, PostgresStore, migrate
from flowstate.stores.postgres.cache import KEEP_APPENDED
from flowstate.stores.postgres.migrations import MIGRATIONS, quote_ident
from flowstate.transfer import copy_records, digest, export_dump, import_dump

from .conftest import _base_postgres_url, postgres_url
from .faults import terminate_backends, unique_app_name, with_options

pytestmark = pytest.mark.postgres

FREE = Schema(None)


def push(field: str, *items: Any, **kw: Any) -> Change:
    return Change(FREE, ops=tuple(FieldOp("push", field, i) for i in items), **kw)


def put(field: str, value: Any) -> Change:
    return Change(FREE, ops=(FieldOp("set", field, value),))


async def fields_of(store: Store, key: str) -> dict[str, Any] | None:
    record = await store.read(key)
    return None if record is None else dict(record.fields)


async def item_rows(store: PostgresStore, key: str) -> list[tuple[str, int, str]]:
    pool = await store._get_pool()
    rows = await pool.fetch(
        "SELECT name, seq, items FROM fs_items WHERE key = $1 ORDER BY name, seq", key
    )
    return [tuple(r) for r in rows]


async def stored_value(store: PostgresStore, key: str, name: str) -> tuple[str, str] | None:
    """The field row's text and its tuple id + xmin (changes whenever the row is rewritten)."""
    pool = await store._get_pool()
    row = await pool.fetchrow(
        "SELECT value::text, ctid::text || '/' || xmin::text FROM fs_fields "
        "WHERE key = $1 AND name = $2",
        key,
        name,
    )
    return None if row is None else (row[0], row[1])


async def fresh_read(url: str, key: str, fields: frozenset[str] | None = None) -> Record | None:
    """What is really stored: a new store instance, without a cache."""
    other = PostgresStore(url + "&cache_size=0")
    try:
        return await other.read(key, fields)
    finally:
        await other.aclose()


# ------------------------------------------------------------------------------- layout


async def test_a_push_inserts_one_row_and_leaves_the_stored_array_alone(
    postgres_store_url: str,
) -> None:
    store = PostgresStore(postgres_store_url)
    try:
        await store.apply("k", put("l", [0, {"b": 1, "a": "é"}, 2.0]))
        before = await stored_value(store, "k", "l")
        assert before is not None and before[0] == '[0,{"b":1,"a":"é"},2.0]'
        await store.apply("k", push("l", 3))
        await store.apply("k", push("l", {"z": [1e16]}, "😀"))
        await store.apply("k", push("l", None))
        assert await stored_value(store, "k", "l") == before  # neither rewritten nor moved
        assert await item_rows(store, "k") == [
            ("l", 1, "3"),
            ("l", 2, '{"z":[1e+16]},"😀"'),
            ("l", 3, "null"),
        ]
        expected = [0, {"b": 1, "a": "é"}, 2.0, 3, {"z": [1e16]}, "😀", None]
        reads = [
            await store.read("k"),
            await fresh_read(postgres_store_url, "k"),
            await fresh_read(postgres_store_url, "k", frozenset({"l"})),
            (await store.read_many({"k": frozenset({"l"})}))["k"],
            (await store.export_records())[0],
        ]
        for record in reads:
            assert record is not None and record.fields == {"l": expected}
            got = record.fields["l"]
            assert type(got[2]) is float and list(got[1]) == ["b", "a"]
    finally:
        await store.aclose()


async def test_pushes_fold_into_the_array_every_fold_after_pushes(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url)
    store.fold_after = 4
    try:
        await store.apply("k", put("l", ["a"]))
        expected: list[Any] = ["a"]
        for i in range(1, 11):
            await store.apply("k", push("l", i))
            expected.append(i)
            rows = await item_rows(store, "k")
            pushed = [r for r in rows if r[1] > 0]
            assert [r[1] for r in pushed] == list(range(1, i % 4 + 1)), i
            value = await stored_value(store, "k", "l")
            assert value is not None
            assert json.loads(value[0]) == expected[: 1 + i - i % 4], i  # folded part
            if i >= 4:
                assert ("l", 0, "") in rows  # the marker: an array, no need to look at it
            assert await fields_of(store, "k") == {"l": expected}
            got = await fresh_read(postgres_store_url, "k")
            assert got is not None and got.fields == {"l": expected}
        # concurrent pushes are combined: one row per statement, across the next boundary
        results = await asyncio.gather(*(store.apply("k", push("l", f"c{j}")) for j in range(9)))
        assert all(r.status == "committed" for r in results)
        order = sorted(range(9), key=lambda j: results[j].version)
        expected += [f"c{j}" for j in order]
        got = await fresh_read(postgres_store_url, "k")
        assert got is not None and got.fields == {"l": expected}
    finally:
        await store.aclose()


async def test_a_set_or_delete_of_the_field_after_pushes_replaces_them(
    postgres_store_url: str,
) -> None:
    store = PostgresStore(postgres_store_url)
    try:
        await store.apply("k", put("l", [1]))
        await store.apply("k", push("l", 2))
        await store.apply("k", put("l", [7]))
        assert await item_rows(store, "k") == []
        await store.apply("k", push("l", 8))
        assert await fields_of(store, "k") == {"l": [7, 8]}
        await store.apply("k", put("l", 5))
        assert await item_rows(store, "k") == []
        with pytest.raises(
            StateValidationError, match=r'^field "l": push_state needs a list field, found int$'
        ):
            await store.apply("k", push("l", 9))
        await store.apply("k", put("l", None))
        await store.apply("k", push("l", "x"))
        assert await fields_of(store, "k") == {"l": ["x"]}
        await store.apply("k", push("l", "y"))
        await store.apply("k", Change(FREE, replace={"other": 1}))  # deletes field l
        assert await item_rows(store, "k") == []
        await store.apply("k", push("l", "z"))
        got = await fresh_read(postgres_store_url, "k")
        assert got is not None and got.fields == {"other": 1, "l": ["z"]} and got.version == 10
    finally:
        await store.aclose()


async def test_a_long_list_forgotten_by_the_cache_is_still_replaced_and_extended(
    postgres_store_url: str,
) -> None:
    """Past KEEP_APPENDED the write cache stops copying the list on each push; a later set,
    update or read must still see (and clear) the pushed rows."""
    store = PostgresStore(postgres_store_url)
    long = list(range(KEEP_APPENDED // 4))
    try:
        await store.apply(
            "k", Change(FREE, ops=(FieldOp("set", "l", long), FieldOp("set", "n", 1)))
        )
        await store.apply("k", push("l", "a"))
        await store.apply("k", push("l", "b"))
        entry = store._cache.get("k")
        assert entry is not None and "l" in entry.forgotten and "l" not in entry.fields
        await store.apply("k", Change(FREE, ops=(FieldOp("inc", "n", 1),)))  # the list stays unread
        assert await fields_of(store, "k") == {"l": [*long, "a", "b"], "n": 2}
        await store.apply("k", push("l", "c"))
        await store.apply("k", Change(FREE, ops=(FieldOp("set", "l", ["fresh"]),)))
        assert await item_rows(store, "k") == []
        assert await fields_of(store, "k") == {"l": ["fresh"], "n": 2}
        await store.apply("k", Change(FREE, ops=(FieldOp("set", "l", long),)))
        await store.apply("k", push("l", "d"))
        await store.apply("k", Change(FREE, replace={"n": 0}))  # field l deleted
        assert await item_rows(store, "k") == []
        await store.apply("k", push("l", "e"))
        got = await fresh_read(postgres_store_url, "k")
        assert got is not None and got.fields == {"n": 0, "l": ["e"]}
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        (" [1, 2] ", [1, 2, 3]),
        ("\n\t[]", [3]),
        (" null", [3]),
        ("  5", "int"),
        (" 2.5", "float"),
        (' "s"', "str"),
        ("\n{}", "dict"),
        (" true", "bool"),
    ],
)
async def test_push_onto_a_stored_value_with_leading_whitespace(
    postgres_store_url: str, text: str, outcome: Any
) -> None:
    """Values flowstate writes are compact; one written by hand may start with blanks."""
    store = PostgresStore(postgres_store_url + "&cache_size=0")
    try:
        await store.apply("k", put("l", 0))
        pool = await store._get_pool()
        await pool.execute(
            "UPDATE fs_fields SET value = $1::json WHERE key = 'k' AND name = 'l'", text
        )
        if isinstance(outcome, str):
            with pytest.raises(
                StateValidationError, match=f"push_state needs a list field, found {outcome}$"
            ):
                await store.apply("k", push("l", 3))
            assert await item_rows(store, "k") == []
        else:
            await store.apply("k", push("l", 3))
            assert await fields_of(store, "k") == {"l": outcome}
    finally:
        await store.aclose()


# ------------------------------------------------------------- every way a record goes


async def _with_pushes(store: PostgresStore, key: str) -> None:
    await store.apply(key, put("l", ["s"]))
    for i in range(5):  # fold_after 2: folds, a marker row and one pushed row
        await store.apply(key, push("l", i))
    assert len(await item_rows(store, key)) == 2


async def test_every_way_a_record_is_removed_or_replaced_drops_its_pushed_items(
    postgres_store_url: str,
) -> None:
    store = PostgresStore(postgres_store_url)
    store.fold_after = 2
    whole = ["s", 0, 1, 2, 3, 4]
    try:
        await _with_pushes(store, "a")
        gone = await store.delete("a")
        assert gone is not None and gone.fields == {"l": whole}
        await _with_pushes(store, "b/1")
        assert await store.delete_prefix("b/") == 1
        await _with_pushes(store, "c")
        assert await store.delete_keys(["c"]) == 1
        await _with_pushes(store, "d/1")
        assert await store.delete_prefixes(["d/"]) == 1
        await _with_pushes(store, "e")
        created = await store.create("e", {"l": ["new"]}, replace=True)
        assert created.previous is not None and created.previous.fields == {"l": whole}
        await _with_pushes(store, "f")
        f = await store.read("f")
        assert f is not None
        assert await store.import_records([Record("f", 9, {"l": ["imported"]}, None, 1, 2)]) == 1
        await _with_pushes(store, "g")
        g = await store.read("g")
        assert g is not None
        swapped = Record("g", g.version + 1, {"l": ["swapped"]}, None, g.created_at, 5)
        assert await store.swap_records([swapped], [g.version]) == ["g"]
        await _with_pushes(store, "h/1")
        cap = Cap("h/", 1, "oldest")
        assert (await store.create("h/2", {"l": []}, cap=cap)).evicted == ("h/1",)
        for key in ("a", "b/1", "c", "d/1", "h/1"):
            assert await item_rows(store, key) == [], key
            assert await store.read(key) is None, key
            await store.apply(key, push("l", "again"))  # a new record inherits nothing
            assert await fields_of(store, key) == {"l": ["again"]}, key
        for key, first in (("e", "new"), ("f", "imported"), ("g", "swapped")):
            assert await item_rows(store, key) == [], key
            await store.apply(key, push("l", "more"))
            got = await fresh_read(postgres_store_url, key)
            assert got is not None and got.fields == {"l": [first, "more"]}, key
        pool = await store._get_pool()
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM fs_items i WHERE NOT EXISTS "
                "(SELECT 1 FROM fs_records r WHERE r.key = i.key)"
            )
            == 0
        )
    finally:
        await store.aclose()


async def test_export_and_import_of_pushed_lists_is_byte_identical(
    postgres_store_url: str, tmp_path: Path
) -> None:
    source = PostgresStore(postgres_store_url)
    source.fold_after = 3
    targets: list[Store] = [
        PostgresStore(postgres_url()),
        open_store(f"sqlite:///{tmp_path / 'copy.db'}"),
        MemoryStore(),
    ]
    back = PostgresStore(postgres_url())
    try:
        for i in range(12):
            key = f"r/{i:02d}"
            await source.apply(key, put("l", [i, {"b": 1.0, "a": "é"}]))
            for j in range(i):  # 0 … 11 pushes: none, some rows, folds, folds + rows
                await source.apply(key, push("l", j, 1e16, {"y": [j], "x": None}))
            await source.apply(key, push("m", f"only pushes {i}"))
        dump = io.StringIO()
        original = await export_dump(source, dump, batch=5)
        assert original.count == 12
        for target in targets:
            await import_dump(target, io.StringIO(dump.getvalue()).readlines(), batch=4)
            again = io.StringIO()
            assert await export_dump(target, again, batch=7) == original
            assert again.getvalue() == dump.getvalue()
        # PostgreSQL → SQLite → PostgreSQL with copy, then push on: the lists go on
        await copy_records(targets[1], back, batch=5)
        assert await digest(back) == original
        await back.apply("r/11", push("l", "after"))
        got = await back.read("r/11")
        assert got is not None and got.fields["l"][-1] == "after" and len(got.fields["l"]) == 36
    finally:
        for store in (source, *targets, back):
            await store.aclose()


# ------------------------------------------------------------------- writers and faults


async def test_interleaved_pushes_from_concurrent_writers_keep_every_item_once_in_commit_order(
    postgres_store_url: str,
) -> None:
    stores = [PostgresStore(postgres_store_url) for _ in range(3)]
    for store in stores:
        store.fold_after = 5
    committed: list[tuple[int, str]] = []
    rng = random.Random(11)

    async def writer(w: int) -> None:
        for i in range(25):
            item = f"w{w}-{i}"
            applied = await rng.choice(stores).apply("k", push("l", item))
            assert applied.status == "committed"
            committed.append((applied.version, item))
            if rng.random() < 0.2:
                await asyncio.sleep(0)

    try:
        await stores[0].apply("k", put("l", []))
        await asyncio.gather(*(writer(w) for w in range(8)))
        versions = [v for v, _ in committed]
        assert len(set(versions)) == len(versions) == 200
        expected = [item for _, item in sorted(committed)]
        for store in stores:
            assert await fields_of(store, "k") == {"l": expected}
        got = await fresh_read(postgres_store_url, "k")
        assert got is not None and got.fields == {"l": expected} and got.version == 201
    finally:
        for store in stores:
            await store.aclose()


N_PROC = 40


def _push_worker(url: str, who: str, out: str) -> None:
    async def main() -> None:
        store = PostgresStore(url)
        store.fold_after = 6
        done: list[tuple[int, str]] = []
        try:
            for i in range(N_PROC):
                items = [f"{who}-{i}"]
                applied = await store.apply("shared", push("l", *items))
                assert applied.status == "committed"
                done.append((applied.version, items[0]))
            # and a burst of concurrent pushes, combined in this process
            burst = [f"{who}-b{i}" for i in range(N_PROC)]
            results = await asyncio.gather(*(store.apply("shared", push("l", b)) for b in burst))
            done += [(r.version, b) for r, b in zip(results, burst, strict=True)]
        finally:
            await store.aclose()
        Path(out).write_text(json.dumps(done))

    asyncio.run(main())


def test_pushes_from_two_processes_keep_every_item_once_in_commit_order(
    postgres_store_url: str, tmp_path: Path
) -> None:
    async def setup() -> None:
        store = PostgresStore(postgres_store_url)
        try:
            await store.apply("shared", put("l", ["start"]))
        finally:
            await store.aclose()

    asyncio.run(setup())
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"{who}.json" for who in ("p1", "p2")]
    procs = [
        ctx.Process(target=_push_worker, args=(postgres_store_url, out.stem, str(out)))
        for out in outs
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    committed = sorted(tuple(x) for out in outs for x in json.loads(out.read_text()))
    assert len({v for v, _ in committed}) == len(committed) == 4 * N_PROC
    got = asyncio.run(fresh_read(postgres_store_url, "shared"))
    assert got is not None
    assert got.fields == {"l": ["start", *(item for _, item in committed)]}
    assert got.version == 1 + 4 * N_PROC


async def test_a_killed_connection_mid_push_loses_no_acknowledged_item(
    postgres_store_url: str,
) -> None:
    name = unique_app_name()
    store = PostgresStore(with_options(postgres_store_url, application_name=name))
    store.fold_after = 8
    acknowledged: list[tuple[int, str]] = []
    unsure: set[str] = set()  # failed with store_unavailable: may or may not have committed
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            item = f"w{w}-{i}"
            i += 1
            try:
                applied = await asyncio.wait_for(store.apply("k", push("l", item)), 10)
            except StoreUnavailableError:
                unsure.add(item)
                await asyncio.sleep(0.01)
                continue
            except BaseException as exc:  # a hang or a driver error is a bug
                errors.append(exc)
                return
            acknowledged.append((applied.version, item))

    try:
        await store.apply("k", put("l", []))
        tasks = [asyncio.create_task(writer(w)) for w in range(6)]
        for _ in range(3):
            await asyncio.sleep(0.3)
            await terminate_backends(name)
        deadline = time.monotonic() + 10
        before = len(acknowledged)
        while len(acknowledged) < before + 20:
            assert time.monotonic() < deadline, "pushes did not resume after the kills"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        assert errors == []
        got = await fresh_read(postgres_store_url, "k")
        assert got is not None
        stored = got.fields["l"]
        assert len(stored) == len(set(stored))  # nothing twice
        assert set(stored) <= {i for _, i in acknowledged} | unsure  # nothing invented
        mine = {i for _, i in acknowledged}
        # every acknowledged push is there, in the order of its version
        assert [i for i in stored if i in mine] == [i for _, i in sorted(acknowledged)]
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- upgrading


async def test_a_version_1_database_is_upgraded_and_its_lists_take_pushes(
    postgres_store_url: str,
) -> None:
    schema = postgres_store_url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(_base_postgres_url())
    try:
        await conn.execute(f"CREATE SCHEMA {quote_ident(schema)}")
        await conn.execute(f"SET search_path = {quote_ident(schema)}")
        await conn.execute("CREATE TABLE fs_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for statement in MIGRATIONS[0][1]:  # the tables as flowstate at version 1 made them
            await conn.execute(statement)
        await conn.execute("INSERT INTO fs_meta VALUES ('schema_version', '1')")
        await conn.execute(
            "INSERT INTO fs_records (key, version, created_at, accessed_at) VALUES ('k', 3, 10, 20)"
        )
        await conn.execute(
            """INSERT INTO fs_fields VALUES ('k', 'log', '["a", "b"]'), """
            """('k', 'n', '7')"""
        )
        store = PostgresStore(postgres_store_url)
        try:
            assert (await store.apply("k", push("log", "c"))).version == 4
            assert await fields_of(store, "k") == {"log": ["a", "b", "c"], "n": 7}
            assert await item_rows(store, "k") == [("log", 1, '"c"')]
            with pytest.raises(StateValidationError, match="found int"):
                await store.apply("k", push("n", 1))
        finally:
            await store.aclose()
        assert await conn.fetchval("SELECT value FROM fs_meta") == str(SCHEMA_VERSION) == "3"
        assert await conn.fetchval("SELECT to_regproc('fs_append')") is None
        assert await conn.fetchval("""SELECT value::text FROM fs_fields WHERE name = 'log'""") == (
            '["a", "b"]'
        )
        assert await migrate(postgres_store_url) == 3
    finally:
        await conn.close()
