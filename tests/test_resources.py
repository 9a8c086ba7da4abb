"""Static resources: state + content in one versioned record, read-only, render, lookup."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from flowstate import (
    FlowServer,
    ResourceNotFoundError,
    ResourceReadOnlyError,
    StateValidationError,
    define_resource,
)
from flowstate.ops import Change
from flowstate.stores import Store

from .helpers import probe_server, run_body


class Plan(BaseModel):
    steps: list[str] = Field(default_factory=list)
    status: str = "draft"


class Doc(BaseModel):
    title: str = "untitled"


def render(state: Doc, raw: str | None) -> str:
    return f"# {state.title}\n\n{raw or ''}"


@pytest.fixture
async def server(store: Store) -> Any:
    resources = {
        "plan": define_resource(Plan),
        "doc": define_resource(Doc, content="hello", render=render),
        "rules": define_resource(Doc, content="be nice", writable=False),
        "scratch": define_resource(),
    }
    async with probe_server(store, session_resources=resources) as srv:
        yield srv


async def test_resource_defaults_and_operations(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        plan = ctx.session.resources.plan
        before = (plan.state, plan.version)
        await plan.push_state("steps", "research")
        await plan.patch_state(status="active")
        return before, plan.state, plan.version, plan.key

    before, state, version, key = (await run_body(server, body)).output
    assert before == (Plan(), 0)
    assert state == Plan(steps=["research"], status="active")
    assert version == 2
    assert key == "plan"


async def test_three_ways_to_reach_a_resource_give_the_same_state(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        res = ctx.session.resources
        await res["plan"].patch_state(status="complete")
        return res.plan.state.status, res.get("plan").state.status, "plan" in res

    assert (await run_body(server, body)).output == ("complete", "complete", True)


async def test_unregistered_resource_name(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        return ctx.session.resources.nope

    with pytest.raises(ResourceNotFoundError) as info:
        await run_body(server, body)
    assert str(info.value) == 'Resource "nope" is not registered'
    assert info.value.code == "resource_not_found"


async def test_content_initial_raw_rendered_and_written_with_state(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        doc = ctx.session.resources.doc
        initial = await doc.read_content_raw(), await doc.read_content()
        changed = await doc.write_content("body text", title="Design")
        return initial, changed, doc.version, await doc.read_content_raw(), await doc.read_content()

    initial, changed, version, raw, rendered = (await run_body(server, body)).output
    assert initial == ("hello", "# untitled\n\nhello")
    assert changed is True
    assert version == 1  # content and state committed together, in one write
    assert raw == "body text"
    assert rendered == "# Design\n\nbody text"
    record = await server.store.read("session/s1/r/doc")
    assert record is not None and record.content == "body text"
    assert dict(record.fields) == {"title": "Design"}


async def test_rewriting_the_same_content_is_a_noop(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        doc = ctx.session.resources.doc
        await doc.write_content("x")
        return await doc.write_content("x"), doc.version

    assert (await run_body(server, body)).output == (False, 1)


async def test_read_only_resource_refuses_every_write(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        rules = ctx.session.resources.rules
        errors = []
        for attempt in (
            lambda: rules.patch_state(title="x"),
            lambda: rules.set_state({"title": "x"}),
            lambda: rules.update_state(lambda s: {"title": "x"}),
            lambda: rules.write_content("x"),
        ):
            try:
                await attempt()
            except ResourceReadOnlyError as exc:
                errors.append(str(exc))
        return errors, await rules.read_content(), rules.state.title

    errors, content, title = (await run_body(server, body)).output
    assert errors == ['session resource "rules" is read-only (declared writable=False)'] * 4
    assert (content, title) == ("be nice", "untitled")
    assert await server.store.read("session/s1/r/rules") is None


async def test_resource_state_is_validated(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.resources.plan.patch_state(steps="not a list")

    with pytest.raises(StateValidationError) as info:
        await run_body(server, body)
    assert info.value.scope == "session"
    assert str(info.value).startswith('session resource "plan": field "steps"')
    assert info.value.errors[0]["loc"] == ["steps"]
    assert await server.store.read("session/s1/r/plan") is None


async def test_each_resource_is_its_own_versioned_record(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        res = ctx.session.resources
        await res.plan.patch_state(status="active")
        await res.scratch.patch_state(anything=[1])
        await res.scratch.inc_state(n=1)
        await ctx.session.patch_state(x=1)
        return res.plan.version, res.scratch.version, ctx.session.version

    assert (await run_body(server, body)).output == (1, 2, 1)


async def test_resource_changes_emit_events_without_values(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.resources.plan.patch_state(status="secret-status")
        await ctx.session.resources.plan.patch_state(status="other")

    result = await run_body(server, body)
    changes = [e.data for e in result.events if e.type == "resource_change"]
    assert changes == [
        {"scope": "session", "key": "plan", "changeType": "updated"},
        {"scope": "session", "key": "plan", "changeType": "updated"},
    ]
    assert "secret-status" not in repr(result.events)


async def test_resources_persist_across_runs_of_a_session(server: FlowServer) -> None:
    async def write(ctx: Any) -> Any:
        await ctx.session.resources.plan.push_state("steps", "a")

    async def read(ctx: Any) -> Any:
        return ctx.session.resources.plan.state.steps

    await run_body(server, write)
    await run_body(server, write)
    assert (await run_body(server, read)).output == ["a", "a"]
    assert (await run_body(server, read, session_id="other")).output == []


async def test_declared_content_survives_the_first_state_write(server: FlowServer) -> None:
    """SPEC §12: ``define_resource(content=...)`` is the initial *stored* content. A state
    write that leaves content alone stores it with the record (it used to turn None)."""

    async def body(ctx: Any) -> Any:
        doc = ctx.session.resources.doc
        await doc.patch_state(title="Design")
        return await doc.read_content_raw(), await doc.read_content(), doc.version

    raw, rendered, version = (await run_body(server, body)).output
    assert (raw, rendered, version) == ("hello", "# Design\n\nhello", 1)
    record = await server.store.read("session/s1/r/doc")
    assert record is not None and record.content == "hello"
    assert dict(record.fields) == {"title": "Design"}

    async def later(ctx: Any) -> Any:  # a later run (and a second write) still sees it
        doc = ctx.session.resources.doc
        before = await doc.read_content_raw()
        await doc.set_state({"title": "Other"})
        return before, await doc.read_content_raw(), doc.version

    assert list((await run_body(server, later)).output) == ["hello", "hello", 2]


async def test_declared_content_is_stored_by_every_kind_of_first_write(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        doc = ctx.session.resources.doc
        await doc.update_state(lambda s: {"title": s.title + "!"})
        return await doc.read_content_raw()

    assert (await run_body(server, body)).output == "hello"
    record = await server.store.read("session/s1/r/doc")
    assert record is not None and (record.version, record.content) == (1, "hello")


async def test_a_noop_first_write_stores_nothing_and_explicit_content_wins(
    server: FlowServer,
) -> None:
    async def noop(ctx: Any) -> Any:
        doc = ctx.session.resources.doc
        return await doc.patch_state(title="untitled"), doc.version

    assert list((await run_body(server, noop)).output) == [False, 0]
    assert await server.store.read("session/s1/r/doc") is None

    async def explicit(ctx: Any) -> Any:
        doc = ctx.session.resources.doc
        await doc.write_content("mine", title="T")
        await doc.patch_state(title="U")
        return await doc.read_content_raw()

    assert (await run_body(server, explicit)).output == "mine"


async def test_a_concurrent_creator_keeps_its_content(server: FlowServer) -> None:
    """The first write only stores the declared content if the record is really new: a record
    written meanwhile by someone else keeps the content they wrote."""

    async def race(ctx: Any) -> Any:
        doc = ctx.session.resources.doc
        assert doc.version == 0  # loaded before the other writer commits
        # Another writer (another process, say) creates the record with its own content.
        await server.store.apply("session/s1/r/doc", Change(doc._cell.schema, content="theirs"))
        await doc.patch_state(title="mine")
        return await doc.read_content_raw(), doc.state.title

    assert list((await run_body(server, race)).output) == ["theirs", "mine"]
