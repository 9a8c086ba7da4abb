"""The store contract (``flowstate.stores.base``), clause by clause, for every backend.

Every test takes the ``store`` fixture, which is parametrized over ``STORE_PARAMS`` in
``conftest.py``: a new backend passes by being added there, not by copying this file.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from flowstate.errors import StateValidationError
from flowstate.ops import UNCHANGED, Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores import Cap, Record, SQLiteStore, Store, open_store

FREE = Schema(None)


class Typed(BaseModel):
    name: str = ""
    n: int = 0


TYPED = Schema(Typed)


def ops(*items: FieldOp, schema: Schema = FREE, **kw: Any) -> Change:
    return Change(schema, ops=items, **kw)


def inc(field: str = "n", amount: Any = 1, **kw: Any) -> Change:
    return ops(FieldOp("inc", field, amount), **kw)


def put(field: str, value: Any, **kw: Any) -> Change:
    return ops(FieldOp("set", field, value), **kw)


async def fields_of(store: Store, key: str) -> dict[str, Any] | None:
    record = await store.read(key)
    return None if record is None else dict(record.fields)


# ---------------------------------------------------------------------------------- read


async def test_read_of_a_missing_record_is_none(store: Store) -> None:
    assert await store.read("nope") is None
    assert await store.read("nope", frozenset({"a"})) is None


async def test_read_returns_only_the_fields_asked_for(store: Store) -> None:
    await store.apply(
        "k", ops(FieldOp("set", "a", 1), FieldOp("set", "b", [2]), FieldOp("set", "c", {"x": 3}))
    )
    record = await store.read("k", frozenset({"a", "c", "missing"}))
    assert record is not None
    assert dict(record.fields) == {"a": 1, "c": {"x": 3}}
    assert record.version == 1
    empty = await store.read("k", frozenset())
    assert empty is not None and dict(empty.fields) == {} and empty.version == 1
    assert await fields_of(store, "k") == {"a": 1, "b": [2], "c": {"x": 3}}


async def test_read_many_reads_each_key_with_its_own_fields(store: Store) -> None:
    await store.apply("a", ops(FieldOp("set", "x", 1), FieldOp("set", "big", list(range(50)))))
    await store.apply("b", ops(FieldOp("set", "x", "é\u2028"), FieldOp("set", "y", None)))
    await store.apply("b", put("x", "two"))
    await store.create("c", {"z": {"k": [1]}}, content="text")
    got = await store.read_many(
        {"a": frozenset({"x", "missing"}), "b": None, "c": frozenset(), "nope": None}
    )
    assert list(got) == ["a", "b", "c", "nope"]
    a, b, c = got["a"], got["b"], got["c"]
    assert a is not None and dict(a.fields) == {"x": 1} and a.version == 1
    assert b is not None and dict(b.fields) == {"x": "two", "y": None} and b.version == 2
    assert c is not None and dict(c.fields) == {} and c.content == "text" and c.version == 1
    assert got["nope"] is None
    # the same records as one read each
    for key in ("a", "b", "c"):
        one = await store.read(key, None if key == "b" else frozenset({"x"}))
        many = got[key]
        assert one is not None and many is not None
        assert (one.version, one.created_at, one.accessed_at, one.content) == (
            many.version,
            many.created_at,
            many.accessed_at,
            many.content,
        )
    assert await store.read_many({}) == {}
    # a read is a read: it creates nothing, and what it returns is the caller's to change
    assert await store.read("nope") is None
    a.fields["x"] = 99  # type: ignore[index]
    assert await fields_of(store, "a") == {"x": 1, "big": list(range(50))}


async def test_read_many_sees_writes_made_since_and_keys_with_odd_characters(
    store: Store,
) -> None:
    keys = ["k/é", "k/\u2028", "k/ü/z", "k/'; DROP TABLE fs_records; --"]
    for i, key in enumerate(keys):
        await store.apply(key, put("v", i))
    first = await store.read_many({key: frozenset({"v"}) for key in keys})
    assert [r.fields["v"] for r in first.values() if r is not None] == [0, 1, 2, 3]
    await store.apply(keys[1], inc("v", 10))
    await store.delete(keys[2])
    again = await store.read_many(dict.fromkeys(keys))
    bumped = again[keys[1]]
    assert bumped is not None and bumped.fields == {"v": 11}
    assert bumped.version == 2
    assert again[keys[2]] is None
    assert await store.count("k/") == 3


async def test_reading_does_not_change_accessed_at(store: Store) -> None:
    await store.apply("k", put("a", 1))
    first = await store.read("k")
    await store.read("k")
    again = await store.read("k", frozenset({"a"}))
    assert first is not None and again is not None
    assert again.accessed_at == first.accessed_at


async def test_json_values_round_trip_exactly(store: Store) -> None:
    values = {
        "ordered": {"z": 1, "a": 2, "m": {"y": None, "b": True}},
        "float": 1.0,
        "big_float": 1e16,
        "tiny": 1e-7,
        "big_int": 2**63 - 1,
        "small_int": -(2**63 - 1),
        "text": 'héllo wörld 😀 \u0001 \U0010ffff "quoted" \\ back',
        "empty": [[], {}, ""],
        "false": False,
        "null": None,
    }
    await store.apply("k", ops(*(FieldOp("set", k, v) for k, v in values.items())))
    got = await fields_of(store, "k")
    assert got == values
    assert got is not None
    assert list(got["ordered"]) == ["z", "a", "m"]
    assert list(got["ordered"]["m"]) == ["y", "b"]
    for name in ("float", "big_float", "tiny"):
        assert type(got[name]) is float
    assert type(got["big_int"]) is int and type(got["false"]) is bool


async def test_the_store_shares_no_mutable_values_with_callers(store: Store) -> None:
    given: dict[str, Any] = {"l": [1], "d": {"a": [1]}}
    await store.create("k", given)
    given["l"].append("caller")
    given["d"]["a"].append("caller")
    record = await store.read("k")
    assert record is not None and dict(record.fields) == {"l": [1], "d": {"a": [1]}}
    record.fields["l"].append("reader")
    item: dict[str, list[Any]] = {"x": [1]}
    result = await store.apply("k", ops(FieldOp("set", "m", [1]), FieldOp("push", "l", item)))
    assert result.mutation is not None
    result.mutation.set["m"].append("writer")
    item["x"].append("pusher")
    assert await fields_of(store, "k") == {"l": [1, {"x": [1]}], "d": {"a": [1]}, "m": [1]}


async def test_appending_keeps_the_stored_items_exactly(store: Store) -> None:
    items = [1.0, 1e16, 2**63 - 1, {"z": 1, "a": [None, True]}, "é 😀 \u0001", -0.5, 1e-7]
    await store.apply("k", put("l", items))
    await store.apply(
        "k", ops(FieldOp("push", "l", 3.0), FieldOp("push", "l", {"y": 1, "b": 2}))
    )
    got = (await fields_of(store, "k") or {})["l"]
    assert got == [*items, 3.0, {"y": 1, "b": 2}]
    assert [type(x) for x in got] == [type(x) for x in [*items, 3.0, {}]]
    assert list(got[3]) == ["z", "a"] and list(got[-1]) == ["y", "b"]


async def test_many_pushes_read_back_in_order_through_every_path(store: Store) -> None:
    if hasattr(store, "fold_after"):  # SQLite and PostgreSQL keep pushes as rows
        store.fold_after = 7  # cross several folds of pushed rows into the stored array
    await store.apply("k", put("l", ["a"]))
    expected: list[Any] = ["a"]
    for i in range(30):
        await store.apply("k", ops(FieldOp("push", "l", i), FieldOp("push", "m", -i)))
        expected.append(i)
        if i % 9 == 4:
            assert (await fields_of(store, "k") or {})["l"] == expected
    got = await store.read_many({"k": frozenset({"l"})})
    assert got["k"] is not None and got["k"].fields == {"l": expected}
    one = await store.read("k", frozenset({"m"}))
    assert one is not None and one.fields == {"m": [-i for i in range(30)]}
    # a set replaces the pushed items too; pushes go on from the new value
    await store.apply("k", put("l", {"not": "a list"}))
    with pytest.raises(StateValidationError, match="push_state needs a list field, found dict"):
        await store.apply("k", ops(FieldOp("push", "l", 1)))
    await store.apply("k", put("l", []))
    await store.apply("k", ops(FieldOp("push", "l", "x")))
    assert (await fields_of(store, "k") or {})["l"] == ["x"]
    # a deleted field, a deleted record, a replaced record: no pushed item survives them
    await store.apply("k", Change(FREE, replace={"m": [0]}))
    assert await fields_of(store, "k") == {"m": [0]}
    await store.apply("k", ops(FieldOp("push", "m", 1)))
    deleted = await store.delete("k")
    assert deleted is not None and deleted.fields == {"m": [0, 1]}
    await store.apply("k", ops(FieldOp("push", "m", 2)))
    assert await fields_of(store, "k") == {"m": [2]}
    await store.apply("k", ops(FieldOp("push", "m", 3)))
    await store.create("k", {"m": []}, replace=True)
    assert await fields_of(store, "k") == {"m": []}
    await store.apply("k/x", ops(FieldOp("push", "m", 1), FieldOp("push", "m", 2)))
    assert await store.delete_prefix("k/") == 1
    await store.apply("k/x", put("m", None))
    await store.apply("k/x", ops(FieldOp("push", "m", 5)))
    assert await fields_of(store, "k/x") == {"m": [5]}


# --------------------------------------------------------------------------------- apply


async def test_apply_creates_at_version_one_then_bumps_by_one(store: Store) -> None:
    first = await store.apply("k", inc())
    assert first.status == "committed" and first.version == 1
    assert first.mutation is not None and dict(first.mutation.set) == {"n": 1}
    record = await store.read("k")
    assert record is not None and record.version == 1 and dict(record.fields) == {"n": 1}
    assert record.created_at > 0 and record.accessed_at >= record.created_at
    for expected in (2, 3):
        result = await store.apply("k", inc(amount=10))
        assert (result.status, result.version) == ("committed", expected)
    later = await store.read("k")
    assert later is not None and later.version == 3 and dict(later.fields) == {"n": 21}
    assert later.created_at == record.created_at
    assert later.accessed_at > record.accessed_at


async def test_apply_writes_only_the_changed_fields(store: Store) -> None:
    await store.apply("k", ops(FieldOp("set", "a", 1), FieldOp("set", "b", 2)))
    result = await store.apply("k", ops(FieldOp("inc", "a", 1), FieldOp("push", "l", "x")))
    assert result.mutation is not None
    assert result.mutation.changed_fields == ["a", "l"]
    assert await fields_of(store, "k") == {"a": 2, "b": 2, "l": ["x"]}


async def test_appends_extend_the_stored_list_or_start_one(store: Store) -> None:
    await store.apply("k", ops(FieldOp("set", "l", [1, 2])))
    await store.apply("k", ops(FieldOp("push", "l", 3), FieldOp("push", "l", 4)))
    await store.apply("k", ops(FieldOp("push", "fresh", "x")))
    assert await fields_of(store, "k") == {"l": [1, 2, 3, 4], "fresh": ["x"]}
    await store.apply("k", ops(FieldOp("set", "n", 5)))
    with pytest.raises(StateValidationError, match='field "n": push_state needs a list field'):
        await store.apply("k", ops(FieldOp("push", "n", 1)))
    assert await fields_of(store, "k") == {"l": [1, 2, 3, 4], "fresh": ["x"], "n": 5}


async def test_replace_deletes_fields_that_are_left_out(store: Store) -> None:
    await store.apply("k", ops(FieldOp("set", "a", 1), FieldOp("set", "b", 2)))
    result = await store.apply("k", Change(FREE, replace={"b": 3, "c": 4}))
    assert result.status == "committed" and result.version == 2
    assert result.mutation is not None and result.mutation.delete == frozenset({"a"})
    assert await fields_of(store, "k") == {"b": 3, "c": 4}


async def test_append_creates_extends_and_refuses_non_lists(store: Store) -> None:
    stored = {"s": "text", "f": 1.5, "i": 3, "d": {"a": 1}, "b": True, "nul": None, "l": []}
    await store.apply("k", ops(*(FieldOp("set", k, v) for k, v in stored.items())))
    for name, found in [("s", "str"), ("f", "float"), ("i", "int"), ("d", "dict"), ("b", "bool")]:
        with pytest.raises(StateValidationError) as info:
            await store.apply("k", ops(FieldOp("push", "l", 0), FieldOp("push", name, 1)))
        assert info.value.errors[0]["type"] == "push_target"
        assert info.value.errors[0]["loc"][0] == name
        assert f"found {found}" in str(info.value)
    record = await store.read("k")
    assert record is not None and record.version == 1 and dict(record.fields) == stored
    for name in ("nul", "l", "new", "l"):
        result = await store.apply("k", ops(FieldOp("push", name, {"x": [name]})))
        assert result.status == "committed"
    assert (
        await store.apply("k", ops(FieldOp("push", "l", 2), FieldOp("push", "l", 3)))
    ).version == 6
    got = await fields_of(store, "k")
    assert got is not None
    assert got["nul"] == [{"x": ["nul"]}] and got["new"] == [{"x": ["new"]}]
    assert got["l"] == [{"x": ["l"]}, {"x": ["l"]}, 2, 3]


async def test_append_to_a_typed_list_uses_its_default(store: Store) -> None:
    class Log(BaseModel):
        log: list[int] = [1, 2]

    schema = Schema(Log)
    await store.apply("k", ops(FieldOp("push", "log", 3), schema=schema))
    await store.apply("k", ops(FieldOp("push", "log", "4"), schema=schema))
    assert await fields_of(store, "k") == {"log": [1, 2, 3, 4]}
    with pytest.raises(StateValidationError):
        await store.apply("k", ops(FieldOp("push", "log", "x"), schema=schema))
    assert await fields_of(store, "k") == {"log": [1, 2, 3, 4]}


async def test_record_ops_on_a_dict_field(store: Store) -> None:
    await store.apply("k", ops(FieldOp("record_set", "d", 1, key="x")))
    await store.apply("k", ops(FieldOp("record_set", "d", 2, key="y")))
    await store.apply("k", ops(FieldOp("record_delete", "d", key="x")))
    assert await fields_of(store, "k") == {"d": {"y": 2}}
    noop = await store.apply("k", ops(FieldOp("record_delete", "d", key="absent")))
    assert (noop.status, noop.version) == ("noop", 3)


async def test_noop_keeps_the_version_and_touch_marks_access(store: Store) -> None:
    await store.apply("k", put("a", 1))
    before = await store.read("k")
    result = await store.apply("k", put("a", 1))
    assert (result.status, result.version, result.mutation) == ("noop", 1, None)
    after = await store.read("k")
    assert before is not None and after is not None
    assert after.version == 1 and after.accessed_at == before.accessed_at
    again = await store.apply("k", put("a", 1))
    assert again.status == "noop"
    await store.touch("k")
    last = await store.read("k")
    assert last is not None and last.version == 1 and last.accessed_at > before.accessed_at


async def test_noop_on_a_missing_record_creates_nothing(store: Store) -> None:
    result = await store.apply("k", Change(FREE, replace={}))
    assert (result.status, result.version) == ("noop", 0)
    await store.touch("k")
    assert await store.read("k") is None


async def test_must_exist_on_a_missing_record(store: Store) -> None:
    result = await store.apply("k", inc(must_exist=True))
    assert (result.status, result.version) == ("missing", 0)
    assert await store.read("k") is None
    await store.apply("k", inc())
    again = await store.apply("k", inc(must_exist=True))
    assert (again.status, again.version) == ("committed", 2)


async def test_expected_version_mismatch_is_a_conflict_and_writes_nothing(store: Store) -> None:
    absent = await store.apply("k", inc(expected_version=3))
    assert (absent.status, absent.version) == ("conflict", 0)
    assert await store.read("k") is None
    created = await store.apply("k", inc(expected_version=0))
    assert (created.status, created.version) == ("committed", 1)
    stale = await store.apply("k", inc(amount=5, expected_version=0))
    assert (stale.status, stale.version, stale.mutation) == ("conflict", 1, None)
    record = await store.read("k")
    assert record is not None and record.version == 1 and dict(record.fields) == {"n": 1}
    ok = await store.apply("k", inc(amount=5, expected_version=1))
    assert (ok.status, ok.version) == ("committed", 2)
    assert await fields_of(store, "k") == {"n": 6}


async def test_must_exist_is_checked_before_expected_version(store: Store) -> None:
    result = await store.apply("k", inc(must_exist=True, expected_version=7))
    assert result.status == "missing"


@pytest.mark.parametrize("schema", [FREE, TYPED], ids=["free", "typed"])
async def test_an_error_in_resolve_propagates_and_nothing_is_written(
    store: Store, schema: Schema
) -> None:
    await store.apply("k", ops(FieldOp("set", "name", "x"), FieldOp("set", "n", 1), schema=schema))
    before = await store.read("k")
    with pytest.raises(StateValidationError):
        await store.apply(
            "k", ops(FieldOp("inc", "n", 1), FieldOp("inc", "name", 1), schema=schema)
        )
    with pytest.raises(StateValidationError):
        await store.apply("k", ops(FieldOp("push", "name", 1), schema=schema))
    after = await store.read("k")
    assert before is not None and after is not None
    assert after.version == before.version == 1
    assert dict(after.fields) == {"name": "x", "n": 1}
    assert after.accessed_at == before.accessed_at
    # the store still works, and the failed change left no trace in any cache
    ok = await store.apply("k", inc(schema=schema))
    assert (ok.status, ok.version) == ("committed", 2)
    assert await fields_of(store, "k") == {"name": "x", "n": 2}


async def test_an_error_in_resolve_on_a_missing_record_creates_nothing(store: Store) -> None:
    with pytest.raises(StateValidationError):
        await store.apply("k", ops(FieldOp("set", "n", "not an int"), schema=TYPED))
    with pytest.raises(StateValidationError):
        await store.apply("k", ops(FieldOp("set", "unknown", 1), schema=TYPED))
    assert await store.read("k") is None


async def test_content_is_written_and_left_unchanged(store: Store) -> None:
    result = await store.apply("k", Change(FREE, content="hello"))
    assert (result.status, result.version) == ("committed", 1)
    assert result.mutation is not None and result.mutation.content == "hello"
    record = await store.read("k")
    assert record is not None and record.content == "hello" and dict(record.fields) == {}
    same = await store.apply("k", Change(FREE, content="hello"))
    assert (same.status, same.version) == ("noop", 1)
    fields_only = await store.apply("k", inc())
    assert fields_only.mutation is not None and fields_only.mutation.content is UNCHANGED
    record = await store.read("k")
    assert record is not None and record.content == "hello" and record.version == 2
    both = await store.apply("k", Change(FREE, ops=(FieldOp("inc", "n", 1),), content="bye 😀"))
    assert (both.status, both.version) == ("committed", 3)
    cleared = await store.apply("k", Change(FREE, content=None))
    assert cleared.status == "committed"
    record = await store.read("k")
    assert record is not None and record.content is None and dict(record.fields) == {"n": 2}


async def test_a_big_field_and_big_content(store: Store) -> None:
    text = "x" * 200_000
    await store.apply(
        "k", Change(FREE, ops=(FieldOp("set", "big", list(range(20_000))),), content=text)
    )
    record = await store.read("k")
    assert record is not None and record.content == text
    assert record.fields["big"] == list(range(20_000))


# ------------------------------------------------------------------------------- delete


async def test_delete_returns_the_old_record_and_is_idempotent(store: Store) -> None:
    await store.apply(
        "k", Change(FREE, ops=(FieldOp("set", "a", 1), FieldOp("set", "b", [1])), content="c")
    )
    await store.apply("k", inc("a"))
    old = await store.delete("k")
    assert old is not None
    assert (old.key, old.version, dict(old.fields), old.content) == (
        "k",
        2,
        {"a": 2, "b": [1]},
        "c",
    )
    assert old.created_at > 0
    assert await store.read("k") is None
    assert await store.delete("k") is None
    assert await store.delete("never") is None


async def test_a_deleted_record_comes_back_fresh(store: Store) -> None:
    await store.apply("k", ops(FieldOp("set", "n", 5), FieldOp("set", "old", True)))
    await store.apply("k", inc())
    await store.delete("k")
    result = await store.apply("k", inc())
    assert (result.status, result.version) == ("committed", 1)
    assert await fields_of(store, "k") == {"n": 1}
    await store.apply("k", inc())
    assert await fields_of(store, "k") == {"n": 2}


async def test_delete_prefix(store: Store) -> None:
    for key in ("a/1", "a/2", "a/b/3", "ab/4", "b", "a"):
        await store.apply(key, put("v", key))
    assert await store.delete_prefix("a/") == 3
    assert await store.scan("") == ["a", "ab/4", "b"]
    assert await store.delete_prefix("a/") == 0
    assert await store.delete_prefix("zzz") == 0
    again = await store.apply("a/1", put("w", 1))
    assert (again.status, again.version) == ("committed", 1)
    assert await fields_of(store, "a/1") == {"w": 1}


# ---------------------------------------------------------------------------- scan/count

SCAN_KEYS = [
    "a/b", "a/b/c", "a/b/d", "a/bc", "a/bé", "a/b\ufffd", "a/b😀", "a/c", "a", "b", "ä/x",
]  # fmt: skip


async def _fill(store: Store, keys: list[str]) -> None:
    for key in keys:
        await store.apply(key, put("k", key))


async def test_scan_is_sorted_by_code_point_and_matches_only_the_prefix(store: Store) -> None:
    await _fill(store, SCAN_KEYS)
    assert await store.scan("") == sorted(SCAN_KEYS)
    assert await store.scan("a/b") == sorted(k for k in SCAN_KEYS if k.startswith("a/b"))
    assert await store.scan("a/b/") == ["a/b/c", "a/b/d"]
    assert await store.scan("a/bc") == ["a/bc"]
    assert await store.scan("a/b😀") == ["a/b😀"]
    assert await store.scan("ä") == ["ä/x"]
    assert await store.scan("a/x") == []
    assert await store.scan("c") == []


async def test_scan_after_and_limit(store: Store) -> None:
    await _fill(store, SCAN_KEYS)
    under = sorted(k for k in SCAN_KEYS if k.startswith("a/"))
    assert await store.scan("a/", after="a/b/c") == under[under.index("a/b/c") + 1 :]
    assert await store.scan("a/", after="a/b/ca") == under[under.index("a/b/d") :]
    assert await store.scan("a/", after="") == under
    assert await store.scan("a/", after="a/zzz") == []
    assert await store.scan("a/", limit=2) == under[:2]
    assert await store.scan("a/", after="a/b", limit=3) == under[1:4]
    assert await store.scan("a/", limit=0) == []
    pages: list[str] = []
    after: str | None = None
    while page := await store.scan("a/", after=after, limit=3):
        pages.extend(page)
        after = page[-1]
    assert pages == under


async def test_count(store: Store) -> None:
    assert await store.count("") == 0
    await _fill(store, SCAN_KEYS)
    assert await store.count("") == len(SCAN_KEYS)
    assert await store.count("a/b") == 7
    assert await store.count("a/b/") == 2
    assert await store.count("a/b😀") == 1
    assert await store.count("nope") == 0


# --------------------------------------------------------------------------------- create


async def test_create_then_exists_then_replace(store: Store) -> None:
    created = await store.create("k", {"a": 1, "b": [2]}, "text")
    assert (created.status, created.version, created.evicted, created.previous) == (
        "created", 1, (), None,
    )  # fmt: skip
    record = await store.read("k")
    assert record is not None and dict(record.fields) == {"a": 1, "b": [2]}
    assert record.content == "text" and record.version == 1
    exists = await store.create("k", {"z": 0})
    assert (exists.status, exists.version) == ("exists", 1)
    assert await fields_of(store, "k") == {"a": 1, "b": [2]}
    replaced = await store.create("k", {"b": 3, "c": 4}, None, replace=True)
    assert (replaced.status, replaced.version) == ("replaced", 2)
    assert replaced.previous is not None
    assert dict(replaced.previous.fields) == {"a": 1, "b": [2]}
    assert replaced.previous.content == "text" and replaced.previous.version == 1
    record = await store.read("k")
    assert record is not None and dict(record.fields) == {"b": 3, "c": 4}
    assert record.content is None and record.version == 2
    assert (await store.apply("k", inc("c"))).version == 3
    assert await fields_of(store, "k") == {"b": 3, "c": 5}


async def test_create_with_replace_of_a_missing_key_creates(store: Store) -> None:
    created = await store.create("k", {}, replace=True)
    assert (created.status, created.version) == ("created", 1)
    record = await store.read("k")
    assert record is not None and record.version == 1 and dict(record.fields) == {}


async def test_cap_none_reports_full_and_writes_nothing(store: Store) -> None:
    cap = Cap("c/", 2, "none")
    for key in ("c/a", "c/b"):
        assert (await store.create(key, {"k": key}, cap=cap)).status == "created"
    await store.create("d/x", {}, cap=cap)  # outside the prefix: not counted
    full = await store.create("c/c", {"k": 1}, cap=cap)
    assert (full.status, full.evicted) == ("full", ())
    assert await store.read("c/c") is None
    assert await store.scan("c/") == ["c/a", "c/b"]
    assert (await store.create("c/a", {}, cap=cap)).status == "exists"
    replaced = await store.create("c/a", {"new": 1}, cap=cap, replace=True)
    assert (replaced.status, replaced.evicted) == ("replaced", ())
    assert await store.count("c/") == 2
    await store.delete("c/b")
    assert (await store.create("c/c", {}, cap=cap)).status == "created"


async def test_cap_lru_evicts_the_least_recently_accessed(store: Store) -> None:
    cap = Cap("c/", 3, "lru")
    for key in ("c/a", "c/b", "c/c"):
        await store.create(key, {}, cap=cap)
    await store.read("c/a")  # a read is not an access
    await store.touch("c/a")
    await store.touch("c/missing")  # ignored
    first = await store.create("c/d", {}, cap=cap)
    assert (first.status, first.evicted) == ("created", ("c/b",))
    await store.apply("c/c", inc())  # a write counts as an access
    second = await store.create("c/e", {}, cap=cap)
    assert second.evicted == ("c/a",)
    await store.apply("c/d", inc())
    await store.apply("c/e", put("n", 0))
    assert (await store.apply("c/e", put("n", 0))).status == "noop"
    await store.touch("c/e")  # an access without a change
    third = await store.create("c/f", {}, cap=cap)
    assert third.evicted == ("c/c",)
    assert await store.scan("c/") == ["c/d", "c/e", "c/f"]
    assert await store.read("c/c") is None


async def test_cap_oldest_evicts_the_first_created(store: Store) -> None:
    cap = Cap("c/", 2, "oldest")
    await store.create("c/a", {}, cap=cap)
    await store.create("c/b", {}, cap=cap)
    await store.touch("c/a")
    await store.apply("c/a", inc())
    first = await store.create("c/c", {}, cap=cap)
    assert first.evicted == ("c/a",)
    await store.create("c/b", {"x": 1}, replace=True, cap=cap)  # replacing keeps its age
    second = await store.create("c/d", {}, cap=cap)
    assert second.evicted == ("c/b",)
    assert await store.scan("c/") == ["c/c", "c/d"]


async def test_cap_over_the_limit_evicts_down_to_it(store: Store) -> None:
    for i in range(5):
        await store.create(f"c/{i}", {})
    result = await store.create("c/new", {}, cap=Cap("c/", 3, "oldest"))
    assert result.evicted == ("c/0", "c/1", "c/2")
    assert await store.count("c/") == 3


@pytest.mark.parametrize("eviction", ["none", "lru", "oldest"])
async def test_the_cap_holds_under_concurrent_creates(
    store: Store, eviction: Literal["none", "lru", "oldest"]
) -> None:
    cap = Cap("c/", 5, eviction)
    keys = [f"c/{i:02}" for i in range(20)]
    results = await asyncio.gather(*(store.create(key, {"k": key}, cap=cap) for key in keys))
    assert await store.count("c/") == 5
    survivors = await store.scan("c/")
    created = [k for k, r in zip(keys, results, strict=True) if r.status == "created"]
    evicted = [k for r in results for k in r.evicted]
    if eviction == "none":
        assert sorted(r.status for r in results) == ["created"] * 5 + ["full"] * 15
        assert sorted(created) == survivors and evicted == []
    else:
        assert len(created) == 20
        assert len(evicted) == len(set(evicted)) == 15
        assert sorted(evicted + survivors) == keys
    for key in survivors:
        assert await fields_of(store, key) == {"k": key}


# ---------------------------------------------------------------------------- concurrency


async def test_no_lost_writes_under_concurrent_inc_and_append(store: Store) -> None:
    changes = [inc() for _ in range(50)]
    changes += [ops(FieldOp("push", "items", i)) for i in range(50)]
    results = await asyncio.gather(*(store.apply("k", c) for c in changes))
    assert all(r.status == "committed" for r in results)
    assert sorted(r.version for r in results) == list(range(1, 101))
    record = await store.read("k")
    assert record is not None and record.version == 100
    assert record.fields["n"] == 50
    assert sorted(record.fields["items"]) == list(range(50))


async def test_compare_and_swap_retry_loop_from_eight_tasks(store: Store) -> None:
    rounds = 5
    conflicts = 0

    async def worker() -> None:
        nonlocal conflicts
        for _ in range(rounds):
            while True:
                record = await store.read("k")
                version = 0 if record is None else record.version
                current = 0 if record is None else record.fields["n"]
                result = await store.apply("k", put("n", current + 1, expected_version=version))
                if result.status == "committed":
                    break
                assert result.status == "conflict"
                conflicts += 1
                await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(8)))
    record = await store.read("k")
    assert record is not None and record.fields == {"n": 8 * rounds}
    assert record.version == 8 * rounds


# ---------------------------------------------------------------------- record size limit

LIMIT = 1000


def size_of(record: Record | None) -> int:
    """A record's stored size as the limit counts it (docs/security.md)."""
    assert record is not None
    texts = {
        n: json.dumps(v, separators=(",", ":"), ensure_ascii=False)
        for n, v in record.fields.items()
    }
    fields = sum(len(name.encode()) + len(text.encode()) for name, text in texts.items())
    return fields + len((record.content or "").encode())


