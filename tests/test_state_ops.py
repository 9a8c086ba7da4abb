"""State operations on every backend: semantics, validation, no-op guard, CAS, no lost writes."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, model_validator

from flowstate import (
    ConcurrentModificationError,
    FlowServer,
    RetryPolicy,
    ScopeConfig,
    StateValidationError,
)
from flowstate.stores import Store

from .helpers import probe_server, run_body


class Chat(BaseModel):
    mode: Literal["chat", "agent"] = "chat"
    count: int = 0
    ratio: float = 0.5
    history: list[str] = Field(default_factory=list)
    tags: dict[str, int] = Field(default_factory=dict)
    title: str | None = None


@pytest.fixture
async def server(store: Store) -> Any:
    async with probe_server(store, session_state=Chat) as srv:
        yield srv


async def stored_fields(store: Store, key: str = "session/s1/state") -> dict[str, Any] | None:
    record = await store.read(key)
    return None if record is None else dict(record.fields)


async def test_first_read_returns_defaults_without_writing(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        return ctx.session.state, ctx.session.version

    result = await run_body(server, body)
    state, version = result.output
    assert state == Chat()
    assert version == 0
    assert await server.store.read("session/s1/state") is None
    assert [e.type for e in result.events] == ["request.created", "request.completed"]


async def test_patch_commits_then_identical_patch_is_a_noop(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        first = await ctx.session.patch_state({"mode": "agent"}, count=2)
        v1 = ctx.session.version
        second = await ctx.session.patch_state(mode="agent")
        return first, v1, second, ctx.session.version, ctx.session.state

    result = await run_body(server, body)
    first, v1, second, v2, state = result.output
    assert (first, v1, second, v2) == (True, 1, False, 1)
    assert state.mode == "agent" and state.count == 2
    changes = [e for e in result.events if e.type == "state_change"]
    assert len(changes) == 1
    assert changes[0].data == {
        "scope": "session",
        "operation": "patch",
        "fields": ["count", "mode"],
        "version": 1,
    }


async def test_patch_to_the_default_value_of_an_unwritten_field_is_a_noop(
    server: FlowServer,
) -> None:
    async def body(ctx: Any) -> Any:
        return await ctx.session.patch_state(count=0), ctx.session.version

    assert (await run_body(server, body)).output == (False, 0)
    assert await server.store.read("session/s1/state") is None


async def test_set_state_replaces_and_omitted_fields_take_defaults(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.patch_state(mode="agent", count=5, title="x")
        changed = await ctx.session.set_state({"count": 1})
        return changed, ctx.session.state

    changed, state = (await run_body(server, body)).output
    assert changed is True
    assert state == Chat(count=1)


async def test_set_state_accepts_a_model(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.set_state(Chat(mode="agent", history=["a"]))
        return await ctx.session.set_state(Chat(mode="agent", history=["a"])), ctx.session.state

    again, state = (await run_body(server, body)).output
    assert again is False
    assert state.history == ["a"] and state.mode == "agent"


async def test_inc_adds_to_default_and_accepts_floats(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.inc_state(count=1)
        await ctx.session.inc_state({"count": 2}, ratio=0.25)
        return ctx.session.state

    state = (await run_body(server, body)).output
    assert state.count == 3
    assert state.ratio == 0.75


async def test_inc_of_zero_is_a_noop(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.inc_state(count=1)
        return await ctx.session.inc_state(count=0), ctx.session.version

    assert (await run_body(server, body)).output == (False, 1)


@pytest.mark.parametrize(
    ("kwargs", "fragment", "loc"),
    [
        ({"mode": 1}, 'field "mode": inc_state needs a number field, found str', ["mode"]),
        ({"count": "1"}, "inc_state needs a number amount, got '1'", ["count"]),
        ({"count": True}, "inc_state needs a number amount, got True", ["count"]),
        ({"history": 1}, "inc_state needs a number field, found list", ["history"]),
    ],
)
async def test_inc_rejects_non_numbers_and_writes_nothing(
    server: FlowServer, kwargs: dict[str, Any], fragment: str, loc: list[str]
) -> None:
    async def setup(ctx: Any) -> Any:
        await ctx.session.patch_state(count=7)

    async def body(ctx: Any) -> Any:
        await ctx.session.inc_state(**kwargs)

    await run_body(server, setup)
    with pytest.raises(StateValidationError) as info:
        await run_body(server, body)
    assert fragment in str(info.value)
    assert info.value.scope == "session"
    assert str(info.value).startswith("session state: ")
    assert info.value.errors[0]["loc"] == loc
    assert (await server.store.read("session/s1/state")).version == 1  # type: ignore[union-attr]
    assert await stored_fields(server.store) == {"count": 7}


async def test_inc_result_is_validated_against_the_schema(store: Store) -> None:
    class Bounded(BaseModel):
        n: int = Field(default=0, le=2)

    async with probe_server(store, session_state=Bounded) as server:

        async def body(ctx: Any) -> Any:
            await ctx.session.inc_state(n=2)
            try:
                await ctx.session.inc_state(n=1)
            except StateValidationError as exc:
                return exc.errors, ctx.session.state.n, ctx.session.version
            return None

        errors, n, version = (await run_body(server, body)).output
        assert errors[0]["loc"] == ["n"]
        assert errors[0]["type"] == "less_than_equal"
        assert (n, version) == (2, 1)


async def test_push_appends_and_missing_list_starts_empty(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.push_state("history", "a")
        await ctx.session.push_state({"history": "b"})
        return ctx.session.state.history

    assert (await run_body(server, body)).output == ["a", "b"]


async def test_push_to_a_non_list_field_is_rejected(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.push_state("count", 1)

    with pytest.raises(StateValidationError, match='field "count": push_state needs a list field'):
        await run_body(server, body)
    assert await server.store.read("session/s1/state") is None


async def test_push_validates_the_item(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.push_state("history", {"not": "a string"})

    with pytest.raises(StateValidationError) as info:
        await run_body(server, body)
    assert info.value.errors[0]["loc"] == ["history", -1]
    assert info.value.errors[0]["type"] == "string_type"


async def test_record_set_and_delete(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        a = await ctx.session.set_state_record("tags", "x", 1)
        b = await ctx.session.set_state_record("tags", "y", 2)
        c = await ctx.session.delete_state_record("tags", "x")
        d = await ctx.session.delete_state_record("tags", "absent")
        return (a, b, c, d), ctx.session.state.tags, ctx.session.version

    flags, tags, version = (await run_body(server, body)).output
    assert flags == (True, True, True, False)
    assert tags == {"y": 2}
    assert version == 3


async def test_record_ops_on_a_non_dict_field_are_rejected(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.set_state_record("history", "k", "v")

    with pytest.raises(
        StateValidationError, match="set_state_record needs a dict field, found list"
    ):
        await run_body(server, body)


async def test_invalid_value_names_field_and_rule_and_writes_nothing(server: FlowServer) -> None:
    async def setup(ctx: Any) -> Any:
        await ctx.session.patch_state(mode="agent")

    async def body(ctx: Any) -> Any:
        await ctx.session.patch_state(mode="sleep", count=3)

    await run_body(server, setup)
    with pytest.raises(StateValidationError) as info:
        await run_body(server, body)
    err = info.value
    assert err.code == "validation_error"
    assert err.scope == "session"
    assert err.errors == [
        {"loc": ["mode"], "msg": "Input should be 'chat' or 'agent'", "type": "literal_error"}
    ]
    assert 'field "mode"' in str(err)
    assert await stored_fields(server.store) == {"mode": "agent"}


async def test_unknown_field_is_rejected_as_a_typo(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.patch_state(mdoe="agent")

    with pytest.raises(StateValidationError) as info:
        await run_body(server, body)
    assert 'unknown field "mdoe"' in str(info.value)
    assert info.value.errors[0]["type"] == "extra_forbidden"
    assert await server.store.read("session/s1/state") is None


async def test_free_form_scope_takes_any_json(store: Store) -> None:
    async with probe_server(store) as server:

        async def body(ctx: Any) -> Any:
            await ctx.session.patch_state(anything={"nested": [1, 2]})
            await ctx.session.inc_state(n=2)
            await ctx.session.push_state("log", "x")
            return ctx.session.state

        state = (await run_body(server, body)).output
        assert state == {"anything": {"nested": [1, 2]}, "n": 2, "log": ["x"]}

        async def bad(ctx: Any) -> Any:
            await ctx.session.patch_state(when=object())

        with pytest.raises(StateValidationError, match='field "when": value is not JSON'):
            await run_body(server, bad)


async def test_model_validators_see_the_whole_state(store: Store) -> None:
    class Range(BaseModel):
        lo: int = 0
        hi: int = 10

        @model_validator(mode="after")
        def ordered(self) -> Range:
            if self.lo > self.hi:
                raise ValueError("lo must not exceed hi")
            return self

    async with probe_server(store, session_state=Range) as server:

        async def body(ctx: Any) -> Any:
            await ctx.session.patch_state(lo=20)

        with pytest.raises(StateValidationError, match="lo must not exceed hi"):
            await run_body(server, body)


async def test_update_state_merges_a_mapping_and_replaces_with_a_model(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.patch_state(count=1, title="t")
        merged = await ctx.session.update_state(lambda s: {"count": s.count + 10})
        after_merge = ctx.session.state

        async def replace(s: Chat) -> Chat:
            return Chat(mode="agent")

        replaced = await ctx.session.atomic_state(replace)
        return merged, after_merge, replaced, ctx.session.state

    merged, after_merge, replaced, state = (await run_body(server, body)).output
    assert merged is True and after_merge.count == 11 and after_merge.title == "t"
    assert replaced is True and state == Chat(mode="agent")


async def test_update_state_retries_when_another_writer_gets_in_first(server: FlowServer) -> None:
    calls: list[int] = []

    async def body(ctx: Any) -> Any:
        other = server.store

        async def fn(current: Chat) -> dict[str, Any]:
            calls.append(current.count)
            if len(calls) == 1:  # a concurrent writer commits between our read and our write
                from flowstate.ops import Change, FieldOp
                from flowstate.schema import Schema

                await other.apply(
                    "session/s1/state", Change(Schema(Chat), ops=(FieldOp("inc", "count", 5),))
                )
            return {"count": current.count + 1}

        await ctx.session.update_state(fn)
        return ctx.session.state.count

    assert (await run_body(server, body)).output == 6
    assert calls == [0, 5]


async def test_update_state_gives_up_with_concurrent_modification_error(store: Store) -> None:
    from flowstate.ops import Change, FieldOp
    from flowstate.schema import Schema

    policy = RetryPolicy(max_attempts=3, base_delay=0.0001, max_delay=0.001)
    async with probe_server(store, session_state=Chat, session=ScopeConfig(retry=policy)) as server:

        async def body(ctx: Any) -> Any:
            async def fn(current: Chat) -> dict[str, Any]:
                await store.apply(
                    "session/s1/state", Change(Schema(Chat), ops=(FieldOp("inc", "count", 1),))
                )
                return {"title": "mine"}

            await ctx.session.update_state(fn)

        with pytest.raises(ConcurrentModificationError) as info:
            await run_body(server, body)
        assert info.value.attempts == 3
        assert info.value.code == "concurrent_modification"
        assert "update_state gave up after 3 attempts" in str(info.value)
        fields = await stored_fields(store)
        assert fields == {"count": 3}  # the other writer's commits, none of ours


async def test_update_state_retries_once_at_once_then_backs_off(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first retry re-reads and goes without sleeping (the write it lost to is done);
    only later retries wait, each for the policy's jittered delay."""
    import random

    from flowstate.ops import Change, FieldOp
    from flowstate.schema import Schema

    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, result: Any = None) -> Any:
        if delay:  # sleep(0) is how the stores yield to other tasks
            slept.append(delay)
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    monkeypatch.setattr(random, "uniform", lambda lo, hi: hi)  # the cap, no jitter
    policy = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=1.0)
    async with probe_server(store, session_state=Chat, session=ScopeConfig(retry=policy)) as server:
        lost = [1]  # how many attempts the other writer beats

        async def body(ctx: Any) -> Any:
            async def fn(current: Chat) -> dict[str, Any]:
                if lost[0] > 0:
                    lost[0] -= 1
                    await store.apply(
                        "session/s1/state",
                        Change(Schema(Chat), ops=(FieldOp("inc", "count", 1),)),
                    )
                return {"count": current.count + 10}

            await ctx.session.update_state(fn)
            return ctx.session.state.count

        assert (await run_body(server, body)).output == 11
        assert slept == []  # one lost race: retried at once
        lost[0] = 3
        assert (await run_body(server, body)).output == 24
        assert slept == [0.01, 0.02]  # then the backoff, from base_delay


