"""State snapshots are immutable (SPEC §13): a write through ``.state`` raises, never vanishes.

``ctx.session.state.count += 5`` used to succeed: the run saw 5, the store never did. Every kind
of snapshot (scopes, request, resources, collection instances, ``ctx.self``, targets,
``update_state``'s argument, free-form dicts) refuses assignment with a ``TypeError`` naming the
operation to use, and nested containers refuse mutation too.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from flowstate import (
    FlowServer,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
    sequencer,
)
from flowstate.schema import Schema
from flowstate.snapshot import FrozenDict, FrozenList, FrozenSet, is_snapshot

from .helpers import probe_server, run_body


class Inner(BaseModel):
    x: int = 0


class Counter(BaseModel):
    count: int = 0
    items: list[str] = Field(default_factory=list)
    prefs: dict[str, int] = Field(default_factory=dict)
    tags: set[str] = Field(default_factory=set)
    inner: Inner = Field(default_factory=Inner)
    rows: list[Inner] = Field(default_factory=list)
    blob: Any = None


SEEDED = {
    "count": 2,
    "items": ["a"],
    "prefs": {"a": 1},
    "tags": ["t"],
    "inner": {"x": 1},
    "rows": [{"x": 1}],
    "blob": {"k": [1, {"z": 2}]},
}

Attack = Callable[[Any], Any]


def _aug(state: Any) -> None:
    state.count += 5


# Every way user code could try to change a snapshot of ``Counter``.
ATTACKS: dict[str, Attack] = {
    "augmented assignment": _aug,
    "setattr": lambda s: setattr(s, "count", 9),
    "delattr": lambda s: delattr(s, "count"),
    "replace a list": lambda s: setattr(s, "items", []),
    "list.append": lambda s: s.items.append("b"),
    "list.extend": lambda s: s.items.extend(["b"]),
    "list +=": lambda s: s.items.__iadd__(["b"]),
    "list[0] =": lambda s: s.items.__setitem__(0, "b"),
    "del list[0]": lambda s: s.items.__delitem__(0),
    "list.pop": lambda s: s.items.pop(),
    "list.insert": lambda s: s.items.insert(0, "b"),
    "list.clear": lambda s: s.items.clear(),
    "list.sort": lambda s: s.items.sort(),
    "list.reverse": lambda s: s.items.reverse(),
    "list.remove": lambda s: s.items.remove("a"),
    "dict[k] =": lambda s: s.prefs.__setitem__("a", 5),
    "dict.update": lambda s: s.prefs.update(b=2),
    "dict.setdefault": lambda s: s.prefs.setdefault("b", 2),
    "dict.pop": lambda s: s.prefs.pop("a"),
    "dict.popitem": lambda s: s.prefs.popitem(),
    "dict.clear": lambda s: s.prefs.clear(),
    "del dict[k]": lambda s: s.prefs.__delitem__("a"),
    "dict |=": lambda s: s.prefs.__ior__({"b": 2}),
    "set.add": lambda s: s.tags.add("u"),
    "set.discard": lambda s: s.tags.discard("t"),
    "set |=": lambda s: s.tags.__ior__({"u"}),
    "nested model attr": lambda s: setattr(s.inner, "x", 5),
    "model in a list": lambda s: setattr(s.rows[0], "x", 5),
    "Any field dict": lambda s: s.blob.__setitem__("k", 0),
    "Any field nested list": lambda s: s.blob["k"].append(2),
    "Any field nested dict": lambda s: s.blob["k"][1].__setitem__("z", 3),
}


@pytest.fixture
async def server() -> Any:
    async with probe_server(
        "memory://",
        session_state=Counter,
        user_state=Counter,
        project_state=Counter,
        request_state=Counter,
        session_resources={
            "res": define_resource(Counter),
            "col": define_resource_collection("c/*", Counter),
        },
    ) as srv:
        yield srv


@pytest.mark.parametrize("kind", ["session", "user", "project", "request", "resource", "instance"])
async def test_every_mutation_of_every_snapshot_raises_and_nothing_diverges(
    server: FlowServer, kind: str
) -> None:
    async def body(ctx: Any) -> Any:
        if kind == "resource":
            handle: Any = ctx.session.resources.res
        elif kind == "instance":
            handle = await ctx.session.resources.col.create("a", SEEDED)
        else:
            handle = getattr(ctx, kind)
        if kind != "instance":
            await handle.patch_state(SEEDED)
        before = handle.state.model_dump(mode="json")
        version = handle.version
        for name, attack in ATTACKS.items():
            with pytest.raises(TypeError) as info:
                attack(handle.state)
            message = str(info.value)
            assert "read-only" in message and "patch_state" in message, (name, message)
            # The run's view did not change either: no divergence between run and store.
            assert handle.state.model_dump(mode="json") == before, name
        await handle.refresh()
        assert handle.state.model_dump(mode="json") == before and handle.version == version
        return True

    assert (await run_body(server, body, project_id="p")).output is True


async def test_the_reported_write_loss_now_raises_naming_the_operation(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        with pytest.raises(TypeError, match=r'cannot assign "count".*patch_state.*inc_state'):
            ctx.session.state.count += 5
        await ctx.session.inc_state(count=5)  # the way that works
        return ctx.session.state.count

    assert (await run_body(server, body)).output == 5
    record = await server.store.read("session/s1/state")
    assert record is not None and record.fields["count"] == 5


async def test_snapshots_stay_typed_and_dump_to_plain_independent_values(
    server: FlowServer,
) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.patch_state(SEEDED)
        state = ctx.session.state
        assert type(state) is Counter and type(state.inner) is Inner  # exactly the user's model
        assert state.count == 2 and state.items == ["a"] and state.prefs == {"a": 1}
        assert state == Counter.model_validate(SEEDED)
        dumped = state.model_dump()
        assert type(dumped["items"]) is list and type(dumped["prefs"]) is dict
        dumped["items"].append("mine")  # a dump is the caller's own copy
        assert state.items == ["a"]
        assert json.loads(state.model_dump_json())["blob"] == SEEDED["blob"]
        assert json.loads(json.dumps(state.model_dump()["prefs"])) == {"a": 1}
        # Copies are ordinary models again: change them and hand them back with set_state.
        mine = state.model_copy(update={"count": 10})
        mine.count += 1
        deep = copy.deepcopy(state)
        deep.items.append("b")
        deep.inner.x = 7
        assert pickle.loads(pickle.dumps(state)).count == 2
        await ctx.session.set_state(mine)
        assert ctx.session.state.count == 11 and state.count == 2
        return True

    assert (await run_body(server, body)).output is True
    # Ordinary instances of the same model are untouched by all this.
    plain = Counter()
    plain.count += 1
    plain.items.append("x")
    plain.inner.x = 3
    assert (plain.count, plain.items, plain.inner.x) == (1, ["x"], 3)


async def test_free_form_scope_snapshot_is_a_read_only_dict() -> None:
    async with probe_server("memory://") as server:

        async def body(ctx: Any) -> Any:
            await ctx.session.patch_state(a=1, nested={"l": [1]})
            state = ctx.session.state
            assert isinstance(state, dict) and state == {"a": 1, "nested": {"l": [1]}}
            for attack in (
                lambda: state.__setitem__("a", 2),
                lambda: state.update(a=2),
                lambda: state["nested"].__setitem__("l", []),
                lambda: state["nested"]["l"].append(2),
            ):
                with pytest.raises(TypeError, match="read-only"):
                    attack()
            await ctx.session.refresh()
            return ctx.session.state == {"a": 1, "nested": {"l": [1]}}

        assert (await run_body(server, body)).output is True


async def test_update_state_function_gets_a_read_only_snapshot(server: FlowServer) -> None:
    def in_place(current: Counter) -> Any:
        current.items.append("sneaky")
        return {"items": current.items}

    async def body(ctx: Any) -> Any:
        with pytest.raises(TypeError, match="read-only"):
            await ctx.session.update_state(in_place)
        # The pure way: build new values from the snapshot.
        await ctx.session.update_state(lambda s: {"items": [*s.items, "ok"], "count": s.count + 1})
        # A changed copy of the snapshot replaces the state (combined model).
        await ctx.session.update_state(lambda s: s.model_copy(update={"count": 7}))
        return ctx.session.state.items, ctx.session.state.count, ctx.session.version

    items, count, version = (await run_body(server, body)).output
    assert (list(items), count, version) == (["ok"], 7, 2)


class Own(BaseModel):
    notes: list[str] = Field(default_factory=list)
    n: int = 0


async def test_block_own_state_and_target_snapshots_are_read_only() -> None:
    seen: dict[str, Any] = {}

    async def child(input: Any, ctx: Any) -> Any:
        for name, handle in (("self", ctx.self), ("target", ctx.targets.outer)):
            await handle.push_state("notes", name)
            with pytest.raises(TypeError, match=r"cannot assign \"n\""):
                handle.state.n = 5
            with pytest.raises(TypeError, match="push_state"):
                handle.state.notes.append("lost")
            seen[name] = handle.state.model_dump()
        return None

    outer = sequencer(name="outer", state=Own).then(
        handler(name="child", state=Own, target_state={"outer": Own}, execute=child)
    )
    flow = define_flow("t", actions={"go": outer})
    async with FlowServer([flow], store="memory://") as server:
        await server.run("t", "go", None, user_id="u")
    assert seen == {"self": {"notes": ["self"], "n": 0}, "target": {"notes": ["target"], "n": 0}}


async def test_hooks_and_client_data_functions_get_detached_plain_copies() -> None:
    got: list[Any] = []

    def created(key: str, state: Any, hook_ctx: Any) -> None:
        state.count = 99  # a plain copy: allowed, and it changes nothing stored
        got.append(state)

    col = define_resource_collection("c/*", Counter, on_instance_created=created)
    async with probe_server("memory://", session_resources={"col": col}) as server:

        async def body(ctx: Any) -> Any:
            ref = await ctx.session.resources.col.create("a", {"count": 1})
            return ref.state.count

        assert (await run_body(server, body)).output == 1
        assert type(got[0]) is Counter and not is_snapshot(got[0])
        record = await server.store.read(
            next(iter(await server.store.scan("session/s1/")))  # the one instance
        )
        assert record is not None and record.fields["count"] == 1


# ------------------------------------------------------------------ property: any JSON value

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)

MUTATORS: list[tuple[type, Callable[[Any], Any]]] = [
    (FrozenList, lambda c: c.append(0)),
    (FrozenList, lambda c: c.__setitem__(slice(0, 0), [1])),
    (FrozenList, lambda c: c.__iadd__([1])),
    (FrozenList, lambda c: c.__imul__(2)),
    (FrozenDict, lambda c: c.__setitem__("new", 0)),
    (FrozenDict, lambda c: c.update({"new": 0})),
    (FrozenDict, lambda c: c.setdefault("new", 0)),
    (FrozenSet, lambda c: c.add(0)),
]


def _containers(value: Any) -> list[Any]:
    out = []
    if isinstance(value, list | dict | set):
        out.append(value)
    if isinstance(value, dict):
        for v in value.values():
            out.extend(_containers(v))
    elif isinstance(value, list):
        for v in value:
            out.extend(_containers(v))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(min_size=1, max_size=4), json_values, max_size=4))
def test_no_nested_container_of_any_snapshot_can_be_changed(values: dict[str, Any]) -> None:
    stored = copy.deepcopy(values)
    for schema in (Schema(None), Schema(Counter)):
        state = schema.view(None, {"blob": stored} if schema.model else stored)
        containers = _containers(state.blob if schema.model else state)
        for container in containers:
            assert isinstance(container, FrozenList | FrozenDict | FrozenSet), type(container)
            for kind, mutate in MUTATORS:
                if isinstance(container, kind):
                    with pytest.raises(TypeError):
                        mutate(container)
        assert stored == values  # the cell's values never changed, and share nothing
        if containers:
            assert all(c is not stored for c in containers)