def over_limit(key: str) -> str:
    return (
        f'record "{key}" would be larger than the limit of 1,000 bytes (max_record_bytes); '
        "nothing was written"
    )


def push(*items: Any) -> Change:
    return ops(*(FieldOp("push", "log", item) for item in items))


async def test_a_push_over_the_record_limit_fails_and_leaves_the_list_as_it_was(
    store: Store,
) -> None:
    store.max_record_bytes = LIMIT
    item = "x" * 96  # 98 bytes of JSON
    await store.apply("k", push(item))  # onto an absent field: "log" + [..] = 3 + 100
    for _ in range(9):  # onto a non-empty list: each adds its bytes and a comma
        await store.apply("k", push(item))
    record = await store.read("k")
    assert size_of(record) == 3 + 2 + 10 * 98 + 9 == 994
    await store.apply("k", push("abc"))  # 5 bytes + a comma: exactly the limit is allowed
    full = await store.read("k")
    assert full is not None and size_of(full) == LIMIT
    for change in (push(0), push("", ""), inc("n", 1), put("log", [*full.fields["log"], 1])):
        with pytest.raises(StateValidationError) as exc:
            await store.apply("k", change)
        assert str(exc.value) == over_limit("k")
        rule = "the record would be larger than the limit of 1,000 bytes (max_record_bytes)"
        assert exc.value.errors == [{"loc": [], "msg": rule, "type": "record_size"}]
        again = await store.read("k")
        assert again is not None and again.version == full.version == 11
        assert again.fields == full.fields and again.fields["log"][-1] == "abc"
    # a no-op at the limit is still a no-op
    assert (await store.apply("k", put("log", full.fields["log"]))).status == "noop"


