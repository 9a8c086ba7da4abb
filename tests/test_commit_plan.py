"""The commit protocol every backend runs (``stores.base.plan_commit``) and what a store loads
for it (``Change.load_fields``), without a store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from flowstate.errors import StateValidationError
from flowstate.migrations import SCHEMA_FIELD
from flowstate.ops import Change, FieldOp, Mutation
from flowstate.schema import Schema
from flowstate.stores.base import Applied, plan_commit

FREE = Schema(None)


class Model(BaseModel):
    n: int = 0
    log: list[int] = []


TYPED = Schema(Model)


class Loader:
    """A record's stored fields and content that remembers what was asked of it."""

    def __init__(self, fields: Mapping[str, Any], content: str | None = None) -> None:
        self.fields = dict(fields)
        self.content = content
        self.asked: list[frozenset[str] | None] = []

    def __call__(self, names: frozenset[str] | None) -> tuple[Mapping[str, Any], str | None]:
        self.asked.append(names)
        chosen = (
            self.fields if names is None else {k: self.fields[k] for k in names & set(self.fields)}
        )
        return chosen, self.content


def test_missing_comes_before_everything_and_loads_nothing() -> None:
    load = Loader({})
    change = Change(FREE, ops=(FieldOp("inc", "n", 1),), must_exist=True, expected_version=3)
    assert plan_commit(change, None, load) == Applied("missing", 0)
    assert load.asked == []


def test_a_version_mismatch_is_a_conflict_before_resolving() -> None:
    load = Loader({"n": "not a number"})  # resolving would fail: it must not get that far
    change = Change(FREE, ops=(FieldOp("inc", "n", 1),), expected_version=1)
    assert plan_commit(change, 2, load) == Applied("conflict", 2)
    assert plan_commit(change, None, load) == Applied("conflict", 0)
    assert load.asked == []


def test_resolution_errors_propagate_and_a_same_value_is_a_noop() -> None:
    load = Loader({"n": "text"})
    with pytest.raises(StateValidationError, match="inc_state needs a number field, found str"):
        plan_commit(Change(FREE, ops=(FieldOp("inc", "n", 1),)), 4, load)
    same = Loader({"n": 5})
    assert plan_commit(Change(FREE, ops=(FieldOp("set", "n", 5),)), 4, same) == Applied("noop", 4)


def test_a_new_record_resolves_against_nothing_and_content_only_when_asked() -> None:
    load = Loader({"n": 1}, content="old")
    planned = plan_commit(Change(FREE, ops=(FieldOp("inc", "n", 2),)), None, load)
    assert isinstance(planned, Mutation) and dict(planned.set) == {"n": 2}
    assert load.asked == []
    kept = plan_commit(Change(FREE, content="old"), 1, load)
    assert kept == Applied("noop", 1)  # the same content: nothing to write
    changed = plan_commit(Change(FREE, content="new"), 1, load)
    assert isinstance(changed, Mutation) and changed.content == "new"


def test_load_fields_leaves_out_lists_only_pushed_to() -> None:
    push = Change(TYPED, ops=(FieldOp("push", "log", 1), FieldOp("inc", "n", 1)))
    assert push.needed_fields == frozenset({"log", "n", SCHEMA_FIELD})
    assert push.load_fields == frozenset({"n", SCHEMA_FIELD})
    load = Loader({"n": 1, "log": [0]})
    planned = plan_commit(push, 1, load)
    assert load.asked == [frozenset({"n", SCHEMA_FIELD})]
    assert isinstance(planned, Mutation)
    assert dict(planned.set) == {"n": 2} and dict(planned.push) == {"log": ([], [1])}
    # a list that is also set is loaded; a whole-state replace loads everything
    both = Change(TYPED, ops=(FieldOp("set", "log", []), FieldOp("push", "log", 1)))
    assert both.load_fields == frozenset({"log", SCHEMA_FIELD})
    assert Change(TYPED, replace={"n": 1}).load_fields is None
