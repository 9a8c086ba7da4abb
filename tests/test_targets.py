"""Block-own state (ctx.self), targets (ctx.targets / get_target) and ctx.sequencer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, Field

from flowstate import (
    Context,
    FlowServer,
    SchemaConflictError,
    StateValidationError,
    define_flow,
    handler,
    router,
    sequencer,
)


class Progress(BaseModel):
    progress: int = 0


class Research(BaseModel):
    progress: int = 0
    topic: str = "none"


class Scratch(BaseModel):
    notes: list[str] = Field(default_factory=list)


class Wrong(BaseModel):
    progress: str = ""


async def run(block: Any, input: Any = None) -> Any:
    flow = define_flow("t", actions={"go": block})
    async with FlowServer([flow], store="memory://") as server:
        return (await server.run("t", "go", input, user_id="u")).output


async def test_ctx_self_is_none_without_state_and_a_typed_handle_with_it() -> None:
    async def plain(input: Any, ctx: Context) -> Any:
        return ctx.self

    async def own(input: Any, ctx: Context[Any, Any, Any, Any, Scratch]) -> Any:
        me = ctx.self
        assert me is not None
        before = (me.state, me.version)
        await me.push_state("notes", "a")
        await me.push_state("notes", "b")
        return before, me.state, me.version

    assert await run(handler(name="plain", execute=plain)) is None
    before, after, version = await run(handler(name="own", state=Scratch, execute=own))
    assert before == (Scratch(), 0)
    assert type(after) is Scratch and after.notes == ["a", "b"]
    assert version == 2


async def test_block_own_state_is_validated() -> None:
    async def own(input: Any, ctx: Any) -> Any:
        await ctx.self.patch_state(nots=["x"])

    with pytest.raises(StateValidationError, match='unknown field "nots"'):
        await run(handler(name="own", state=Scratch, execute=own))


async def test_block_own_state_lives_for_the_run_only() -> None:
    async def own(input: Any, ctx: Any) -> Any:
        await ctx.self.push_state("notes", "x")
        return ctx.self.state.notes

    flow = define_flow("t", actions={"go": handler(name="own", state=Scratch, execute=own)})
    async with FlowServer([flow], store="memory://") as server:
        first = await server.run("t", "go", None, user_id="u", session_id="s")
        second = await server.run("t", "go", None, user_id="u", session_id="s")
    assert first.output == ["x"] and second.output == ["x"]


async def test_targets_reach_the_named_ancestor_typed_by_target_state() -> None:
    seen: dict[str, Any] = {}

    async def reporter(input: Any, ctx: Any) -> Any:
        target = ctx.targets.research
        seen["state_type"] = type(target.state)
        await target.patch_state(progress=input)
        seen["same_via_get_target"] = ctx.get_target("research").state
        seen["via_item"] = ctx.targets["research"].state
        return input

    async def summary(input: Any, ctx: Any) -> Any:
        return ctx.self.state if ctx.self else None

    leaf = handler(name="progress-reporter", target_state={"research": Progress}, execute=reporter)
    inner = sequencer(name="inner").then(leaf)
    research = sequencer(name="research", state=Research).then(inner)
    outer = sequencer(name="outer").then(research)
    await run(outer, 75)
    assert seen["state_type"] is Progress
    assert seen["same_via_get_target"] == Progress(progress=75)
    assert seen["via_item"] == Progress(progress=75)


async def test_ancestor_sees_what_descendants_wrote_through_targets() -> None:
    async def child(input: Any, ctx: Any) -> Any:
        await ctx.targets.research.inc_state(progress=10)
        return input

    async def report(input: Any, ctx: Any) -> Any:
        return ctx.sequencer.state

    research = (
        sequencer(name="research", state=Research)
        .then(handler(name="c1", target_state={"research": Progress}, execute=child))
        .then(handler(name="c2", target_state={"research": Progress}, execute=child))
        .then(handler(name="report", execute=report))
    )
    assert await run(research) == Research(progress=20, topic="none")


async def test_targets_are_none_outside_the_expected_topology() -> None:
    async def probe(input: Any, ctx: Any) -> Any:
        return (
            ctx.targets.research,
            ctx.get_target("research"),
            ctx.targets.probe,  # itself: not an ancestor
            ctx.sequencer is None,
        )

    alone = handler(name="probe", target_state={"research": Progress}, execute=probe)
    assert await run(alone) == (None, None, None, True)
    wrapped = sequencer(name="other").then(alone)
    assert await run(wrapped) == (None, None, None, False)  # ctx.sequencer: "other"


async def test_get_target_with_a_model_types_the_view() -> None:
    async def probe(input: Any, ctx: Context) -> Any:
        handle = ctx.get_target("research", Progress)
        assert handle is not None
        await handle.inc_state(progress=5)
        untyped = ctx.get_target("research")
        assert untyped is not None
        return handle.state, untyped.state

    block = sequencer(name="research", state=Research).then(handler(name="p", execute=probe))
    typed, untyped = await run(block)
    assert typed == Progress(progress=5)
    assert untyped == Research(progress=5)
    with pytest.raises(TypeError, match="BaseModel subclass"):

        async def bad(input: Any, ctx: Any) -> Any:
            ctx.get_target("research", dict)

        await run(sequencer(name="research").then(handler(name="b", execute=bad)))


async def test_ctx_sequencer_is_the_nearest_enclosing_sequencer() -> None:
    class Outer(BaseModel):
        level: str = "outer"

    class Inner(BaseModel):
        level: str = "inner"

    async def probe(input: Any, ctx: Any) -> Any:
        return ctx.sequencer.state.level

    # a router between the handler and the inner sequencer does not count as a sequencer
    routed = router(
        name="r", routes={"p": handler(name="p", execute=probe)}, select=lambda i, c: "p"
    )
    inner = sequencer(name="inner", state=Inner).then(routed)
    outer = sequencer(name="outer", state=Outer).then(inner).then(handler(name="q", execute=probe))
    result = await run(sequencer(name="top").then(outer).then(identity_block()))
    assert result == "outer"  # q ran in "outer"
    assert await run(sequencer(name="top").then(inner)) == "inner"


def identity_block() -> Any:
    async def identity(input: Any, ctx: Any) -> Any:
        return input

    return handler(name="identity", execute=identity)


async def test_nearest_ancestor_wins_when_names_repeat() -> None:
    async def probe(input: Any, ctx: Any) -> Any:
        await ctx.targets.stage.inc_state(progress=1)
        return input

    async def read(input: Any, ctx: Any) -> Any:
        return ctx.self.state.progress

    inner = sequencer(name="stage", state=Progress).then(
        handler(name="p", target_state={"stage": Progress}, execute=probe)
    )
    inner.then(handler(name="read-inner", execute=read, state=Progress))
    outer = sequencer(name="stage", state=Progress).then(inner)

    async def outer_read(input: Any, ctx: Any) -> Any:
        return ctx.sequencer.state.progress

    outer.then(handler(name="read-outer", execute=outer_read))
    assert await run(outer) == 0  # the inner "stage" got the write, not the outer one


async def test_each_parallel_or_for_each_execution_gets_its_own_container() -> None:
    containers: list[int] = []

    async def worker(input: Any, ctx: Any) -> Any:
        me = ctx.self
        containers.append(id(me._cell))
        for _ in range(input):
            await me.inc_state(progress=1)
            await asyncio.sleep(0)
        await ctx.targets.batch.inc_state(progress=me.state.progress)
        return me.state.progress

    async def total(input: Any, ctx: Any) -> Any:
        return input, ctx.sequencer.state.progress

    work = handler(name="worker", state=Progress, target_state={"batch": Progress}, execute=worker)
    batch = (
        sequencer(name="batch", state=Progress)
        .for_each(lambda i, c: [1, 2, 3, 4], work, max_concurrency=4)
        .then(handler(name="total", execute=total))
    )
    outputs, shared = await run(batch)
    assert outputs == [1, 2, 3, 4]  # each execution counted only its own increments
    assert shared == 10  # all reached the one ancestor container
    assert len(set(containers)) == 4

    containers.clear()
    par = (
        sequencer(name="batch", state=Progress)
        .parallel([work, work, work])
        .then(handler(name="total", execute=total))
    )
    outputs, shared = await run(par, 2)
    assert outputs == [2, 2, 2]
    assert shared == 6
    assert len(set(containers)) == 3


async def test_target_state_bubbles_into_the_ancestor_own_schema() -> None:
    async def child(input: Any, ctx: Any) -> Any:
        await ctx.targets.loose.patch_state(progress=3)
        return ctx.get_target("loose").state, ctx.sequencer.state.model_dump()

    async def typo(input: Any, ctx: Any) -> Any:
        await ctx.targets.loose.patch_state(progres=3)

    # the ancestor declares no state: the targets' models define it
    block = sequencer(name="loose").then(
        handler(name="c", target_state={"loose": Progress}, execute=child)
    )
    # typed by the target_state model; the ancestor's own view is the merged model
    assert await run(block) == (Progress(progress=3), {"progress": 3})
    flow = define_flow("t", actions={"go": block})
    schema = flow.own_state_schema(block)
    assert schema.field_names == {"progress"}
    bad = sequencer(name="loose").then(
        handler(name="c", target_state={"loose": Progress}, execute=typo)
    )
    with pytest.raises(StateValidationError, match='unknown field "progres"'):
        await run(bad)


def test_target_state_conflicting_with_the_ancestor_state_fails_at_define_flow() -> None:
    async def noop(input: Any, ctx: Any) -> Any:
        return input

    block = sequencer(name="research", state=Research).then(
        handler(name="reporter", target_state={"research": Wrong}, execute=noop)
    )
    with pytest.raises(SchemaConflictError) as info:
        define_flow("t", actions={"go": block})
    message = str(info.value)
    assert 'field "progress"' in message
    assert 'block "research"' in message
    assert 'block "reporter" (target_state["research"])' in message
    assert "int" in message and "str" in message