async def test_pushes_onto_an_empty_list_and_onto_null_count_exactly(store: Store) -> None:
    store.max_record_bytes = LIMIT
    await store.apply("k", ops(FieldOp("set", "log", []), FieldOp("set", "z", None)))
    await store.apply("k", push("a", "b"))  # two items in one write
    await store.apply("k", ops(FieldOp("push", "z", 1)))  # null becomes [1]
    record = await store.read("k")
    assert record is not None and dict(record.fields) == {"log": ["a", "b"], "z": [1]}
    assert size_of(record) == 3 + len('["a","b"]') + 1 + len("[1]")
    big = "x" * (LIMIT - size_of(record) - 3)  # with its quotes and comma: exactly the limit
    await store.apply("k", push(big))
    assert size_of(await store.read("k")) == LIMIT
    with pytest.raises(StateValidationError, match="max_record_bytes"):
        await store.apply("k", ops(FieldOp("push", "z", 2)))


async def test_replacing_a_big_field_with_a_small_one_frees_the_room(store: Store) -> None:
    store.max_record_bytes = LIMIT
    await store.apply("k", put("big", "x" * 900))  # 3 + 902
    await store.apply("k", push("y"))  # 3 + 5
    with pytest.raises(StateValidationError) as exc:
        await store.apply("k", put("other", "y" * 100))  # 5 + 102: 1,020
    assert str(exc.value) == over_limit("k")
    assert await fields_of(store, "k") == {"big": "x" * 900, "log": ["y"]}
    await store.apply("k", put("big", ""))
    await store.apply("k", put("other", "y" * 100))
    await store.apply("k", push("z" * 700))
    assert size_of(await store.read("k")) == 3 + 2 + 3 + len('["y",""]') + 700 + 5 + 102
    # a whole-state replace that drops the big fields makes room again
    with pytest.raises(StateValidationError, match="max_record_bytes"):
        await store.apply("k", put("more", "m" * 200))
    await store.apply("k", Change(FREE, replace={"more": "m" * 200}))
    assert await fields_of(store, "k") == {"more": "m" * 200}
    assert size_of(await store.read("k")) == 4 + 202


