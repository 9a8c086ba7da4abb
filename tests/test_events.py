"""Run events: order, numbering, payloads, no leaks of unexposed values, failures."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from flowstate import Event, FlowServer, define_flow, define_resource_collection, handler

from .test_client_data import SECRET, full_flow


def wire(events: list[Event]) -> str:
    return json.dumps([e.to_wire() for e in events])


async def test_events_in_order_with_payloads(store_url: str) -> None:
    async with FlowServer([full_flow()], store=store_url) as server:
        result = await server.run("app", "go", None, user_id="alice")
    events = result.events
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    summary = [(e.type, e.data.get("scope"), e.data.get("key")) for e in events]
    assert summary == [
        ("request.created", None, None),
        ("state_change", "session", None),
        ("state_change", "user", None),
        ("resource_change", "session", "artifacts"),
        ("resource_change", "session", "hidden"),
        ("resource_change", "session", "files/a.py"),
        ("resource_change", "session", "files/src/b.py"),
        ("resource_change", "user", "profile"),
        ("request.completed", None, None),
    ]
    created = events[0]
    assert created.data["sessionId"] == result.session_id
    assert created.data["flowKind"] == "app"
    session_change = events[1].data
    assert session_change["operation"] == "patch"
    assert sorted(session_change["fields"]) == ["apiKey", "messageCount", "mode"]
    assert session_change["version"] == 1
    # a static resource always exists (with defaults), so its first write is an update
    assert events[3].data == {"scope": "session", "key": "artifacts", "changeType": "updated"}
    assert events[-1].data == {"output": "ok"}
    wire_event = events[3].to_wire()
    assert wire_event == {
        "type": "resource_change",
        "seq": 4,
        "requestId": result.request_id,
        "scope": "session",
        "key": "artifacts",
        "changeType": "updated",
    }


async def test_no_event_carries_an_unexposed_value(store_url: str) -> None:
    async with FlowServer([full_flow()], store=store_url) as server:
        result = await server.run("app", "go", None, user_id="alice")
        streamed = [e async for e in server.stream("app", "go", None, user_id="bob")]
    for events in (result.events, streamed):
        text = wire(events)
        assert SECRET not in text
        # exposed fields may travel with their value; the others only by name
        session_change = next(e for e in events if e.type == "state_change")
        assert session_change.data.get("values") == {"mode": "agent"}
        assert "apiKey" in session_change.data["fields"]


async def test_change_types_updated_and_deleted() -> None:
    class Item(BaseModel):
        n: int = 0

    async def body(input: Any, ctx: Any) -> Any:
        items = ctx.session.resources.items
        ref = await items.create("a")
        await ref.inc_state(n=1)
        await items.delete("a")
        await items.delete("a")  # idempotent: no second event

    flow = define_flow(
        "k",
        actions={"go": handler(name="b", execute=body)},
        session={"resources": {"items": define_resource_collection("items/*", Item)}},
    )
    async with FlowServer([flow], store="memory://") as server:
        result = await server.run("k", "go", None, user_id="u")
    changes = [e.data["changeType"] for e in result.events if e.type == "resource_change"]
    assert changes == ["created", "updated", "deleted"]
    assert {e.data["key"] for e in result.events if e.type == "resource_change"} == {"items/a"}


async def test_a_noop_write_emits_nothing_and_versions_count_commits() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.patch_state(mode="a")
        await ctx.session.patch_state(mode="a")  # no-op
        await ctx.session.inc_state(n=2)

    flow = define_flow("k", actions={"go": handler(name="b", execute=body)})
    async with FlowServer([flow], store="memory://") as server:
        result = await server.run("k", "go", None, user_id="u")
    changes = [e.data for e in result.events if e.type == "state_change"]
    assert changes == [
        {"scope": "session", "operation": "patch", "fields": ["mode"], "version": 1},
        {"scope": "session", "operation": "inc", "fields": ["n"], "version": 2},
    ]


async def test_failure_leaves_every_scope_as_the_last_committed_write(store_url: str) -> None:
    class Doc(BaseModel):
        title: str = ""

    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.patch_state(step=input)
        await ctx.user.inc_state(runs=1)
        await ctx.session.resources.docs.get_or_create(f"d{input}", {"title": "t"})
        if input == 2:
            raise ValueError("exploded after writing")
        return input

    flow = define_flow(
        "k",
        actions={"go": handler(name="b", execute=body)},
        session={"resources": {"docs": define_resource_collection("docs/*", Doc)}},
    )

    async def state(server: FlowServer, sid: str) -> Any:
        session = await server.store.read(f"session/{sid}/state")
        user = await server.store.read("user/u/state")
        assert session is not None and user is not None
        return dict(session.fields), session.version, dict(user.fields), user.version

    async with FlowServer([flow], store=store_url) as server:
        ok = await server.run("k", "go", 1, user_id="u", session_id="s")
        assert await state(server, "s") == ({"step": 1}, 1, {"runs": 1}, 1)
        events = [e async for e in server.stream("k", "go", 2, user_id="u", session_id="s")]
        assert events[-1].type == "request.failed"
        error = events[-1].data["error"]
        assert error["code"] == "internal_error"
        assert error["message"].endswith("): exploded after writing")
        assert "request.completed" not in [e.type for e in events]
        # the writes made before the exception were committed, nothing after, nothing undone
        committed = await state(server, "s")
        assert committed == ({"step": 2}, 2, {"runs": 2}, 2)
        with pytest.raises(ValueError, match="exploded"):
            await server.run("k", "go", 2, user_id="u", session_id="s")
        after = await state(server, "s")
        assert after == ({"step": 2}, 2, {"runs": 3}, 3)  # step=2 again is a no-op
        docs = await server.store.scan("session/s/c/docs/")
        assert docs == ["session/s/c/docs/docs/d1", "session/s/c/docs/docs/d2"]
        assert ok.output == 1


async def test_request_state_is_per_run() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        before = dict(ctx.request.state)
        await ctx.request.inc_state(calls=1)
        return before, ctx.request.state, ctx.request.id == ctx.request_id

    flow = define_flow("k", actions={"go": handler(name="b", execute=body)})
    async with FlowServer([flow], store="memory://") as server:
        first = await server.run("k", "go", None, user_id="u", session_id="s")
        second = await server.run("k", "go", None, user_id="u", session_id="s")
    assert first.output == ({}, {"calls": 1}, True)
    assert second.output == first.output
    assert not await server.store.scan("request/")


async def test_change_events_are_published_only_where_someone_listens() -> None:
    """Nothing is built for a topic nobody subscribed to; a subscriber gets every change."""
    from flowstate.stores.memory import MemoryStore
    from flowstate.stores.postgres import PostgresStore

    store = MemoryStore()
    assert not store.may_deliver("user:alice")
    async with store.subscribe("user:alice") as queue:
        assert store.may_deliver("user:alice") and not store.may_deliver("user:bob")
        async with FlowServer([full_flow()], store=store) as server:
            result = await server.run("app", "go", None, user_id="alice")
        received = [queue.get_nowait() for _ in range(queue.qsize())]
    assert not store.may_deliver("user:alice")  # the subscription is gone
    user_events = [e.to_wire() for e in result.events if e.data.get("scope") == "user"]
    assert received == [
        {**e, "sessionId": result.session_id, "flowKind": "app"} for e in user_events
    ]
    assert len(received) == 2
    # Another process may subscribe to a PostgreSQL topic: it always publishes.
    assert PostgresStore("postgresql://127.0.0.1:1/none").may_deliver("user:nobody")
