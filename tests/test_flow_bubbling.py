"""define_flow: bubbling of state and resource declarations through any nesting, conflicts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from flowstate import (
    ClientConfig,
    DefinitionError,
    FlowServer,
    ResourceNotFoundError,
    SchemaConflictError,
    ScopeConfig,
    StateValidationError,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
    router,
    sequencer,
)


async def noop(input: Any, ctx: Any) -> Any:
    return input


class Count(BaseModel):
    messageCount: int = 0


class Mode(BaseModel):
    mode: Literal["chat", "agent"] = "chat"


class ModeStr(BaseModel):
    mode: str = "chat"


class ModeInt(BaseModel):
    mode: int = 0


class Prefs(BaseModel):
    theme: str = "dark"


class Plan(BaseModel):
    steps: list[str] = Field(default_factory=list)


class Notes(BaseModel):
    text: str = ""


def leaf(name: str, **decls: Any) -> Any:
    return handler(name=name, execute=noop, **decls)


def fields(flow: Any, scope: str) -> set[str]:
    return set(flow.scope(scope).schema.field_names)


# --------------------------------------------------------------------------------- bubbling


def test_block_state_bubbles_into_the_combined_schema() -> None:
    pipe = sequencer(name="chat").then(leaf("counter", session_state=Count))
    pipe.then(leaf("mode-switch", session_state=Mode))
    flow = define_flow("my-app", actions={"send": pipe})
    assert fields(flow, "session") == {"messageCount", "mode"}
    model = flow.scope("session").schema.model
    assert model is not None
    assert model().model_dump() == {"messageCount": 0, "mode": "chat"}


def test_bubbling_reaches_through_every_kind_of_nesting() -> None:
    deep = leaf("deep", user_state=Prefs)
    in_for_each = sequencer(name="inner").for_each(lambda i, c: [], deep)
    in_router = router(
        name="r",
        routes={"a": in_for_each, "b": leaf("b", project_state=Notes)},
        select=lambda i, c: "a",
    )
    in_parallel = sequencer(name="p").parallel([in_router, leaf("c", request_state=Count)])
    top = sequencer(name="top").then(in_parallel).then(leaf("d", session_state=Mode))
    flow = define_flow("nest", actions={"go": top})
    assert fields(flow, "user") == {"theme"}
    assert fields(flow, "project") == {"text"}
    assert fields(flow, "request") == {"messageCount"}
    assert fields(flow, "session") == {"mode"}


def test_every_action_contributes_and_shared_blocks_count_once() -> None:
    shared = leaf("shared", session_state=Count)
    flow = define_flow(
        "k",
        actions={
            "a": sequencer(name="a").then(shared),
            "b": sequencer(name="b").then(shared).then(leaf("x", session_state=Mode)),
        },
    )
    assert fields(flow, "session") == {"messageCount", "mode"}


def test_flow_level_schema_merges_with_blocks_and_its_default_wins() -> None:
    class FlowCount(BaseModel):
        messageCount: int = 10
        extra: str = "x"

    flow = define_flow(
        "k",
        actions={"a": leaf("counter", session_state=Count)},
        session=ScopeConfig(state=FlowCount),
    )
    schema = flow.scope("session").schema
    assert schema.field_names == {"messageCount", "extra"}
    assert schema.defaults() == {"messageCount": 10, "extra": "x"}


def test_scope_without_any_schema_is_free_form() -> None:
    flow = define_flow("k", actions={"a": leaf("a")})
    assert flow.scope("session").schema.free_form
    assert flow.scope("org") is flow.scope("project")


def test_org_alias_on_define_flow() -> None:
    flow = define_flow("k", actions={"a": leaf("a")}, org={"state": Notes})
    assert fields(flow, "project") == {"text"}
    with pytest.raises(DefinitionError, match="give project= or its alias org=, not both"):
        define_flow("k", actions={}, org={"state": Notes}, project={"state": Notes})
    assert define_flow("k", actions={}, isolate_org_state=True).isolate_project_state


async def test_combined_schema_rejects_unknown_fields_and_validates_types() -> None:
    async def write(input: Any, ctx: Any) -> Any:
        if input == "typo":
            await ctx.session.patch_state(mesageCount=1)
        else:
            await ctx.session.patch_state(mode="robot")
        return None

    pipe = sequencer(name="p").then(leaf("count", session_state=Count))
    pipe.then(handler(name="w", session_state=Mode, execute=write))
    flow = define_flow("k", actions={"go": pipe})
    async with FlowServer([flow], store="memory://") as server:
        with pytest.raises(StateValidationError, match='unknown field "mesageCount"'):
            await server.run("k", "go", "typo", user_id="u")
        with pytest.raises(StateValidationError) as info:
            await server.run("k", "go", "bad", user_id="u")
        assert info.value.errors[0]["loc"] == ["mode"]


async def test_each_block_sees_its_own_partial_model_of_the_combined_state() -> None:
    seen: dict[str, Any] = {}

    async def count(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(messageCount=1)
        seen["count"] = ctx.session.state
        return input

    async def mode(input: Any, ctx: Any) -> Any:
        await ctx.session.patch_state(mode="agent")
        seen["mode"] = ctx.session.state
        return input

    async def whole(input: Any, ctx: Any) -> Any:
        seen["whole"] = ctx.session.state
        return input

    pipe = (
        sequencer(name="chat")
        .then(handler(name="counter", session_state=Count, execute=count))
        .then(handler(name="mode-switch", session_state=Mode, execute=mode))
        .then(handler(name="whole", execute=whole))
    )
    flow = define_flow("my-app", actions={"send": pipe})
    async with FlowServer([flow], store="memory://") as server:
        await server.run("my-app", "send", None, user_id="u")
    assert type(seen["count"]) is Count and seen["count"].messageCount == 1
    assert type(seen["mode"]) is Mode and seen["mode"].mode == "agent"
    assert seen["whole"].model_dump() == {"messageCount": 1, "mode": "agent"}


# -------------------------------------------------------------------------------- conflicts


def test_incompatible_field_types_fail_at_define_flow_naming_everything() -> None:
    pipe = sequencer(name="outer").then(
        router(
            name="r",
            routes={"a": leaf("as-text", session_state=ModeStr)},
            select=lambda i, c: "a",
        )
    )
    pipe.parallel([leaf("as-number", session_state=ModeInt)])
    with pytest.raises(SchemaConflictError) as info:
        define_flow("chat-app", actions={"go": pipe})
    message = str(info.value)
    for part in (
        'Flow "chat-app"',
        "session state",
        'field "mode"',
        'block "as-text"',
        'block "as-number"',
        "str",
        "int",
        "incompatible-types",
    ):
        assert part in message, (part, message)
    assert info.value.code == "schema_conflict"


def test_flow_level_schema_conflicting_with_a_block_is_reported_with_both() -> None:
    with pytest.raises(SchemaConflictError) as info:
        define_flow("k", actions={"a": leaf("b", user_state=ModeInt)}, user={"state": Mode})
    assert 'by flow "k"' in str(info.value)
    assert 'by block "b"' in str(info.value)
    assert "user state" in str(info.value)


def test_conflict_between_the_second_and_third_declarer_is_found() -> None:
    class A(BaseModel):
        prefs: Prefs = Field(default_factory=Prefs)

    class SizeInt(BaseModel):
        size: int = 0

    class SizeStr(BaseModel):
        size: str = ""

    class B(BaseModel):
        prefs: SizeInt = Field(default_factory=SizeInt)

    class C(BaseModel):
        prefs: SizeStr = Field(default_factory=SizeStr)

    pipe = sequencer(name="p").then(leaf("a", session_state=A)).then(leaf("b", session_state=B))
    pipe.then(leaf("c", session_state=C))
    with pytest.raises(SchemaConflictError) as info:
        define_flow("k", actions={"go": pipe})
    assert 'field "prefs.size": int vs str' in str(info.value)
    assert 'block "b"' in str(info.value) and 'block "c"' in str(info.value)


def test_compatible_declarations_merge() -> None:
    class OptMode(BaseModel):
        mode: Annotated[str | None, Field(description="x")] = None

    pipe = sequencer(name="p").then(leaf("a", session_state=Mode))
    pipe.then(leaf("b", session_state=ModeStr)).then(leaf("c", session_state=OptMode))
    flow = define_flow("k", actions={"go": pipe})
    assert fields(flow, "session") == {"mode"}


# -------------------------------------------------------------------------------- resources


def test_resources_bubble_and_are_reachable_by_name() -> None:
    plan = define_resource(Plan)
    files = define_resource_collection("files/**", Notes)
    pipe = sequencer(name="p").then(leaf("a", session_resources={"plan": plan}))
    pipe.for_each(lambda i, c: [], leaf("b", user_resources={"files": files}))
    flow = define_flow("k", actions={"go": pipe})
    assert flow.scope("session").resources == {"plan": plan}
    assert flow.scope("user").resources == {"files": files}


async def test_undeclared_resource_name_raises_resource_not_found() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        return ctx.session.resources.nope

    flow = define_flow("k", actions={"go": handler(name="b", execute=body)})
    async with FlowServer([flow], store="memory://") as server:
        with pytest.raises(ResourceNotFoundError, match='Resource "nope" is not registered'):
            await server.run("k", "go", None, user_id="u")


def test_two_blocks_with_different_definitions_under_one_name_conflict() -> None:
    pipe = sequencer(name="p").then(
        leaf("planner", session_resources={"plan": define_resource(Plan)})
    )
    pipe.then(leaf("writer", session_resources={"plan": define_resource(Notes)}))
    with pytest.raises(SchemaConflictError) as info:
        define_flow("k", actions={"go": pipe})
    message = str(info.value)
    for part in ('Flow "k"', 'session resource "plan"', 'block "planner"', 'block "writer"'):
        assert part in message
    assert "resource of Plan" in message and "resource of Notes" in message


def test_one_definition_shared_or_declared_equal_twice_does_not_conflict() -> None:
    plan = define_resource(Plan)
    pipe = sequencer(name="p").then(leaf("a", session_resources={"plan": plan}))
    pipe.then(leaf("b", session_resources={"plan": plan}))
    pipe.then(leaf("c", session_resources={"plan": define_resource(Plan)}))
    flow = define_flow("k", actions={"go": pipe})
    assert flow.scope("session").resources["plan"] is plan


def test_flow_level_resource_declaration_wins_over_blocks() -> None:
    mine = define_resource(Notes, content="flow")
    pipe = sequencer(name="p").then(leaf("a", session_resources={"doc": define_resource(Plan)}))
    pipe.then(leaf("b", session_resources={"doc": define_resource(Notes)}))
    flow = define_flow("k", actions={"go": pipe}, session={"resources": {"doc": mine}})
    assert flow.scope("session").resources["doc"] is mine


def test_collection_and_resource_under_one_name_conflict() -> None:
    pipe = sequencer(name="p").then(leaf("a", user_resources={"x": define_resource(Notes)}))
    pipe.then(leaf("b", user_resources={"x": define_resource_collection("x/*", Notes)}))
    with pytest.raises(SchemaConflictError, match='collection "x/\\*" of Notes by block "b"'):
        define_flow("k", actions={"go": pipe})


# ------------------------------------------------------------------------ definition errors


def test_unknown_scope_config_key_says_what_to_write() -> None:
    with pytest.raises(DefinitionError) as info:
        define_flow("k", actions={}, session={"stateSchema": Count})
    message = str(info.value)
    assert 'flow "k" session' in message
    assert "unknown scope config key 'stateSchema'" in message
    assert "did you mean 'state'?" in message
    with pytest.raises(DefinitionError, match="did you mean 'resources'"):
        define_flow("k", actions={}, user={"resorces": {}})


def test_expose_naming_a_missing_field_fails_with_the_known_fields() -> None:
    with pytest.raises(DefinitionError) as info:
        define_flow(
            "k",
            actions={"a": leaf("a", session_state=Count)},
            session=ScopeConfig(client=ClientConfig(expose=["mesageCount"])),
        )
    message = str(info.value)
    assert 'client.expose names "mesageCount"' in message
    assert "fields: messageCount" in message


def test_client_config_shape_errors() -> None:
    with pytest.raises(DefinitionError, match=r"client\.expose must be a list of field names"):
        define_flow("k", actions={}, session={"state": Count, "client": {"expose": "x"}})
    with pytest.raises(DefinitionError, match="unknown client key 'show'"):
        define_flow("k", actions={}, session={"client": {"show": ["x"]}})
    with pytest.raises(DefinitionError, match=r'client.derived\["n"\] must be a function'):
        define_flow("k", actions={}, session={"client": {"derived": {"n": 3}}})
    with pytest.raises(DefinitionError, match='"messageCount" is both exposed and derived'):
        define_flow(
            "k",
            actions={},
            session={
                "state": Count,
                "client": {"expose": ["messageCount"], "derived": {"messageCount": len}},
            },
        )


def test_client_data_is_the_older_spelling_of_derived() -> None:
    def n(view: Any) -> int:
        return 1

    flow = define_flow("k", actions={}, session={"state": Count, "client_data": {"n": n}})
    assert flow.scope("session").client.derived == {"n": n}
    flow = define_flow("k", actions={}, session={"client": {"client_data": {"n": n}}})
    assert flow.scope("session").client.derived == {"n": n}


def test_flow_definition_errors() -> None:
    with pytest.raises(DefinitionError, match="non-empty kind"):
        define_flow("", actions={})
    with pytest.raises(DefinitionError, match='must not contain "/"'):
        define_flow("a/b", actions={})
    with pytest.raises(DefinitionError, match='action "go" must be a block'):
        define_flow("k", actions={"go": noop})  # type: ignore[dict-item]
    with pytest.raises(DefinitionError, match="must come from define_resource"):
        define_flow("k", actions={}, session={"resources": {"x": Plan}})
    with pytest.raises(DefinitionError, match="state must be a pydantic BaseModel"):
        define_flow("k", actions={}, session={"state": dict})


async def test_unknown_action_is_reported_with_the_known_ones() -> None:
    flow = define_flow("k", actions={"go": leaf("a")})
    async with FlowServer([flow], store="memory://") as server:
        with pytest.raises(ResourceNotFoundError, match=r'no action "stop" \(actions: go\)'):
            await server.run("k", "stop", None, user_id="u")