async def test_content_counts_toward_the_record_limit(store: Store) -> None:
    store.max_record_bytes = LIMIT
    await store.apply("k", put("a", 1))  # 2 bytes
    with pytest.raises(StateValidationError) as exc:
        await store.apply("k", Change(FREE, content="é" * 500))  # 1,000 bytes of UTF-8
    assert str(exc.value) == over_limit("k")
    record = await store.read("k")
    assert record is not None and record.content is None and record.version == 1
    await store.apply("k", Change(FREE, content="é" * 499))
    assert size_of(await store.read("k")) == 2 + 998
    await store.apply("k", Change(FREE, content=None))
    await store.apply("k", put("b", "b" * 990))
    assert size_of(await store.read("k")) == 2 + 1 + 992


async def test_a_create_over_the_record_limit_fails_and_writes_nothing(store: Store) -> None:
    store.max_record_bytes = LIMIT
    with pytest.raises(StateValidationError) as exc:
        await store.create("c/a", {"a": "x" * 998})  # 1 + 1,000
    assert str(exc.value) == over_limit("c/a")
    assert await store.read("c/a") is None and await store.count("c/") == 0
    with pytest.raises(StateValidationError, match=r'"c/b" would be larger'):
        await store.create("c/b", {"a": 1}, content="x" * 999)
    assert await store.read("c/b") is None
    created = await store.create("c/a", {"a": "x" * 997})  # exactly the limit
    assert created.status == "created" and size_of(await store.read("c/a")) == LIMIT
    with pytest.raises(StateValidationError, match=r'"c/a" would be larger'):
        await store.create("c/a", {"a": "y" * 998}, replace=True)
    assert await fields_of(store, "c/a") == {"a": "x" * 997}
    # the record written by create is accounted like any other: a push finds it full
    with pytest.raises(StateValidationError, match=r'"c/a" would be larger'):
        await store.apply("c/a", push(1))
    # a cap does not evict anything for a create that does not fit
    cap = Cap("c/", 1, "oldest")
    with pytest.raises(StateValidationError, match=r'"c/z" would be larger'):
        await store.create("c/z", {"a": "x" * 2000}, cap=cap)
    assert await store.scan("c/") == ["c/a"]


