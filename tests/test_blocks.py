"""Blocks: handler (both forms), sequencer steps, router, boundary validation, definition errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from flowstate import (
    Context,
    DefinitionError,
    FlowServer,
    Handler,
    StateValidationError,
    define_flow,
    define_resource,
    handler,
    router,
    sequencer,
)


class Msg(BaseModel):
    text: str


class Reply(BaseModel):
    text: str
    length: int


class Counter(BaseModel):
    count: int = 0


async def run_action(block: Any, input: Any = None, **flow_kwargs: Any) -> Any:
    """Run ``block`` as the only action of a flow on a memory store; return the RunResult."""
    flow = define_flow("t", actions={"go": block}, **flow_kwargs)
    async with FlowServer([flow], store="memory://") as server:
        return await server.run("t", "go", input, user_id="u")


# ----------------------------------------------------------------------------- handler forms


async def test_function_form_runs_execute_with_input_and_context() -> None:
    seen: dict[str, Any] = {}

    async def execute(input: Any, ctx: Context) -> Any:
        seen["input"] = input
        seen["block"] = ctx.block_name
        seen["action"] = ctx.action
        return {"echo": input["x"] * 2}

    block = handler(name="double", execute=execute)
    assert isinstance(block, Handler)
    assert block.name == "double"
    result = await run_action(block, {"x": 21})
    assert result.output == {"echo": 42}
    assert seen == {"input": {"x": 21}, "block": "double", "action": "go"}


async def test_decorator_form_builds_a_handler_with_the_declarations() -> None:
    @handler(name="count", session_state=Counter)
    async def count(input: Any, ctx: Context[Counter]) -> Any:
        await ctx.session.inc_state(count=1)
        return ctx.session.state.count

    assert isinstance(count, Handler)
    assert count.name == "count"
    assert count.declarations["session"].state is Counter
    result = await run_action(count)
    assert result.output == 1


async def test_async_callable_object_is_accepted_as_execute() -> None:
    class Exec:
        async def __call__(self, input: Any, ctx: Context) -> Any:
            return "called"

    result = await run_action(handler(name="obj", execute=Exec()))
    assert result.output == "called"


# ----------------------------------------------------------------------- definition errors


def test_handler_without_name_is_a_definition_error() -> None:
    async def fn(input: Any, ctx: Any) -> Any:
        return input

    with pytest.raises(DefinitionError, match=r'handler\(\) needs name="\.\.\."'):
        handler(execute=fn)  # type: ignore[call-overload]
    with pytest.raises(DefinitionError, match="non-empty string"):
        handler(name="  ", execute=fn)
    with pytest.raises(DefinitionError, match=r'sequencer\(\) needs name="\.\.\."'):
        sequencer()
    with pytest.raises(DefinitionError, match=r'router\(\) needs name="\.\.\."'):
        router(routes={"a": handler(name="a", execute=fn)}, select=lambda i, c: "a")


def test_decorator_without_name_fails_at_the_decorator_line() -> None:
    with pytest.raises(DefinitionError, match="needs name="):
        handler(name="")


def test_non_async_execute_is_rejected_with_what_to_write() -> None:
    def sync_fn(input: Any, ctx: Any) -> Any:
        return input

    with pytest.raises(DefinitionError) as info:
        handler(name="sync", execute=sync_fn)
    assert 'handler "sync"' in str(info.value)
    assert "async def fn(input, ctx)" in str(info.value)
    assert "sync_fn" in str(info.value)
    with pytest.raises(DefinitionError, match="must be an async function"):
        handler(name="sync2")(sync_fn)


def test_unknown_block_option_names_the_option_and_suggests_the_right_one() -> None:
    async def fn(input: Any, ctx: Any) -> Any:
        return input

    with pytest.raises(DefinitionError) as info:
        handler(name="x", execute=fn, sessionStateSchema=Counter)  # type: ignore[call-overload]
    assert "unknown option sessionStateSchema=" in str(info.value)
    assert "did you mean session_state=?" in str(info.value)
    with pytest.raises(DefinitionError, match=r"did you mean session_state=\?"):
        handler(name="x", execute=fn, sesion_state=Counter)  # type: ignore[call-overload]
    with pytest.raises(DefinitionError, match="unknown option colour="):
        sequencer(name="s", colour="red")


def test_bad_models_and_resources_are_rejected_at_definition() -> None:
    async def fn(input: Any, ctx: Any) -> Any:
        return input

    with pytest.raises(DefinitionError, match=r'block "x": session_state must be a pydantic'):
        handler(name="x", execute=fn, session_state=dict)
    with pytest.raises(DefinitionError, match=r'session_resources\["plan"\] must come from'):
        handler(name="x", execute=fn, session_resources={"plan": Counter})  # type: ignore[dict-item]
    with pytest.raises(DefinitionError, match="target_state must be a dict"):
        handler(name="x", execute=fn, target_state=Counter)  # type: ignore[call-overload]


def test_org_aliases_on_blocks() -> None:
    async def fn(input: Any, ctx: Any) -> Any:
        return input

    res = define_resource(Counter)
    block = handler(name="x", execute=fn, org_state=Counter, org_resources={"r": res})
    assert block.declarations["project"].state is Counter
    assert block.declarations["project"].resources == {"r": res}
    with pytest.raises(DefinitionError, match="give project_state= or its alias org_state="):
        handler(name="x", execute=fn, org_state=Counter, project_state=Counter)


def test_sequencer_and_router_step_errors() -> None:
    async def fn(input: Any, ctx: Any) -> Any:
        return input

    a = handler(name="a", execute=fn)
    seq = sequencer(name="s")
    with pytest.raises(DefinitionError, match=r'sequencer "s".then\(\) takes a block'):
        seq.then(fn)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="needs at least one block"):
        seq.parallel([])
    with pytest.raises(DefinitionError, match="takes a list of blocks"):
        seq.parallel(a)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="max_concurrency must be an integer >= 1"):
        seq.parallel([a], max_concurrency=0)
    with pytest.raises(DefinitionError, match="items must be a function"):
        seq.for_each([1, 2], a)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="routes must be a non-empty dict"):
        router(name="r", routes={}, select=lambda i, c: "a")
    with pytest.raises(DefinitionError, match="select must be a function"):
        router(name="r", routes={"a": a}, select="a")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match='route "b" takes a block'):
        router(name="r", routes={"a": a, "b": 3}, select=lambda i, c: "a")  # type: ignore[dict-item]


# --------------------------------------------------------------------------- sequencer steps


def echo(name: str, delay: float = 0.0, log: list[str] | None = None) -> Handler[Any, Any]:
    async def execute(input: Any, ctx: Any) -> Any:
        if log is not None:
            log.append(f"start {name}")
        await asyncio.sleep(delay)
        if log is not None:
            log.append(f"end {name}")
        return f"{name}({input})"

    return handler(name=name, execute=execute)


async def test_then_chains_outputs_into_inputs() -> None:
    seq = sequencer(name="s").then(echo("a")).then(echo("b")).then(echo("c"))
    assert (await run_action(seq, "x")).output == "c(b(a(x)))"


async def test_empty_sequencer_returns_its_input() -> None:
    assert (await run_action(sequencer(name="s"), {"k": 1})).output == {"k": 1}


async def test_parallel_outputs_in_block_order_not_finish_order() -> None:
    seq = sequencer(name="s").parallel([echo("slow", 0.03), echo("fast", 0.0)])
    assert (await run_action(seq, "x")).output == ["slow(x)", "fast(x)"]


async def test_parallel_max_concurrency_limits_how_many_run_at_once() -> None:
    running = 0
    peak = 0

    async def work(input: Any, ctx: Any) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return input

    blocks = [handler(name=f"w{i}", execute=work) for i in range(6)]
    assert (await run_action(sequencer(name="s").parallel(blocks, max_concurrency=2), 1)).output
    assert peak == 2
    peak = 0
    await run_action(sequencer(name="s").parallel(blocks), 1)
    assert peak == 6


async def test_for_each_outputs_list_in_item_order_and_items_fn_sees_input_and_ctx() -> None:
    seen: list[Any] = []

    def items(input: Any, ctx: Any) -> list[int]:
        seen.append((input, ctx.block_name))
        values: list[int] = input["values"]
        return values

    async def square(input: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.001 * (5 - input))  # later items finish first
        return input * input

    seq = sequencer(name="loop").for_each(items, handler(name="sq", execute=square))
    result = await run_action(seq, {"values": [1, 2, 3, 4]})
    assert result.output == [1, 4, 9, 16]
    assert seen == [({"values": [1, 2, 3, 4]}, "loop")]


async def test_for_each_accepts_an_async_items_function_and_empty_items() -> None:
    async def items(input: Any, ctx: Any) -> list[str]:
        return list(input)

    seq = sequencer(name="s").for_each(items, echo("e"), max_concurrency=1)
    assert (await run_action(seq, "ab")).output == ["e(a)", "e(b)"]
    assert (await run_action(seq, "")).output == []


async def test_for_each_max_concurrency() -> None:
    running = 0
    peak = 0

    async def work(input: Any, ctx: Any) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1
        return input

    seq = sequencer(name="s").for_each(
        lambda i, c: range(7), handler(name="w", execute=work), max_concurrency=3
    )
    assert (await run_action(seq)).output == list(range(7))
    assert peak == 3


async def test_for_each_items_that_are_not_a_list_fail_the_run() -> None:
    seq = sequencer(name="s").for_each(lambda i, c: {"a": 1}, echo("e"))
    with pytest.raises(DefinitionError, match="items function must return a list"):
        await run_action(seq)


async def test_router_runs_the_selected_route() -> None:
    calls: list[Any] = []

    def select(input: Any, ctx: Any) -> str:
        calls.append(ctx.block_name)
        return "big" if input > 10 else "small"

    r = router(name="size", routes={"big": echo("big"), "small": echo("small")}, select=select)
    assert (await run_action(r, 50)).output == "big(50)"
    assert (await run_action(r, 5)).output == "small(5)"
    assert calls == ["size", "size"]


async def test_router_async_select_and_unknown_route() -> None:
    async def select(input: Any, ctx: Any) -> str:
        return str(input)

    r = router(name="r", routes={"a": echo("a")}, select=select)
    assert (await run_action(r, "a")).output == "a(a)"
    with pytest.raises(DefinitionError, match=r"select returned 'zzz', which is not a route"):
        await run_action(r, "zzz")


async def test_nested_composition() -> None:
    inner = sequencer(name="inner").then(echo("a")).parallel([echo("b"), echo("c")])
    r = router(name="r", routes={"x": inner, "y": echo("y")}, select=lambda i, c: "x")
    outer = sequencer(name="outer").then(r).for_each(lambda i, c: i, echo("d"))
    result = await run_action(outer, "v")
    assert result.output == ["d(b(a(v)))", "d(c(a(v)))"]


# ------------------------------------------------------------------------ boundary validation


async def test_input_and_output_models_are_validated_at_block_boundaries() -> None:
    seen: list[Any] = []

    async def execute(input: Msg, ctx: Any) -> Any:
        seen.append(input)
        return {"text": input.text.upper(), "length": len(input.text)}

    block = handler(name="shout", input=Msg, output=Reply, execute=execute)
    result = await run_action(block, {"text": "hi"})
    assert seen == [Msg(text="hi")]
    assert result.output == Reply(text="HI", length=2)
    assert result.events[-1].data == {"output": {"text": "HI", "length": 2}}


async def test_invalid_input_is_a_state_validation_error_naming_block_and_field() -> None:
    async def execute(input: Any, ctx: Any) -> Any:
        raise AssertionError("must not run")

    block = handler(name="shout", input=Msg, execute=execute)
    with pytest.raises(StateValidationError) as info:
        await run_action(block, {"txt": "hi"})
    err = info.value
    assert err.scope == "input"
    assert 'block "shout" input' in str(err)
    assert err.errors[0]["loc"] == ["input", "text"]
    assert err.errors[0]["type"] == "missing"


async def test_invalid_output_is_a_state_validation_error() -> None:
    async def execute(input: Any, ctx: Any) -> Any:
        return {"text": "x", "length": "not a number"}

    block = handler(name="bad", output=Reply, execute=execute)
    with pytest.raises(StateValidationError) as info:
        await run_action(block)
    assert info.value.scope == "output"
    assert info.value.errors[0]["loc"] == ["output", "length"]
    assert 'block "bad" output' in str(info.value)


async def test_sequencer_validates_each_step_boundary() -> None:
    async def make(input: Any, ctx: Any) -> Any:
        return {"text": "abc"}

    async def use(input: Msg, ctx: Any) -> Any:
        return {"text": input.text, "length": len(input.text)}

    seq = (
        sequencer(name="s", output=Reply)
        .then(handler(name="make", execute=make))
        .then(handler(name="use", input=Msg, execute=use))
    )
    assert (await run_action(seq)).output == Reply(text="abc", length=3)


# --------------------------------------------------------------------------------- failures


async def test_a_failing_parallel_branch_cancels_its_siblings() -> None:
    finished: list[str] = []

    async def slow(input: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.2)
        finished.append("slow")
        await ctx.session.patch_state(late=True)
        return input

    async def boom(input: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    seq = sequencer(name="s").parallel(
        [handler(name="slow", execute=slow), handler(name="boom", execute=boom)]
    )
    flow = define_flow("t", actions={"go": seq})
    async with FlowServer([flow], store="memory://") as server:
        with pytest.raises(RuntimeError, match="boom"):
            await server.run("t", "go", None, user_id="u", session_id="s1")
        await asyncio.sleep(0.3)
        assert finished == []
        assert await server.store.read("session/s1/state") is None


def test_a_block_inside_itself_fails_at_define_flow() -> None:
    outer = sequencer(name="loop").then(echo("a"))
    outer.then(sequencer(name="inner").then(outer))
    with pytest.raises(DefinitionError) as info:
        define_flow("k", actions={"go": outer})
    assert 'sequencer "loop" contains itself ("loop" → "inner" → "loop")' in str(info.value)
    # the same block twice side by side is fine: it is not inside itself
    twice = sequencer(name="twice").then(echo("a")).then(echo("a"))
    twice.parallel([echo("b"), echo("b")])
    define_flow("k", actions={"go": twice})


async def test_handler_name_may_be_positional() -> None:
    async def fn(input: Any, ctx: Any) -> Any:
        return ctx.block_name

    assert (await run_action(handler("positional", execute=fn))).output == "positional"
