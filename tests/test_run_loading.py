"""What a run reads before its blocks start: one ``read_many``, only the declared fields.

Counted through the store's own methods on every backend: a run on an existing session is
one read (session binding + scope records + static resources) and one write per operation;
a field that no block of the action declares — a long log kept by another action — is never
loaded, pushed to or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, Field

from flowstate import (
    ClientConfig,
    FlowServer,
    ScopeConfig,
    SessionNotFoundError,
    define_flow,
    define_resource,
    handler,
)
from flowstate.migrations import SCHEMA_FIELD
from flowstate.stores import Record, Store


class Counter(BaseModel):
    n: int = 0


class Journal(BaseModel):
    log: list[str] = Field(default_factory=list)


class Prefs(BaseModel):
    theme: str = "light"


class Notes(BaseModel):
    text: str = ""


def make_flow() -> Any:
    @handler(name="bump", session_state=Counter, user_state=Prefs)
    async def bump(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(n=1)
        return {"n": ctx.session.state.n, "theme": ctx.user.state.theme}

    @handler(name="note", session_state=Counter)
    async def note(input: Any, ctx: Any) -> Any:
        # pushes onto a list it does not declare: the push must not load the list
        await ctx.session.push_state("log", input)
        await ctx.session.inc_state(n=1)
        return ctx.session.state.n

    @handler(name="read_log", session_state=Journal)
    async def read_log(input: Any, ctx: Any) -> Any:
        return len(ctx.session.state.log)

    @handler(name="everything")
    async def everything(input: Any, ctx: Any) -> Any:
        # declares nothing: sees the whole combined session state
        return sorted(ctx.session.state.model_dump())

    @handler(
        name="with_resource",
        session_state=Counter,
        session_resources={"notes": define_resource(Notes)},
    )
    async def with_resource(input: Any, ctx: Any) -> Any:
        await ctx.session.resources.notes.patch_state(text=input)
        return ctx.session.resources.notes.state.text

    return define_flow(
        "chat",
        {
            "bump": bump,
            "note": note,
            "read_log": read_log,
            "everything": everything,
            "with_resource": with_resource,
        },
        session=ScopeConfig(client=ClientConfig(expose=["n"])),
    )


class Calls:
    """Wraps a store's methods to record every call a run makes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[tuple[str, Any]] = []
        for name in ("read", "read_many", "apply", "create", "scan", "count", "delete"):
            setattr(store, name, self._wrap(name, getattr(store, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args[0] if args else None))
            return await fn(*args, **kwargs)

        return call

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def reads(self) -> list[dict[str, frozenset[str] | None]]:
        return [dict(arg) for name, arg in self.calls if name == "read_many"]


@pytest.fixture
async def setup(store: Store) -> Any:
    server = FlowServer(make_flow(), store=store)
    calls = Calls(store)
    yield server, calls, store


async def test_a_run_on_an_existing_session_is_one_read_and_one_write(setup: Any) -> None:
    server, calls, _ = setup
    first = await server.run("chat", "bump", user_id="ann")
    calls.calls.clear()
    again = await server.run("chat", "bump", user_id="ann", session_id=first.session_id)
    assert again.output == {"n": 2, "theme": "light"}
    assert calls.names() == ["read_many", "apply"]
    (wanted,) = calls.reads()
    sid = first.session_id
    assert wanted == {
        f"_sessions/{sid}": None,
        f"session/{sid}/state": frozenset({"n", SCHEMA_FIELD}),
        "user/ann/state": frozenset({"theme", SCHEMA_FIELD}),
        # static resources of the scope: every block may reach them through ctx
        f"session/{sid}/r/notes": None,
    }


async def test_a_field_no_block_of_the_action_declares_is_never_loaded(setup: Any) -> None:
    server, calls, store = setup
    first = await server.run("chat", "bump", user_id="ann")
    sid = first.session_id
    for i in range(3):
        assert await server.run("chat", "note", f"entry {i}", user_id="ann", session_id=sid)
    calls.calls.clear()
    result = await server.run("chat", "note", "last", user_id="ann", session_id=sid)
    assert result.output == 5
    assert calls.names() == ["read_many", "apply", "apply"]
    assert calls.reads()[0][f"session/{sid}/state"] == frozenset({"n", SCHEMA_FIELD})
    # the pushes landed, in order, and an action that declares the list reads all of it
    assert (await server.run("chat", "read_log", user_id="ann", session_id=sid)).output == 4
    record = await store.read(f"session/{sid}/state")
    assert record is not None and record.fields["log"] == [f"entry {i}" for i in range(3)] + [
        "last"
    ]
    # events of the run that pushed name the field but carry only exposed values
    changes = [e.data for e in result.events if e.type == "state_change"]
    assert [c["fields"] for c in changes] == [["log"], ["n"]]
    assert "values" not in changes[0] and changes[1]["values"] == {"n": 5}


async def test_a_block_that_declares_nothing_sees_the_whole_combined_state(setup: Any) -> None:
    server, calls, _ = setup
    first = await server.run("chat", "note", "x", user_id="ann")
    calls.calls.clear()
    out = await server.run("chat", "everything", user_id="ann", session_id=first.session_id)
    assert out.output == ["log", "n"]
    read = calls.reads()[0][f"session/{first.session_id}/state"]
    assert read == frozenset({"log", "n", SCHEMA_FIELD})


async def test_static_resources_are_read_in_the_same_round_trip(setup: Any) -> None:
    server, calls, _ = setup
    first = await server.run("chat", "with_resource", "a", user_id="ann")
    calls.calls.clear()
    again = await server.run(
        "chat", "with_resource", "b", user_id="ann", session_id=first.session_id
    )
    assert again.output == "b"
    assert calls.names() == ["read_many", "apply"]
    assert f"session/{first.session_id}/r/notes" in calls.reads()[0]


async def test_another_users_session_is_not_found_and_nothing_is_written(setup: Any) -> None:
    server, calls, store = setup
    first = await server.run("chat", "bump", user_id="ann")
    calls.calls.clear()
    with pytest.raises(SessionNotFoundError, match=f'session "{first.session_id}" not found'):
        await server.run("chat", "bump", user_id="bob", session_id=first.session_id)
    assert calls.names() == ["read_many"]
    record = await store.read(f"session/{first.session_id}/state")
    assert isinstance(record, Record) and record.fields == {"n": 1}


async def test_a_new_session_id_is_created_and_then_run(setup: Any) -> None:
    server, _, _ = setup
    result = await server.run("chat", "bump", user_id="ann", session_id="fresh-1")
    assert result.output == {"n": 1, "theme": "light"}
    info = await server.get_session("fresh-1", user_id="ann")
    assert info.flow_kind == "chat"


async def test_a_project_session_run_without_the_project_id_reads_the_project(
    store: Store,
) -> None:
    class Seen(BaseModel):
        seen: int = 0

    @handler(name="see", project_state=Seen)
    async def see(input: Any, ctx: Any) -> Any:
        await ctx.project.inc_state(seen=1)
        return ctx.project.state.seen

    server = FlowServer(define_flow("proj", {"see": see}), store=store)
    first = await server.run("proj", "see", user_id="ann", project_id="p1")
    assert first.output == 1
    calls = Calls(store)
    again = await server.run("proj", "see", user_id="ann", session_id=first.session_id)
    assert again.output == 2
    # the first read guessed no project; the session's project is read next
    assert calls.names() == ["read_many", "read_many", "apply"]
    assert "project/p1/state" in calls.reads()[1]
