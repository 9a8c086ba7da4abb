"""Guarded writes (the store contract behind deleted sessions), on every backend."""

from __future__ import annotations

import pytest

from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores import Store
from flowstate.stores.base import Cap, Guard

FREE = Schema(None)


class Gone(Exception):
    pass


def guard(value: object) -> Guard:
    return Guard("bind", "token", value, Gone)


def inc() -> Change:
    return Change(FREE, ops=(FieldOp("inc", "n", 1),))


async def test_writes_commit_only_while_the_guard_holds(store: Store) -> None:
    with pytest.raises(Gone):  # no guard record at all
        await store.apply("k", inc(), guard=guard(1.5))
    assert await store.read("k") is None

    await store.create("bind", {"token": 1.5, "other": "x"})
    assert (await store.apply("k", inc(), guard=guard(1.5))).status == "committed"
    assert (await store.create("c/a", {"a": 1}, guard=guard(1.5))).status == "created"
    capped = Cap("c/", 1, "oldest")
    with pytest.raises(Gone):  # a failed guard evicts nothing either
        await store.create("c/b", {"a": 2}, cap=capped, guard=guard(2.5))
    assert await store.scan("c/") == ["c/a"]

    for wrong in (2.5, "1.5", None, [1.5]):
        with pytest.raises(Gone):
            await store.apply("k", inc(), guard=guard(wrong))
        with pytest.raises(Gone):
            await store.create("c/z", {}, guard=guard(wrong))
        with pytest.raises(Gone):
            await store.delete("c/a", guard=guard(wrong))
    record = await store.read("k")
    assert record is not None and record.version == 1 and record.fields == {"n": 1}
    assert await store.scan("c/") == ["c/a"]

    # The guard record changes (a new incarnation): old-guard writes fail, new ones commit.
    await store.apply("bind", Change(FREE, ops=(FieldOp("set", "token", 9.25),)))
    with pytest.raises(Gone):
        await store.apply("k", inc(), guard=guard(1.5))
    assert (await store.apply("k", inc(), guard=guard(9.25))).status == "committed"
    assert (await store.delete("c/a", guard=guard(9.25))) is not None

    await store.delete("bind")
    with pytest.raises(Gone):
        await store.apply("k", inc(), guard=guard(9.25))
    with pytest.raises(Gone):  # must_exist on a missing record: the guard is reported first
        await store.apply(
            "missing",
            Change(FREE, ops=(FieldOp("set", "a", 1),), must_exist=True),
            guard=guard(9.25),
        )
    record = await store.read("k")
    assert record is not None and record.fields == {"n": 2}