async def test_the_record_limit_holds_under_concurrent_pushes(store: Store) -> None:
    store.max_record_bytes = LIMIT
    await store.apply("k", put("log", []))  # 5 bytes; each 98-byte push adds 99 (the first 98)
    results = await asyncio.gather(
        *(store.apply("k", push("x" * 96)) for _ in range(20)), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 10
    assert all(str(e) == over_limit("k") for e in failed)
    record = await store.read("k")
    assert record is not None and len(record.fields["log"]) == 10 and record.version == 11
    assert size_of(record) == 5 + 10 * 98 + 9


async def test_the_default_record_limit_is_16_mib(store_url: str) -> None:
    store = open_store(store_url)
    try:
        assert store.max_record_bytes == 16 * 1024 * 1024
    finally:
        await store.aclose()
    small = open_store(store_url, max_record_bytes=10)
    try:
        assert small.max_record_bytes == 10
        with pytest.raises(StateValidationError, match="limit of 10 bytes"):
            await small.apply("limit-test", put("abc", "defghi"))  # 3 + 8
        assert await small.read("limit-test") is None
    finally:
        await small.aclose()


# --------------------------------------------------------------------------------- events


async def test_publish_reaches_every_subscriber_of_the_topic(store: Store) -> None:
    await store.publish("nobody", {"x": 0})  # no subscriber: fine
    big = {"blob": "y" * 20_000}
    async with store.subscribe("t") as q1, store.subscribe("t") as q2, store.subscribe("u") as q3:
        await store.publish("t", {"x": 1})
        await store.publish("t", big)
        await store.publish("u", [1, "two"])
        for queue in (q1, q2):
            assert await asyncio.wait_for(queue.get(), 5) == {"x": 1}
            assert await asyncio.wait_for(queue.get(), 5) == big
        assert await asyncio.wait_for(q3.get(), 5) == [1, "two"]
        await asyncio.sleep(0.05)
        assert q1.empty() and q2.empty() and q3.empty()
    await store.publish("t", {"x": 2})  # after unsubscribing: nobody, no error


# ------------------------------------------------------------------ SQLite across processes

PROCESS_INCS = 100


def _sqlite_worker(path: str, who: str) -> None:
    async def main() -> None:
        store = SQLiteStore(path)
        try:
            changes = [ops(FieldOp("inc", "n", 1), FieldOp("push", "log", who))]
            await asyncio.gather(*(store.apply("shared", changes[0]) for _ in range(PROCESS_INCS)))
        finally:
            await store.aclose()

    asyncio.run(main())


def test_sqlite_no_lost_writes_across_two_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_sqlite_worker, args=(path, who)) for who in ("p1", "p2")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0

    async def check() -> None:
        store = open_store(f"sqlite:///{path}")
        try:
            record = await store.read("shared")
        finally:
            await store.aclose()
        assert record is not None
        assert record.fields["n"] == 2 * PROCESS_INCS
        assert record.version == 2 * PROCESS_INCS
        assert sorted(record.fields["log"]) == ["p1"] * PROCESS_INCS + ["p2"] * PROCESS_INCS

    asyncio.run(check())