async def test_state_sees_own_writes_at_once_and_others_after_refresh(server: FlowServer) -> None:
    from flowstate.ops import Change, FieldOp
    from flowstate.schema import Schema

    async def body(ctx: Any) -> Any:
        await ctx.session.inc_state(count=1)
        seen_own = ctx.session.state.count
        await server.store.apply(
            "session/s1/state", Change(Schema(Chat), ops=(FieldOp("set", "title", "other"),))
        )
        stale = ctx.session.state.title
        await ctx.session.refresh()
        return seen_own, stale, ctx.session.state.title, ctx.session.version

    assert (await run_body(server, body)).output == (1, None, "other", 2)


async def test_fifty_concurrent_tasks_lose_no_increment_or_push(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        async def one(i: int) -> None:
            await ctx.session.inc_state(count=1)
            await ctx.session.push_state("history", str(i))

        await asyncio.gather(*(one(i) for i in range(50)))
        await ctx.session.refresh()
        return ctx.session.state, ctx.session.version

    state, version = (await run_body(server, body)).output
    assert state.count == 50
    assert sorted(state.history, key=int) == [str(i) for i in range(50)]
    assert version == 100


async def test_fifty_concurrent_runs_lose_no_increment(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.inc_state(count=1)
        await ctx.session.push_state("history", "x")

    await asyncio.gather(*(run_body(server, body) for _ in range(50)))
    fields = await stored_fields(server.store)
    assert fields is not None
    assert fields["count"] == 50 and len(fields["history"]) == 50


async def test_concurrent_update_state_never_loses_a_write(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        async def one() -> None:
            await ctx.session.update_state(lambda s: {"count": s.count + 1})

        await asyncio.gather(*(one() for _ in range(8)))
        await ctx.session.refresh()
        return ctx.session.state.count

    assert (await run_body(server, body)).output == 8


async def test_scopes_are_separate_records(store: Store) -> None:
    class Prefs(BaseModel):
        theme: str = "dark"

    async with probe_server(store, session_state=Chat, user_state=Prefs, project_state=Chat) as srv:

        async def body(ctx: Any) -> Any:
            await ctx.session.inc_state(count=1)
            await ctx.user.patch_state(theme="light")
            await ctx.project.inc_state(count=5)
            await ctx.request.patch_state(scratch=1)
            assert ctx.org is ctx.project or ctx.org.id == ctx.project.id
            return ctx.session.version, ctx.user.version, ctx.project.version

        assert (await run_body(srv, body, project_id="p1")).output == (1, 1, 1)
        assert await stored_fields(store, "user/alice/state") == {"theme": "light"}
        assert await stored_fields(store, "project/p1/state") == {"count": 5}
        # the request scope lives for one run and is never stored
        assert await store.scan("request/") == []

        async def no_project(ctx: Any) -> Any:
            return ctx.project

        assert (await run_body(srv, no_project, session_id="s2")).output is None


async def test_field_validators_of_a_partial_model_run_on_write(store: Store) -> None:
    from pydantic import field_validator

    class Named(BaseModel):
        name: str = ""

        @field_validator("name")
        @classmethod
        def clean(cls, value: str) -> str:
            if "!" in value:
                raise ValueError("no exclamation marks")
            return value.strip()

    class Other(BaseModel):
        n: int = 0

    from flowstate import define_flow, handler

    @handler(name="a", session_state=Named)
    async def a(input: Any, ctx: Any) -> Any:
        await ctx.session.patch_state(name="  bob ")
        try:
            await ctx.session.patch_state(name="hey!")
        except StateValidationError as exc:
            return ctx.session.state.name, exc.errors[0]["loc"]
        return None

    @handler(name="b", session_state=Other)
    async def b(input: Any, ctx: Any) -> Any:
        return input

    from flowstate import sequencer

    flow = define_flow("v", actions={"go": sequencer("s").then(b).then(a)})
    async with FlowServer([flow], store=store) as server:
        result = await server.run("v", "go", None, user_id="u")
        assert result.output == ("bob", ["name"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_numbers_are_rejected_not_stored_as_null(
    store: Store, bad: float
) -> None:
    async with probe_server(store, session_state=Chat, user_state=None) as server:

        async def typed(ctx: Any) -> Any:
            await ctx.session.patch_state(ratio=bad)

        async def amount(ctx: Any) -> Any:
            await ctx.session.inc_state(ratio=bad)

        async def free(ctx: Any) -> Any:
            await ctx.user.patch_state(nested={"values": [1.0, bad]})

        with pytest.raises(StateValidationError) as info:
            await run_body(server, typed)
        assert info.value.errors[0]["loc"] == ["ratio"]
        assert info.value.errors[0]["type"] == "finite_number"
        with pytest.raises(StateValidationError, match="inc_state needs a number amount"):
            await run_body(server, amount)
        with pytest.raises(StateValidationError) as info:
            await run_body(server, free)
        assert info.value.errors[0]["loc"] == ["nested", "values", 1]
        assert await server.store.read("session/s1/state") is None
        assert await server.store.read("user/alice/state") is None