# ------------------------------------------------------------------ bulk records (maintenance)


async def test_export_records_returns_whole_records_in_key_order(store: Store) -> None:
    await store.apply("a/3", ops(FieldOp("set", "v", 1)))
    await store.apply("a/1", ops(FieldOp("set", "n", 1), FieldOp("set", "s", "é")))
    await store.apply("a/1", inc())
    await store.apply("a/2", ops(FieldOp("set", "f", 1.5), content="text"))
    await store.create("b/1", {"x": [1, {"y": None}]}, "c")
    await store.create("a", {"outside": True})
    records = await store.export_records("a/")
    assert [r.key for r in records] == ["a/1", "a/2", "a/3"]
    one = records[0]
    assert (one.version, dict(one.fields), one.content) == (2, {"n": 2, "s": "é"}, None)
    assert one == await store.read("a/1")
    assert records[1].content == "text" and dict(records[1].fields) == {"f": 1.5}
    assert [r.key for r in await store.export_records("a/", after="a/1", limit=1)] == ["a/2"]
    assert await store.export_records("a/", after="a/3") == []
    assert [r.key for r in await store.export_records()] == ["a", "a/1", "a/2", "a/3", "b/1"]
    assert await store.export_records("zz/") == []


async def test_import_records_writes_them_exactly_and_replaces(store: Store) -> None:
    from flowstate.stores import Record

    await store.apply("k/old", ops(FieldOp("set", "stale", 1), FieldOp("set", "keep", 0)))
    records = [
        Record("k/old", 7, {"keep": 1, "new": [1, 2]}, "body", 1_000, 2_000),
        Record("k/new", 3, {"big": 2**62, "u": "\U0001f600", "nul": "a\x00b"}, None, 5, 6),
        Record("k/empty", 1, {}, None, 10, 10),
    ]
    assert await store.import_records(records) == 3
    for record in records:
        assert await store.read(record.key) == record
    assert [r.key for r in await store.export_records("k/")] == ["k/empty", "k/new", "k/old"]
    # the store keeps working on imported records: versions continue from what was imported
    applied = await store.apply("k/old", inc("n"))
    assert applied.status == "committed" and applied.version == 8
    conflict = await store.apply("k/new", inc(expected_version=2))
    assert conflict.status == "conflict" and conflict.version == 3
    assert await store.import_records([]) == 0


async def test_delete_keys_deletes_whole_records(store: Store) -> None:
    for key in ("d/1", "d/2", "d/3"):
        await store.apply(key, ops(FieldOp("set", "n", 1), FieldOp("set", "m", 2)))
    assert await store.delete_keys(["d/1", "d/3", "d/missing", "d/1"]) == 2
    assert await store.read("d/1") is None and await store.read("d/3") is None
    assert await store.scan("d/") == ["d/2"]
    created = await store.create("d/1", {"fresh": True})
    assert created.status == "created"
    assert (await store.read("d/1")) is not None
    assert dict((await store.read("d/1")).fields) == {"fresh": True}  # type: ignore[union-attr]


async def test_delete_prefixes_deletes_every_range(store: Store) -> None:
    for key in ("p/a/1", "p/a/2", "p/ab/1", "p/b/1", "p/c/1", "q/a/1"):
        await store.apply(key, ops(FieldOp("set", "n", 1)))
    assert await store.delete_prefixes(["p/a/", "p/c/", "p/none/", "p/a/"]) == 3
    assert await store.scan("") == ["p/ab/1", "p/b/1", "q/a/1"]
    assert await store.delete_prefixes([]) == 0
    await store.apply("p/a/1", ops(FieldOp("set", "m", 2)))
    assert dict((await store.read("p/a/1")).fields) == {"m": 2}  # type: ignore[union-attr]


async def test_swap_records_replaces_only_records_at_their_expected_version(store: Store) -> None:
    from flowstate.stores import Record

    await store.apply("s/a", ops(FieldOp("set", "old", 1), FieldOp("set", "gone", 2)))
    await store.apply("s/b", ops(FieldOp("set", "old", 1)))
    await store.apply("s/b", inc("n"))  # s/b moved on to version 2
    a = await store.read("s/a")
    assert a is not None
    swaps = [
        Record("s/a", 2, {"new": [1]}, "text", a.created_at, 123),
        Record("s/b", 2, {"new": [2]}, None, 1, 1),
        Record("s/missing", 2, {"new": [3]}, None, 1, 1),
    ]
    assert await store.swap_records(swaps, [1, 1, 1]) == ["s/a"]
    assert await store.read("s/a") == swaps[0]
    b = await store.read("s/b")
    assert b is not None and b.version == 2 and dict(b.fields) == {"old": 1, "n": 1}
    assert await store.read("s/missing") is None
    after = await store.apply("s/a", inc("n"))
    assert after.status == "committed" and after.version == 3
    assert await store.swap_records([], []) == []


async def test_delete_records_deletes_only_records_unchanged_since_read(store: Store) -> None:
    from flowstate.stores import Record

    await store.apply("x/1", ops(FieldOp("set", "a", 1), FieldOp("set", "b", [1])))
    await store.apply("x/2", ops(FieldOp("set", "a", 2)))
    await store.apply("x/3", ops(FieldOp("set", "l", [0])))
    for i in range(1, 4):  # pushes not folded yet (SQLite: rows of their own)
        await store.apply("x/3", ops(FieldOp("push", "l", i)))
    await store.apply("x/4", ops(FieldOp("set", "a", 4)))
    await store.apply("y/1", ops(FieldOp("set", "a", 1)))
    read = {r.key: r for r in await store.export_records("")}
    await store.apply("x/2", inc("n"))  # x/2 moves on to version 2
    # x/4 is deleted and created again: version 1 again, but not the record read
    await store.delete("x/4")
    await asyncio.sleep(0.002)
    await store.apply("x/4", ops(FieldOp("set", "a", "new")))
    assert (await store.read("x/4")).version == 1  # type: ignore[union-attr]
    missing = Record("x/missing", 1, {}, None, 1, 1)
    stale_y = Record("y/1", 2, {}, None, read["y/1"].created_at, 0)

    keys = ["x/3", "x/1", "x/2", "x/4", "x/1"]
    deleted = await store.delete_records([*(read[k] for k in keys), missing, stale_y])
    assert deleted == ["x/1", "x/3"]
    assert await store.scan("") == ["x/2", "x/4", "y/1"]
    assert await fields_of(store, "x/2") == {"a": 2, "n": 1}
    assert await fields_of(store, "x/4") == {"a": "new"}
    assert await fields_of(store, "y/1") == {"a": 1}
    # a deleted record is gone whole: created again, no field or pushed item reappears
    assert (await store.create("x/1", {"fresh": True})).version == 1
    assert await fields_of(store, "x/1") == {"fresh": True}
    await store.apply("x/3", ops(FieldOp("push", "l", "z")))
    assert await fields_of(store, "x/3") == {"l": ["z"]}
    # the same for swap_records: the record created again is not swapped
    x4 = Record("x/4", 2, {"swapped": True}, None, read["x/4"].created_at, 0)
    assert await store.swap_records([x4], [1]) == []
    assert await fields_of(store, "x/4") == {"a": "new"}
    # a key given twice is deleted when either matches; nothing given, nothing done
    x2 = await store.read("x/2")
    assert x2 is not None
    assert await store.delete_records([read["x/2"], x2]) == ["x/2"]
    assert await store.delete_records([]) == []

    # Another connection to the same store (another process): the delete is seen there, and
    # what it cached of the record does not come back.
    if not store.url.startswith("memory"):
        other = open_store(store.url)
        try:
            await other.apply("c/1", inc("n"))
            assert await fields_of(other, "c/1") == {"n": 1}
            c1 = await store.read("c/1")
            assert c1 is not None
            assert await store.delete_records([c1]) == ["c/1"]
            assert await other.read("c/1") is None
            applied = await other.apply("c/1", inc("n"))
            assert applied.status == "committed" and applied.version == 1
            assert await fields_of(store, "c/1") == {"n": 1}
        finally:
            await other.aclose()


async def test_a_guard_on_a_record_deleted_by_delete_records_fails(store: Store) -> None:
    """What ``flowstate gc`` relies on: once a binding is deleted (or swapped) in bulk, a
    write guarded by it fails and writes nothing."""
    from flowstate.stores import Record
    from flowstate.stores.base import Guard

    def gone() -> Exception:
        return LookupError("binding gone")

    await store.create("b/s1", {"createdAt": 1.5})
    await store.create("b/s2", {"createdAt": 2.5})
    guard1 = Guard("b/s1", "createdAt", 1.5, gone)
    guard2 = Guard("b/s2", "createdAt", 2.5, gone)
    assert (await store.apply("d/s1", inc(), guard=guard1)).status == "committed"
    tomb = Record("b/s2", 2, {"createdAt": -2.5, "deleted": True}, None, 1, 1)
    assert await store.swap_records([tomb], [1]) == []  # not the record read: created at 1
    s1, s2 = await store.read("b/s1"), await store.read("b/s2")
    assert s1 is not None and s2 is not None
    tomb = Record("b/s2", 2, {"createdAt": -2.5, "deleted": True}, None, s2.created_at, 1)
    assert await store.swap_records([tomb], [1]) == ["b/s2"]
    assert await store.delete_records([s1]) == ["b/s1"]
    for key, guard in (("d/s1", guard1), ("d/s2", guard2)):
        with pytest.raises(LookupError, match="binding gone"):
            await store.apply(key, inc(), guard=guard)
        with pytest.raises(LookupError, match="binding gone"):
            await store.create(key + "/new", {"n": 1}, guard=guard)
    assert await fields_of(store, "d/s1") == {"n": 1}
    assert await store.read("d/s2") is None and await store.scan("d/s1/") == []
    assert await store.scan("d/s2") == []


async def test_bulk_operations_see_and_clear_pushed_items(store: Store) -> None:
    """Pushed items not yet folded into their array (SQLite keeps them as rows of their own)
    are part of the record for export (and so copy), and go with it on import, swap, deletes."""
    from flowstate.stores import Record

    for key in ("b/1", "b/2", "c/1", "d/1"):
        await store.apply(key, ops(FieldOp("set", "l", [0])))
        for i in range(1, 6):
            await store.apply(key, ops(FieldOp("push", "l", i)))
    exported = await store.export_records("b/")
    assert [r.fields["l"] for r in exported] == [[0, 1, 2, 3, 4, 5]] * 2
    assert exported == [await store.read("b/1"), await store.read("b/2")]
    assert [r.fields["l"] for r in await store.export_records("", after="b/2")] == [
        [0, 1, 2, 3, 4, 5]
    ] * 2

    # import replaces the whole record: no earlier pushed item reappears; pushes go on
    assert await store.import_records([Record("b/1", 9, {"l": [9]}, None, 1, 2)]) == 1
    assert (await store.read("b/1")).fields == {"l": [9]}  # type: ignore[union-attr]
    await store.apply("b/1", ops(FieldOp("push", "l", 10)))
    assert (await store.read("b/1")).fields == {"l": [9, 10]}  # type: ignore[union-attr]

    b2 = await store.read("b/2")
    assert b2 is not None
    version = b2.version
    swapped = Record("b/2", version + 1, {"l": ["s"]}, None, b2.created_at, 2)
    assert await store.swap_records([swapped], [version]) == ["b/2"]
    assert (await store.read("b/2")).fields == {"l": ["s"]}  # type: ignore[union-attr]

    assert await store.delete_keys(["c/1"]) == 1
    assert (await store.create("c/1", {"l": [7]})).status == "created"
    assert (await store.read("c/1")).fields == {"l": [7]}  # type: ignore[union-attr]

    assert await store.delete_prefixes(["d/"]) == 1
    assert (await store.create("d/1", {"l": []})).status == "created"
    await store.apply("d/1", ops(FieldOp("push", "l", "x")))
    assert (await store.read("d/1")).fields == {"l": ["x"]}  # type: ignore[union-attr]
