"""SPEC.md, item by item, through the public API only (an acceptance suite written from SPEC).

Every test here uses what a user following SPEC.md would use: ``import flowstate``,
``from flowstate import scripts``, the ``flowstate`` command and the HTTP routes (served by
``flowstate.http.create_app``, the documented way to get the ASGI app of a ``FlowServer``).
Sections follow SPEC's numbering.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import httpx
import pytest
from pydantic import BaseModel, Field
from starlette.requests import Request

import flowstate
from flowstate import (
    AuthError,
    ClientConfig,
    CollectionFullError,
    ConcurrentModificationError,
    CrossFlowSchemaConflictError,
    DefinitionError,
    Event,
    FlowServer,
    FlowStateError,
    FlowStateWarning,
    Identity,
    KeyPatternError,
    ResourceAlreadyExistsError,
    ResourceClient,
    ResourceNotFoundError,
    ResourceReadOnlyError,
    RetryPolicy,
    RunResult,
    SchemaConflictError,
    ScopeConfig,
    SessionNotFoundError,
    StateValidationError,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
    open_store,
    router,
    sequencer,
)
from flowstate.http import create_app

# ------------------------------------------------------------------------------------ helpers


async def noop(input: Any, ctx: Any) -> Any:
    return input


async def run_probe(
    store_url: str,
    execute: Callable[[Any, Any], Any],
    *,
    flow: dict[str, Any] | None = None,
    input: Any = None,
    user_id: str = "alice",
    session_id: str | None = None,
    project_id: str | None = None,
    **block: Any,
) -> RunResult:
    """Run one handler as action ``go`` of flow ``probe`` on a fresh server over ``store_url``."""
    blk = handler(name="probe", execute=execute, **block)
    f = define_flow("probe", actions={"go": blk}, **(flow or {}))
    async with FlowServer([f], store=store_url) as server:
        return await server.run(
            "probe", "go", input, user_id=user_id, session_id=session_id, project_id=project_id
        )


def types_of(events: list[Event]) -> list[str]:
    return [e.type for e in events]


# ------------------------------------------------------------------------------- §1 schemas


class Counter(BaseModel):
    message_count: int = 0


class Mode(BaseModel):
    mode: Literal["chat", "agent"] = "chat"


async def test_bubbling_merges_block_partial_schemas(store_url: str) -> None:
    @handler(name="counter", session_state=Counter)
    async def counter(input: Any, ctx: Any) -> Any:
        assert isinstance(ctx.session.state, Counter)
        await ctx.session.inc_state(message_count=1)
        return input

    @handler(name="mode-switch", session_state=Mode)
    async def mode_switch(input: Any, ctx: Any) -> Any:
        await ctx.session.patch_state(mode="agent")
        return input

    @handler(name="reader")
    async def reader(input: Any, ctx: Any) -> Any:
        # no partial schema: the combined model
        return ctx.session.state.model_dump()

    chat = sequencer(name="chat").then(counter).then(mode_switch)
    flow = define_flow("my-app", actions={"chat": chat, "read": reader})
    async with FlowServer([flow], store=store_url) as server:
        first = await server.run("my-app", "chat", None, user_id="u1")
        out = await server.run("my-app", "read", None, user_id="u1", session_id=first.session_id)
    assert out.output == {"message_count": 1, "mode": "agent"}


async def test_free_form_scope_holds_a_dict() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        assert ctx.session.state == {}
        assert await ctx.session.patch_state({"anything": {"goes": [1, 2]}}) is True
        return ctx.session.state

    res = await run_probe("memory://", body)
    assert res.output == {"anything": {"goes": [1, 2]}}


class StatusStr(BaseModel):
    status: str = ""


class StatusInt(BaseModel):
    status: int = 0


def test_incompatible_field_types_conflict_at_define_flow_naming_everything() -> None:
    a = handler(name="alpha", session_state=StatusStr, execute=noop)
    b = handler(name="beta", session_state=StatusInt, execute=noop)
    with pytest.raises(SchemaConflictError) as info:
        define_flow("conflicted", actions={"a": a, "b": b})
    message = str(info.value)
    for fragment in ("conflicted", "session", "status", "alpha", "beta", "str", "int"):
        assert fragment in message, (fragment, message)
    assert info.value.code == "schema_conflict"


class OptInt(BaseModel):
    n: Optional[int] = None  # noqa: UP045 - the spelling under test


class AnnInt(BaseModel):
    n: Annotated[int, Field(ge=0)] = 0


class PlainInt(BaseModel):
    n: int = 0


class Theme(BaseModel):
    theme: str = "dark"


class ModelPref(BaseModel):
    model: str = "gpt"


class ThemeInt(BaseModel):
    theme: int = 0


class PrefsA(BaseModel):
    prefs: Theme = Theme()


class PrefsB(BaseModel):
    prefs: ModelPref = ModelPref()


class PrefsC(BaseModel):
    prefs: ThemeInt = ThemeInt()


class ListInt(BaseModel):
    items: list[int] = []


class ListStr(BaseModel):
    items: list[str] = []


class LitStr(BaseModel):
    level: Literal["low", "high"] = "low"


class PlainStr(BaseModel):
    level: str = ""


class LitInt(BaseModel):
    level: Literal[1, 2] = 1


def _flow_of(*models: type[BaseModel]) -> Any:
    blocks = {
        f"b{i}": handler(name=f"b{i}", session_state=m, execute=noop) for i, m in enumerate(models)
    }
    return define_flow("compat", actions=blocks)


@pytest.mark.parametrize(
    "models",
    [
        (OptInt, PlainInt),
        (AnnInt, PlainInt),
        (PrefsA, PrefsB),
        (ListInt, ListInt),
        (LitStr, PlainStr),
    ],
)
def test_compatible_declarations_merge(models: tuple[type[BaseModel], ...]) -> None:
    _flow_of(*models)


@pytest.mark.parametrize(
    "models", [(PrefsA, PrefsC), (ListInt, ListStr), (LitInt, PlainStr), (StatusInt, StatusStr)]
)
def test_incompatible_declarations_conflict(models: tuple[type[BaseModel], ...]) -> None:
    with pytest.raises(SchemaConflictError):
        _flow_of(*models)


# ----------------------------------------------------------------------- §2 state operations


class Doc(BaseModel):
    count: int = 0
    ratio: float = 0.0
    title: str = ""
    tags: list[str] = []
    meta: dict[str, int] = {}


async def test_every_state_operation_and_its_return_value(store_url: str) -> None:
    async def body(input: Any, ctx: Any) -> Any:
        s = ctx.session
        assert s.version == 0
        assert isinstance(s.state, Doc) and s.state == Doc()
        assert await s.patch_state({"title": "a"}) is True
        assert (s.version, s.state.title) == (1, "a")
        assert await s.patch_state(title="a") is False
        assert s.version == 1
        assert await s.patch_state({"title": "b"}, count=2) is True
        assert (s.state.title, s.state.count, s.version) == ("b", 2, 2)
        assert await s.inc_state(count=3) is True
        assert await s.inc_state({"ratio": 0.5}) is True
        assert (s.state.count, s.state.ratio) == (5, 0.5)
        assert await s.push_state("tags", "x") is True
        assert await s.push_state({"tags": "y"}) is True
        assert s.state.tags == ["x", "y"]
        assert await s.set_state_record("meta", "k", 1) is True
        assert await s.set_state_record("meta", "k", 1) is False
        assert await s.delete_state_record("meta", "absent") is False
        assert s.state.meta == {"k": 1}
        assert await s.delete_state_record("meta", "k") is True
        assert s.state.meta == {}
        version = s.version
        assert await s.set_state({"title": "z"}) is True
        assert s.state == Doc(title="z")
        assert s.version == version + 1
        assert await s.set_state(Doc(count=9)) is True
        assert s.state == Doc(count=9)
        assert await s.update_state(lambda cur: {"count": cur.count + 1}) is True
        assert s.state.count == 10

        async def replace(cur: Doc) -> Doc:
            return Doc(title="from-model", count=cur.count)

        assert await s.atomic_state(replace) is True
        assert s.state == Doc(title="from-model", count=10)
        assert await s.update_state(lambda cur: {"count": cur.count}) is False
        return s.version

    res = await run_probe(store_url, body, session_state=Doc)
    changes = [e for e in res.events if e.type == "state_change"]
    # one event per committed write, none for no-ops
    assert len(changes) == res.output
    assert [e.data["version"] for e in changes] == list(range(1, res.output + 1))
    for e in changes:
        assert set(e.data) >= {"scope", "operation", "fields", "version"}
        assert e.data["scope"] == "session"


async def test_missing_fields_in_free_form_scope() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        u = ctx.user
        assert await u.inc_state(n=2) is True
        assert await u.push_state("log", "a") is True
        assert await u.set_state_record("by_id", "x", {"v": 1}) is True
        return u.state

    res = await run_probe("memory://", body)
    assert res.output == {"n": 2, "log": ["a"], "by_id": {"x": {"v": 1}}}


@pytest.mark.parametrize(
    "op",
    [
        lambda s: s.inc_state(title=1),  # non-number field
        lambda s: s.inc_state(count="x"),  # non-number amount
        lambda s: s.push_state("title", "x"),  # non-list field
        lambda s: s.set_state_record("tags", "k", 1),  # non-dict field
        lambda s: s.delete_state_record("count", "k"),  # non-dict field
        lambda s: s.patch_state(count="not a number"),  # schema violation
        lambda s: s.patch_state(cuont=1),  # unknown field (typo)
        lambda s: s.set_state({"count": "nope"}),
        lambda s: s.update_state(lambda cur: {"count": "nope"}),
    ],
)
async def test_invalid_writes_raise_state_validation_error_and_write_nothing(
    store_url: str, op: Callable[[Any], Any]
) -> None:
    seen: dict[str, Any] = {}

    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.patch_state(title="kept")
        with pytest.raises(StateValidationError) as info:
            await op(ctx.session)
        seen["error"] = info.value
        assert ctx.session.version == 1
        assert ctx.session.state == Doc(title="kept")
        return None

    res = await run_probe(store_url, body, session_state=Doc)
    err = seen["error"]
    assert err.code == "validation_error"
    assert err.scope == "session"
    assert isinstance(err.errors, list) and err.errors
    for e in err.errors:
        assert {"loc", "msg", "type"} <= set(e)
    assert len([e for e in res.events if e.type == "state_change"]) == 1


async def test_validation_error_shape_names_the_field() -> None:
    seen: dict[str, Any] = {}

    async def body(input: Any, ctx: Any) -> Any:
        try:
            await ctx.session.patch_state(count="nope")
        except StateValidationError as exc:
            seen["exc"] = exc
        return None

    await run_probe("memory://", body, session_state=Doc)
    exc = seen["exc"]
    assert exc.errors[0]["loc"][-1] == "count" or "count" in exc.errors[0]["loc"]
    assert "count" in str(exc) and "session" in str(exc)


async def test_lazy_records_and_versions(store_url: str) -> None:
    async def read(input: Any, ctx: Any) -> Any:
        return [ctx.user.version, ctx.user.state.model_dump()]

    async def write(input: Any, ctx: Any) -> Any:
        await ctx.user.inc_state(count=1)
        return ctx.user.version

    flow = define_flow(
        "lazy",
        actions={
            "read": handler(name="read", user_state=Doc, execute=read),
            "write": handler(name="write", user_state=Doc, execute=write),
        },
    )
    async with FlowServer([flow], store=store_url) as server:
        assert (await server.run("lazy", "read", user_id="bob")).output == [0, Doc().model_dump()]
        # the read wrote nothing: still version 0
        assert (await server.run("lazy", "read", user_id="bob")).output[0] == 0
        assert (await server.run("lazy", "write", user_id="bob")).output == 1
        assert (await server.run("lazy", "write", user_id="bob")).output == 2


async def test_update_state_exhausts_retries_with_concurrent_modification_error() -> None:
    seen: dict[str, Any] = {}

    async def body(input: Any, ctx: Any) -> Any:
        calls = 0

        async def fn(cur: Any) -> Any:
            nonlocal calls
            calls += 1
            await ctx.session.inc_state(count=1)  # another writer wins every time
            return {"title": "never"}

        with pytest.raises(ConcurrentModificationError) as info:
            await ctx.session.update_state(fn)
        seen["attempts"] = info.value.attempts
        seen["calls"] = calls
        seen["code"] = info.value.code
        return ctx.session.state.title

    res = await run_probe(
        "memory://",
        body,
        session_state=Doc,
        flow={"session": ScopeConfig(retry=RetryPolicy(max_attempts=3))},
    )
    assert res.output == ""
    assert seen["attempts"] == 3 and seen["calls"] == 3
    assert seen["code"] == "concurrent_modification"


async def test_update_state_default_retries_are_ten() -> None:
    seen: dict[str, Any] = {}

    async def body(input: Any, ctx: Any) -> Any:
        async def fn(cur: Any) -> Any:
            await ctx.session.inc_state(count=1)
            return {"title": "never"}

        with pytest.raises(ConcurrentModificationError) as info:
            await ctx.session.update_state(fn)
        seen["attempts"] = info.value.attempts

    await run_probe("memory://", body, session_state=Doc)
    assert seen["attempts"] == 10


async def test_concurrent_increments_lose_nothing(store_url: str) -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.project.inc_state(count=1)
        await ctx.project.update_state(lambda cur: {"tags": [*cur.tags, "t"]})
        return None

    async def read(input: Any, ctx: Any) -> Any:
        return ctx.project.state.model_dump()

    f = define_flow(
        "race",
        actions={
            "go": handler(name="go", project_state=Doc, execute=body),
            "read": handler(name="read", project_state=Doc, execute=read),
        },
    )
    async with FlowServer([f], store=store_url) as server:
        await asyncio.gather(
            *(server.run("race", "go", user_id=f"u{i}", project_id="p") for i in range(8))
        )
        state = (await server.run("race", "read", user_id="u0", project_id="p")).output
    assert state["count"] == 8 and len(state["tags"]) == 8


async def test_scope_handles_and_project_none_without_project_id() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        return [
            ctx.request is not None,
            ctx.session is not None,
            ctx.user is not None,
            ctx.project is None,
            ctx.org is None,
        ]

    assert (await run_probe("memory://", body)).output == [True] * 5

    async def with_project(input: Any, ctx: Any) -> Any:
        await ctx.org.patch_state(title="shared")
        return [ctx.project.state.title, ctx.org.state.title]

    res = await run_probe("memory://", with_project, project_id="acme", org_state=Doc)
    assert res.output == ["shared", "shared"]


async def test_request_scope_is_per_run() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        before = ctx.request.state.count
        await ctx.request.inc_state(count=1)
        return before

    f = define_flow("req", actions={"go": handler(name="go", request_state=Doc, execute=body)})
    async with FlowServer([f], store="memory://") as server:
        first = await server.run("req", "go", user_id="a")
        second = await server.run("req", "go", user_id="a", session_id=first.session_id)
    assert (first.output, second.output) == (0, 0)


@pytest.mark.parametrize("pick_up", ["refresh", "noop", "write"])
async def test_state_reflects_other_writers_after_refresh_or_next_operation(
    store_url: str, pick_up: str
) -> None:
    started = asyncio.Event()
    written = asyncio.Event()

    async def reader(input: Any, ctx: Any) -> Any:
        assert ctx.project.state.count == 0
        started.set()
        await written.wait()
        assert ctx.project.state.count == 0  # a snapshot: unchanged until refreshed
        if pick_up == "refresh":
            await ctx.project.refresh()
        elif pick_up == "noop":
            assert await ctx.project.patch_state(title="") is False
        else:
            assert await ctx.project.patch_state(title="mine") is True
        return ctx.project.state.count

    async def writer(input: Any, ctx: Any) -> Any:
        await started.wait()
        await ctx.project.inc_state(count=5)
        written.set()

    f = define_flow(
        "refresh",
        actions={
            "read": handler(name="read", project_state=Doc, execute=reader),
            "write": handler(name="write", project_state=Doc, execute=writer),
        },
    )
    async with FlowServer([f], store=store_url) as server:
        r, _ = await asyncio.gather(
            server.run("refresh", "read", user_id="a", project_id="p"),
            server.run("refresh", "write", user_id="b", project_id="p"),
        )
    assert r.output == 5


# ------------------------------------------------------------------------------ §3 resources


class Plan(BaseModel):
    steps: list[str] = []
    status: Literal["draft", "active", "complete"] = "draft"


async def test_static_resource_access_ops_and_content(store_url: str) -> None:
    plan = define_resource(
        Plan,
        content="# initial",
        render=lambda state, raw: f"{state.status}:{raw}",
    )

    async def body(input: Any, ctx: Any) -> Any:
        res = ctx.session.resources
        ref = res.plan
        assert res["plan"].key == ref.key == res.get("plan").key
        assert ref.version == 0 and ref.state == Plan()
        assert await ref.read_content_raw() == "# initial"
        assert await ref.read_content() == "draft:# initial"
        assert await ref.patch_state(status="active") is True
        assert await ref.push_state("steps", "one") is True
        assert await ref.update_state(lambda cur: {"steps": [*cur.steps, "two"]}) is True
        await ref.write_content("# v2")
        assert await ref.read_content_raw() == "# v2"
        assert await ref.read_content() == "active:# v2"
        with pytest.raises(StateValidationError):
            await ref.patch_state(status="bogus")
        with pytest.raises(StateValidationError):
            await ref.patch_state(stpes=[])
        with pytest.raises(ResourceNotFoundError) as info:
            res.get("nope")
        assert 'Resource "nope" is not registered' in str(info.value)
        with pytest.raises(ResourceNotFoundError):
            res["nope"]
        with pytest.raises(ResourceNotFoundError):
            res.nope  # noqa: B018
        return [ref.key, ref.state.model_dump()]

    out = (
        await run_probe(store_url, body, flow={"session": ScopeConfig(resources={"plan": plan})})
    ).output
    assert out[0] == "plan"
    assert out[1] == {"steps": ["one", "two"], "status": "active"}


async def test_resource_without_content_reads_none() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        return [
            await ctx.session.resources.cache.read_content_raw(),
            ctx.session.resources.cache.state,
        ]

    out = (
        await run_probe("memory://", body, session_resources={"cache": define_resource()})
    ).output
    assert out == [None, {}]


async def test_read_only_resource_rejects_writes() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        ref = ctx.session.resources.plan
        for write in (
            lambda: ref.patch_state(status="active"),
            lambda: ref.set_state({}),
            lambda: ref.inc_state(n=1),
            lambda: ref.push_state("steps", "x"),
            lambda: ref.update_state(lambda cur: {"status": "active"}),
            lambda: ref.write_content("x"),
        ):
            with pytest.raises(ResourceReadOnlyError) as info:
                await write()
            assert info.value.code == "resource_read_only"
        return ref.version

    out = await run_probe(
        "memory://",
        body,
        session_resources={"plan": define_resource(Plan, writable=False)},
    )
    assert out.output == 0


async def test_flow_level_resource_wins_over_block_declaration() -> None:
    block_def = define_resource(content="block")
    flow_def = define_resource(content="flow")

    async def body(input: Any, ctx: Any) -> Any:
        return await ctx.session.resources.doc.read_content_raw()

    out = await run_probe(
        "memory://",
        body,
        session_resources={"doc": block_def},
        flow={"session": ScopeConfig(resources={"doc": flow_def})},
    )
    assert out.output == "flow"


def test_two_blocks_declaring_different_resources_under_one_name_conflict() -> None:
    a = handler(name="a", session_resources={"doc": define_resource(Plan)}, execute=noop)
    b = handler(name="b", session_resources={"doc": define_resource(Notes)}, execute=noop)
    with pytest.raises(SchemaConflictError) as info:
        define_flow("res-conflict", actions={"a": a, "b": b})
    assert "doc" in str(info.value)
    c = handler(name="c", session_resources={"doc": files_collection()}, execute=noop)
    d = handler(
        name="d", session_resources={"doc": files_collection(max_instances=3)}, execute=noop
    )
    with pytest.raises(SchemaConflictError):
        define_flow("res-conflict2", actions={"c": c, "d": d})
    # our documented choice: definitions equal in every option are one definition
    e = handler(name="e", session_resources={"doc": define_resource(Plan)}, execute=noop)
    f = handler(name="f", session_resources={"doc": define_resource(Plan)}, execute=noop)
    define_flow("res-equal", actions={"e": e, "f": f})
    shared = define_resource()
    a2 = handler(name="a", session_resources={"doc": shared}, execute=noop)
    b2 = handler(name="b", session_resources={"doc": shared}, execute=noop)
    define_flow("res-ok", actions={"a": a2, "b": b2})


async def test_resources_on_user_and_project_scopes_and_org_alias() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.user.resources.notes.patch_state(steps=["u"])
        await ctx.project.resources.kb.patch_state(steps=["p"])
        return [ctx.org.resources.kb.state.steps, ctx.user.resources["notes"].state.steps]

    out = await run_probe(
        "memory://",
        body,
        project_id="acme",
        user_resources={"notes": define_resource(Plan)},
        org_resources={"kb": define_resource(Plan)},
    )
    assert out.output == [["p"], ["u"]]


async def test_resource_writes_emit_resource_change() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.resources.plan.patch_state(status="active")

    res = await run_probe("memory://", body, session_resources={"plan": define_resource(Plan)})
    changes = [e for e in res.events if e.type == "resource_change"]
    assert len(changes) == 1
    assert changes[0].data["scope"] == "session"
    assert changes[0].data["key"] == "plan"
    assert changes[0].data["changeType"] in ("created", "updated")


# ---------------------------------------------------------------------------- §4 collections


class FileState(BaseModel):
    language: str = "text"
    size: int = 0


class Notes(BaseModel):
    entries: list[str] = []


def files_collection(**options: Any) -> Any:
    return define_resource_collection("files/**", FileState, **options)


async def test_collection_runtime_api(store_url: str) -> None:
    async def body(input: Any, ctx: Any) -> Any:
        files = ctx.session.resources.files
        ref = await files.create("readme.md", {"language": "markdown"})
        assert ref.key == "files/readme.md"
        assert ref.state.language == "markdown"
        assert (await files.get("readme.md")).state == FileState(language="markdown")
        with pytest.raises(ResourceNotFoundError):
            await files.get("utils.ts")
        assert await files.get_optional("utils.ts") is None
        with pytest.raises(ResourceAlreadyExistsError) as info:
            await files.create("readme.md")
        assert info.value.code == "resource_already_exists"
        replaced = await files.create("readme.md", {"size": 3}, replace=True)
        assert replaced.state == FileState(size=3)
        safe = await files.get_or_create("config.json", {"language": "json"})
        assert safe.state.language == "json"
        again = await files.get_or_create("config.json", {"language": "yaml"})
        assert again.state.language == "json"
        await files.create("src/deep/a.py")
        await files.create("src/b.py")
        assert await files.list() == [
            "files/config.json",
            "files/readme.md",
            "files/src/b.py",
            "files/src/deep/a.py",
        ]
        assert await files.list("src/") == ["files/src/b.py", "files/src/deep/a.py"]
        assert await files.list(limit=2) == ["files/config.json", "files/readme.md"]
        assert await files.list(after="files/readme.md") == [
            "files/src/b.py",
            "files/src/deep/a.py",
        ]
        assert await files.list(limit=1, after="files/config.json") == ["files/readme.md"]
        assert await files.count() == 4
        await files.delete("src/b.py")
        await files.delete("src/b.py")  # idempotent
        await files.delete("never-existed.txt")
        assert await files.count() == 3
        # instance refs carry the same operations as a static resource
        assert await ref.patch_state(size=10) is True
        assert (await files.get("readme.md")).state.size == 10
        with pytest.raises(StateValidationError):
            await ref.patch_state(size="big")
        await ref.write_content("hello")
        assert await (await files.get("readme.md")).read_content_raw() == "hello"
        # documented choice: the storage keys list() returns can be passed back
        keys = await files.list()
        assert [(await files.get(k)).key for k in keys] == keys
        return keys

    out = await run_probe(store_url, body, session_resources={"files": files_collection()})
    assert out.output == ["files/config.json", "files/readme.md", "files/src/deep/a.py"]


async def test_collection_upsert() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        files = ctx.session.resources.files
        first = await files.upsert("a.py", {"language": "python"}, create_only={"size": 1})
        assert first.state == FileState(language="python", size=1)
        second = await files.upsert("a.py", {"language": "py3"}, create_only={"size": 99})
        assert second.state == FileState(language="py3", size=1)
        return await files.count()

    out = await run_probe("memory://", body, session_resources={"files": files_collection()})
    assert out.output == 1


async def test_parameterized_and_single_segment_patterns() -> None:
    notes_def = define_resource_collection("[topic]/notes", Notes)
    flat_def = define_resource_collection("files/*", FileState)

    async def body(input: Any, ctx: Any) -> Any:
        notes = ctx.session.resources.notes
        ref = await notes.create({"topic": "react"}, {"entries": []})
        assert ref.key == "react/notes"
        with pytest.raises(ResourceNotFoundError):
            await notes.get({"topic": "rust"})
        with pytest.raises(KeyPatternError):
            await notes.create({})
        with pytest.raises(KeyPatternError):
            await notes.create({"topic": "a/b"})
        flat = ctx.session.resources.flat
        assert (await flat.create("readme.md")).key == "files/readme.md"
        with pytest.raises(KeyPatternError):
            await flat.create("src/utils.ts")
        return await notes.list()

    out = await run_probe(
        "memory://", body, session_resources={"notes": notes_def, "flat": flat_def}
    )
    assert out.output == ["react/notes"]


async def test_collection_keys_are_normalised_and_checked() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        files = ctx.session.resources.files
        assert (await files.create("src\\a.py")).key == "files/src/a.py"
        assert (await files.create("//src//b.py/")).key == "files/src/b.py"
        for bad in ("", "/", "../etc/passwd", "a/../../x", "a\x00b", "a\x07b", "a\nb"):
            with pytest.raises(KeyPatternError) as info:
                await files.create(bad)
            assert info.value.code == "invalid_key"
        return await files.list()

    out = await run_probe("memory://", body, session_resources={"files": files_collection()})
    assert out.output == ["files/src/a.py", "files/src/b.py"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: define_resource_collection("", FileState),
        lambda: define_resource_collection("files/**/x", FileState),
        lambda: define_resource_collection("files/*", FileState, max_instances=0),
        lambda: define_resource_collection("files/*", FileState, eviction="lru"),
        lambda: define_resource_collection("files/*", FileState, eviction="oldest"),
    ],
)
def test_collection_definition_errors(make: Callable[[], Any]) -> None:
    with pytest.raises(DefinitionError):
        make()


async def test_eviction_policies_and_hooks(store_url: str) -> None:
    log: list[tuple[Any, ...]] = []

    def created(key: str, state: Any, hook_ctx: Any) -> None:
        hook_ctx.log(f"Created: {key}")
        log.append(("created", key, state.language, hook_ctx.scope_type, hook_ctx.scope_id))

    def updated(key: str, state: Any, prev: Any, hook_ctx: Any) -> None:
        log.append(("updated", key, prev.size, state.size))

    def deleted(key: str, hook_ctx: Any) -> None:
        log.append(("deleted", key, hook_ctx.scope_type))

    lru = files_collection(
        max_instances=2,
        eviction="lru",
        on_instance_created=created,
        on_instance_updated=updated,
        on_instance_deleted=deleted,
    )
    oldest = define_resource_collection("old/*", FileState, max_instances=2, eviction="oldest")
    capped = define_resource_collection("cap/*", FileState, max_instances=1)

    async def step(input: Any, ctx: Any) -> Any:
        res = ctx.session.resources
        if input == 1:
            await res.files.create("a")
            await res.files.create("b")
            await res.old.create("a")
            await res.old.create("b")
            await res.cap.create("a")
            with pytest.raises(CollectionFullError) as info:
                await res.cap.create("b")
            assert info.value.code == "collection_full"
        elif input == 2:
            await res.files.get("a")  # touch a in a later request
            await res.old.get("a")
        else:
            await res.files.create("c")  # evicts b (least recently accessed)
            await res.old.create("c")  # evicts a (first created)
            ref = await res.files.get("c")
            await ref.patch_state(size=5)
        return [await res.files.list(), await res.old.list(), await res.cap.count()]

    f = define_flow(
        "evict",
        actions={
            "go": handler(
                name="go",
                session_resources={"files": lru, "old": oldest, "cap": capped},
                execute=step,
            )
        },
    )
    async with FlowServer([f], store=store_url) as server:
        first = await server.run("evict", "go", 1, user_id="alice")
        sid = first.session_id
        await asyncio.sleep(0.01)
        await server.run("evict", "go", 2, user_id="alice", session_id=sid)
        await asyncio.sleep(0.01)
        last = await server.run("evict", "go", 3, user_id="alice", session_id=sid)
    assert last.output == [["files/a", "files/c"], ["old/b", "old/c"], 1]
    assert ("created", "files/a", "text", "session", sid) in log
    assert ("deleted", "files/b", "session") in log
    assert ("updated", "files/c", 0, 5) in log
    deletes = [
        e for e in last.events if e.type == "resource_change" and e.data["changeType"] == "deleted"
    ]
    assert {e.data["key"] for e in deletes} >= {"files/b", "old/a"}


async def test_read_only_collection_allows_create_and_delete() -> None:
    ro = define_resource_collection("files/*", FileState, writable=False)

    async def body(input: Any, ctx: Any) -> Any:
        files = ctx.session.resources.files
        ref = await files.create("a", {"language": "go"})
        with pytest.raises(ResourceReadOnlyError):
            await ref.patch_state(size=1)
        with pytest.raises(ResourceReadOnlyError):
            await ref.write_content("x")
        await files.delete("a")
        return await files.count()

    assert (await run_probe("memory://", body, session_resources={"files": ro})).output == 0


async def test_collections_on_flow_level_scope_config(store_url: str) -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.user.resources.files.create("x.md")
        return await ctx.user.resources.files.list()

    out = await run_probe(
        store_url, body, flow={"user": ScopeConfig(resources={"files": files_collection()})}
    )
    assert out.output == ["files/x.md"]


# -------------------------------------------------------------------- §5 blocks, flows, targets


class Progress(BaseModel):
    progress: int = 0


class Step(BaseModel):
    step: int


async def test_targets_sequencer_state_and_self() -> None:
    async def report(input: Step, ctx: Any) -> Any:
        assert isinstance(input, Step)
        assert ctx.self is None
        await ctx.targets.research.patch_state(progress=input.step)
        await ctx.targets.research.inc_state(progress=1)
        assert ctx.get_target("research").state.progress == input.step + 1
        return input.step

    reporter = handler(
        name="progress-reporter",
        input=Step,
        target_state={"research": Progress},
        execute=report,
    )

    async def read_seq(input: Any, ctx: Any) -> Any:
        return ctx.sequencer.state.progress

    reader = handler(name="reader", execute=read_seq)

    async def own(input: Any, ctx: Any) -> Any:
        await ctx.self.inc_state(progress=2)
        return ctx.self.state.progress

    own_block = handler(name="own", state=Progress, execute=own)
    research = sequencer(name="research", state=Progress).then(reporter).then(reader)

    async def outside(input: Any, ctx: Any) -> Any:
        return [ctx.targets.research is None, ctx.get_target("research") is None]

    lonely = handler(name="lonely", target_state={"research": Progress}, execute=outside)
    f = define_flow("targets", actions={"go": research, "own": own_block, "lonely": lonely})
    async with FlowServer([f], store="memory://") as server:
        assert (await server.run("targets", "go", {"step": 7}, user_id="a")).output == 8
        assert (await server.run("targets", "own", user_id="a")).output == 2
        assert (await server.run("targets", "lonely", user_id="a")).output == [True, True]


async def test_sequencer_parallel_for_each_and_router() -> None:
    @handler(name="inc")
    async def inc(input: int, ctx: Any) -> int:
        return input + 1

    @handler(name="double")
    async def double(input: int, ctx: Any) -> int:
        return input * 2

    @handler(name="square")
    async def square(input: int, ctx: Any) -> int:
        await asyncio.sleep(0.001 * (5 - input))  # finish out of order
        return input * input

    chain = sequencer(name="chain").then(inc).then(double)
    fanout = sequencer(name="fan").for_each(
        lambda input, ctx: list(input), square, max_concurrency=2
    )
    par = sequencer(name="par").parallel([inc, double], max_concurrency=2)
    pick = router(
        name="pick",
        routes={"small": inc, "big": double},
        select=lambda input, ctx: "big" if input > 10 else "small",
    )
    f = define_flow("blocks", {"chain": chain, "fan": fanout, "par": par, "pick": pick})
    async with FlowServer([f], store="memory://") as server:
        assert (await server.run("blocks", "chain", 3, user_id="a")).output == 8
        assert (await server.run("blocks", "fan", [1, 2, 3, 4], user_id="a")).output == [
            1,
            4,
            9,
            16,
        ]
        assert (await server.run("blocks", "par", 5, user_id="a")).output == [6, 10]
        assert (await server.run("blocks", "pick", 3, user_id="a")).output == 4
        assert (await server.run("blocks", "pick", 30, user_id="a")).output == 60


async def test_scope_config_as_plain_dict_and_client_data_spelling() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(message_count=4)

    f = define_flow(
        "dicts",
        actions={"go": handler(name="go", execute=body)},
        session={
            "state": Counter,
            "client_data": {"doubled": lambda view: view.state.message_count * 2},
        },
        user={"state": Theme, "client": {"expose": ["theme"]}},
    )
    g = define_flow(
        "dicts2",
        actions={"go": handler(name="go", execute=body)},
        session=ScopeConfig(
            state=Counter, client_data={"doubled": lambda v: v.state.message_count * 2}
        ),
    )
    for flow in (f, g):
        async with FlowServer([flow], store="memory://") as server:
            res = await server.run(flow.kind, "go", user_id="a")
            snap = await server.snapshot(flow.kind, res.session_id, user_id="a")
        assert snap["clientData"]["session"] == {"doubled": 8}
    assert snap["flowKind"] == "dicts2"


def test_client_config_accepts_client_data_spelling() -> None:
    config = ClientConfig(client_data={"x": lambda view: 1})
    define_flow(
        "cc", actions={"go": handler(name="go", execute=noop)}, session=ScopeConfig(client=config)
    )


def test_expose_names_must_exist_on_the_schema() -> None:
    with pytest.raises(DefinitionError) as info:
        define_flow(
            "expose",
            actions={"go": handler(name="go", session_state=Counter, execute=noop)},
            session=ScopeConfig(client=ClientConfig(expose=["mesage_count"])),
        )
    assert "mesage_count" in str(info.value)


def test_define_flow_org_alias() -> None:
    f = define_flow(
        "orgflow",
        actions={"go": handler(name="go", execute=noop)},
        org=ScopeConfig(state=Theme),
        isolate_org_state=True,
    )
    assert f is not None


async def test_handler_decorator_with_input_model_and_output() -> None:
    class In(BaseModel):
        text: str

    class Out(BaseModel):
        length: int

    @handler(name="measure", input=In, output=Out)
    async def measure(input: In, ctx: Any) -> Out:
        return Out(length=len(input.text))

    f = define_flow("deco", actions={"measure": measure})
    async with FlowServer([f], store="memory://") as server:
        res = await server.run("deco", "measure", {"text": "hello"}, user_id="a")
    out = res.output
    if isinstance(out, BaseModel):
        out = out.model_dump()
    assert out == {"length": 5}


# ----------------------------------------------------------------------- §6 several flows


class ThemeStr(BaseModel):
    theme: str = "dark"


class ThemeNum(BaseModel):
    theme: int = 0


class Lang(BaseModel):
    language: str = "en"


def _user_flow(kind: str, model: type[BaseModel] | None, **kw: Any) -> Any:
    async def body(input: Any, ctx: Any) -> Any:
        if input:
            await ctx.user.patch_state(input)
        return ctx.user.state.model_dump() if model else ctx.user.state

    return define_flow(
        kind,
        actions={"go": handler(name=f"{kind}-go", execute=body)},
        user=ScopeConfig(state=model),
        **kw,
    )


def test_cross_flow_conflict_message_and_attributes() -> None:
    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer([_user_flow("chat", ThemeStr), _user_flow("admin", ThemeNum)], store="memory://")
    err = info.value
    assert str(err) == (
        'Flows "chat" and "admin" declare incompatible user state schemas (incompatible-types: '
        'field "theme": str vs int). Set isolate_user_state=True on one of the flows to opt out '
        "of cross-flow sharing, or reconcile the schemas."
    )
    assert (err.scope, err.field, err.flow_a, err.flow_b) == ("user", "theme", "chat", "admin")
    assert err.reason == "incompatible-types"
    assert "str" in err.detail and "int" in err.detail
    assert isinstance(err, SchemaConflictError) and err.code == "schema_conflict"


def test_cross_flow_project_conflict_message() -> None:
    def pflow(kind: str, model: type[BaseModel]) -> Any:
        return define_flow(
            kind, actions={"go": handler(name="go", execute=noop)}, project=ScopeConfig(state=model)
        )

    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer([pflow("chat", ThemeStr), pflow("admin", ThemeNum)], store="memory://")
    assert str(info.value) == (
        'Flows "chat" and "admin" declare incompatible project state schemas (incompatible-types: '
        'field "theme": str vs int). Set isolate_project_state=True on one of the flows to opt '
        "out of cross-flow sharing, or reconcile the schemas."
    )
    assert info.value.scope == "project"


def test_cross_flow_shared_resource_conflict() -> None:
    a = define_flow(
        "chat",
        actions={"go": handler(name="go", execute=noop)},
        user=ScopeConfig(resources={"prefs": define_resource(ThemeStr)}),
    )
    b = define_flow(
        "admin",
        actions={"go": handler(name="go", execute=noop)},
        user=ScopeConfig(resources={"prefs": define_resource(ThemeNum)}),
    )
    with pytest.raises(CrossFlowSchemaConflictError):
        FlowServer([a, b], store="memory://")


def test_cross_flow_identical_silent_disjoint_warns_isolated_ok() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FlowServer([_user_flow("chat", ThemeStr), _user_flow("admin", ThemeStr)], store="memory://")
    with pytest.warns(FlowStateWarning):
        FlowServer([_user_flow("chat", ThemeStr), _user_flow("admin", Lang)], store="memory://")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FlowServer(
            [_user_flow("chat", ThemeStr), _user_flow("admin", ThemeNum, isolate_user_state=True)],
            store="memory://",
        )


async def test_shared_and_isolated_user_records(store_url: str) -> None:
    chat = _user_flow("chat", ThemeStr)
    admin = _user_flow("admin", ThemeStr)
    async with FlowServer([chat, admin], store=store_url) as server:
        await server.run("chat", "go", {"theme": "light"}, user_id="u1")
        assert (await server.run("admin", "go", user_id="u1")).output == {"theme": "light"}
        assert (await server.run("admin", "go", user_id="u2")).output == {"theme": "dark"}
    if store_url == "memory://":
        return  # a memory store lives and dies with its server
    # flipping the flag moves no data: the isolated flow starts fresh, shared record stays
    admin_isolated = _user_flow("admin", ThemeStr, isolate_user_state=True)
    async with FlowServer([chat, admin_isolated], store=store_url) as server:
        assert (await server.run("admin", "go", user_id="u1")).output == {"theme": "dark"}
        await server.run("admin", "go", {"theme": "admin-only"}, user_id="u1")
        assert (await server.run("chat", "go", user_id="u1")).output == {"theme": "light"}


async def test_run_result_and_stream_yield_the_same_events() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(message_count=1)
        return {"echo": input}

    f = define_flow("ev", actions={"go": handler(name="go", session_state=Counter, execute=body)})
    async with FlowServer([f], store="memory://") as server:
        res = await server.run("ev", "go", "hi", user_id="a")
        assert isinstance(res, RunResult)
        assert res.output == {"echo": "hi"}
        assert isinstance(res.session_id, str) and isinstance(res.request_id, str)
        assert types_of(res.events) == ["request.created", "state_change", "request.completed"]
        assert [e.seq for e in res.events] == [1, 2, 3]
        assert all(isinstance(e, Event) and e.request_id == res.request_id for e in res.events)
        assert res.events[-1].data["output"] == {"echo": "hi"}
        sc = res.events[1].data
        assert (sc["scope"], sc["fields"], sc["version"]) == ("session", ["message_count"], 1)

        streamed = [
            e async for e in server.stream("ev", "go", "yo", user_id="a", session_id=res.session_id)
        ]
        assert types_of(streamed) == ["request.created", "state_change", "request.completed"]
        assert streamed[1].data["version"] == 2
        assert streamed[-1].data["output"] == {"echo": "yo"}
        assert len({e.request_id for e in streamed}) == 1
        assert streamed[0].request_id != res.request_id


async def test_run_reraises_and_stream_yields_request_failed() -> None:
    class Boom(Exception):
        pass

    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(message_count=1)
        if input == "boom":
            raise Boom("kaput")
        await ctx.session.patch_state(message_count="x")

    f = define_flow("fail", actions={"go": handler(name="go", session_state=Counter, execute=body)})
    async with FlowServer([f], store="memory://") as server:
        with pytest.raises(Boom):
            await server.run("fail", "go", "boom", user_id="a")
        with pytest.raises(StateValidationError):
            await server.run("fail", "go", "invalid", user_id="a")
        events = [e async for e in server.stream("fail", "go", "boom", user_id="a")]
        assert events[-1].type == "request.failed"
        assert "kaput" in events[-1].data["error"]["message"]
        assert set(events[-1].data["error"]) >= {"code", "message"}
        events = [e async for e in server.stream("fail", "go", "invalid", user_id="a")]
        assert events[-1].type == "request.failed"
        assert events[-1].data["error"]["code"] == "validation_error"


async def test_session_binding_user_kind_and_project(store_url: str) -> None:
    async def body(input: Any, ctx: Any) -> Any:
        return None if ctx.project is None else ctx.project.state.title

    f = define_flow("bind", actions={"go": handler(name="go", project_state=Doc, execute=body)})
    other = define_flow("other", actions={"go": handler(name="go", execute=noop)})
    async with FlowServer([f, other], store=store_url) as server:
        res = await server.run("bind", "go", user_id="alice", project_id="p1")
        sid = res.session_id
        # later runs use the binding: project id may be omitted
        assert (await server.run("bind", "go", user_id="alice", session_id=sid)).output == ""
        with pytest.raises(SessionNotFoundError):
            await server.run("bind", "go", user_id="alice", session_id=sid, project_id="p2")
        with pytest.raises(SessionNotFoundError):
            await server.run("bind", "go", user_id="mallory", session_id=sid)
        with pytest.raises(SessionNotFoundError):
            await server.run("other", "go", user_id="alice", session_id=sid)
        with pytest.raises(SessionNotFoundError) as info:
            await server.snapshot("bind", sid, user_id="mallory")
        assert info.value.code == "session_not_found"
        snap = await server.snapshot("bind", sid, user_id="alice")
        assert snap["sessionId"] == sid and snap["flowKind"] == "bind"


async def test_a_new_session_id_is_bound_at_first_run() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(message_count=1)
        return ctx.session.state.message_count

    f = define_flow(
        "first", actions={"go": handler(name="go", session_state=Counter, execute=body)}
    )
    async with FlowServer([f], store="memory://") as server:
        res = await server.run("first", "go", user_id="alice", session_id="my-session")
        assert res.session_id == "my-session"
        again = await server.run("first", "go", user_id="alice", session_id="my-session")
        assert again.output == 2
        with pytest.raises(SessionNotFoundError):
            await server.run("first", "go", user_id="bob", session_id="my-session")


async def test_open_store_and_async_context_manager(store_url: str) -> None:
    store = open_store(store_url)
    f = _user_flow("chat", ThemeStr)
    server = FlowServer([f], store=store)
    await server.run("chat", "go", {"theme": "x"}, user_id="a")
    await server.aclose()
    if store_url == "memory://":
        return  # a memory store lives and dies with its server
    async with FlowServer([f], store=store_url) as server2:
        assert (await server2.run("chat", "go", user_id="a")).output == {"theme": "x"}


async def test_flowstate_store_env_sets_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("FLOWSTATE_STORE", f"sqlite:///{db}")
    f = _user_flow("chat", ThemeStr)
    async with FlowServer([f]) as server:
        await server.run("chat", "go", {"theme": "env"}, user_id="a")
    assert db.exists()
    async with FlowServer([f], store=f"sqlite:///{db}") as server:
        assert (await server.run("chat", "go", user_id="a")).output == {"theme": "env"}


async def test_default_store_is_sqlite_under_dot_flowstate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWSTATE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    async with FlowServer([_user_flow("chat", ThemeStr)]) as server:
        await server.run("chat", "go", {"theme": "d"}, user_id="a")
    assert (tmp_path / ".flowstate" / "state.db").exists()


# ---------------------------------------------------------------------- §7 what clients see


class Secretive(BaseModel):
    mode: str = "chat"
    draft: str = ""


def client_flow() -> Any:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.patch_state(mode="agent", draft="SECRET-DRAFT")
        await ctx.session.resources.plan.patch_state(steps=["s1"], status="active")
        await ctx.session.resources.hidden.patch_state(steps=["SECRET-STEP"])
        await ctx.session.resources.files.create("a.md", {"language": "md", "size": 2})
        await ctx.session.resources.files.create("b.md", {"language": "SECRET-LANG"})
        await ctx.session.resources.doc.write_content("the content")
        return "ok"

    return define_flow(
        "client",
        actions={"go": handler(name="go", session_state=Secretive, execute=body)},
        session=ScopeConfig(
            resources={
                "plan": define_resource(Plan, client=ResourceClient(expose=["steps"])),
                "hidden": define_resource(Plan),
                "files": define_resource_collection(
                    "files/*", FileState, client=ResourceClient(exclude=["language"])
                ),
                "doc": define_resource(
                    Plan,
                    client=ResourceClient(data=lambda state: {"n": len(state.steps)}, content=True),
                ),
            },
            client=ClientConfig(
                expose=["mode"],
                derived={
                    "planSteps": lambda view: len(view.resources["plan"].steps),
                    "isAgent": lambda view: view.state.mode == "agent",
                },
            ),
        ),
    )


async def test_snapshot_shape_and_no_raw_state(store_url: str) -> None:
    async with FlowServer([client_flow()], store=store_url) as server:
        res = await server.run("client", "go", user_id="alice")
        snap = await server.snapshot("client", res.session_id, user_id="alice")
    assert snap == {
        "sessionId": res.session_id,
        "flowKind": "client",
        "clientData": {"session": {"mode": "agent", "planSteps": 1, "isAgent": True}},
        "resources": {
            "session": {
                "plan": {"clientData": {"steps": ["s1"]}},
                "files": {
                    "count": 2,
                    "items": [
                        {"key": "files/a.md", "clientData": {"size": 2}},
                        {"key": "files/b.md", "clientData": {"size": 0}},
                    ],
                },
                "doc": {"clientData": {"n": 0}},
            }
        },
    }
    everything = json.dumps([snap, [e.data for e in res.events]])
    for secret in ("SECRET-DRAFT", "SECRET-STEP", "SECRET-LANG", "the content"):
        assert secret not in everything
    # exposed field values may travel in events; the state_change names both fields
    sc = next(e for e in res.events if e.type == "state_change")
    assert sorted(sc.data["fields"]) == ["draft", "mode"]


async def test_snapshot_leaves_out_empty_scopes() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(message_count=1)

    f = define_flow(
        "empty",
        actions={"go": handler(name="go", session_state=Counter, execute=body)},
        session=ScopeConfig(client=ClientConfig(expose=["message_count"])),
    )
    async with FlowServer([f], store="memory://") as server:
        res = await server.run("empty", "go", user_id="a")
        snap = await server.snapshot("empty", res.session_id, user_id="a")
    assert snap == {
        "sessionId": res.session_id,
        "flowKind": "empty",
        "clientData": {"session": {"message_count": 1}},
    }


async def test_resource_change_events_use_change_type() -> None:
    async with FlowServer([client_flow()], store="memory://") as server:
        res = await server.run("client", "go", user_id="alice")
    rc = [e.data for e in res.events if e.type == "resource_change"]
    assert {"scope": "session", "key": "files/a.md", "changeType": "created"} in [
        {k: d[k] for k in ("scope", "key", "changeType")} for d in rc
    ]
    assert any(d["key"] == "plan" and d["changeType"] in ("created", "updated") for d in rc)


# ------------------------------------------------------------------------------ §8 HTTP


# SPEC §13: naming a project needs membership; alice belongs to p1 and p2.
TOKENS: dict[str, str | Identity] = {
    "tok-alice": Identity("alice", frozenset({"p1", "p2"})),
    "tok-bob": "bob",
}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


class Fail(BaseModel):
    kind: str


def http_flow() -> Any:
    async def add(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(message_count=1)
        return {"count": ctx.session.state.message_count}

    async def fail(input: Fail, ctx: Any) -> Any:
        files = ctx.session.resources.files
        if input.kind == "validation":
            await ctx.session.patch_state(message_count="x")
        if input.kind == "not_found":
            await files.get("nope")
        if input.kind == "exists":
            await files.create("a")
            await files.create("a")
        if input.kind == "read_only":
            await ctx.session.resources.ro.patch_state(steps=["x"])
        if input.kind == "conflict":
            raise ConcurrentModificationError("lost", attempts=3)
        raise RuntimeError("plain failure")

    return define_flow(
        "chat",
        actions={
            "add": handler(name="add", session_state=Counter, execute=add),
            "fail": handler(name="fail", input=Fail, session_state=Counter, execute=fail),
            "files": client_flow().actions["go"],
        },
        session=ScopeConfig(
            client=ClientConfig(expose=["message_count"]),
            resources={
                "files": define_resource_collection("files/*", FileState, client=ResourceClient()),
                "ro": define_resource(Plan, writable=False),
            },
        ),
    )


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    server = FlowServer([http_flow(), client_flow()], store="memory://", auth=TOKENS)
    app = create_app(server)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        yield http
    await server.aclose()


def parse_sse(text: str) -> list[dict[str, Any]]:
    frames = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        frame: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            frame[name] = value
        if "data" in frame:
            frame["data"] = json.loads(frame["data"])
            frames.append(frame)
    return frames


async def test_http_action_json_result_and_snapshot(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/flows/chat/actions/add", json={"input": None}, headers=ALICE)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "completed" and body["output"] == {"count": 1}
    sid = body["sessionId"]
    assert isinstance(body["requestId"], str)
    r = await api.post(
        "/api/flows/chat/actions/add", json={"input": None, "sessionId": sid}, headers=ALICE
    )
    assert r.json()["output"] == {"count": 2} and r.json()["sessionId"] == sid
    snap = (await api.get(f"/api/flows/sessions/{sid}/state", headers=ALICE)).json()
    assert snap["sessionId"] == sid and snap["flowKind"] == "chat"
    assert snap["clientData"] == {"session": {"message_count": 2}}
    # another user never sees it
    assert (await api.get(f"/api/flows/sessions/{sid}/state", headers=BOB)).status_code == 404
    r = await api.post(
        "/api/flows/chat/actions/add", json={"input": None, "sessionId": sid}, headers=BOB
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "session_not_found"


async def test_http_auth_required(api: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = await api.post("/api/flows/chat/actions/add", json={"input": None}, headers=headers)
        assert r.status_code == 401
        assert set(r.json()["error"]) >= {"code", "message"}
        assert (await api.get("/api/flows/sessions", headers=headers)).status_code == 401


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("validation", 422, "validation_error"),
        ("not_found", 404, "resource_not_found"),
        ("exists", 409, "resource_already_exists"),
        ("conflict", 409, "concurrent_modification"),
        ("read_only", 403, "resource_read_only"),
        ("other", 500, None),
    ],
)
async def test_http_failed_run_statuses(
    api: httpx.AsyncClient, kind: str, status: int, code: str | None
) -> None:
    r = await api.post(
        "/api/flows/chat/actions/fail", json={"input": {"kind": kind}}, headers=ALICE
    )
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "requestId", "sessionId"}
    assert set(body["error"]) >= {"code", "message"}
    if code:
        assert body["error"]["code"] == code


async def test_http_sse_action_and_resume(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/api/flows/chat/actions/add",
        json={"input": None},
        headers={**ALICE, "Accept": "text/event-stream"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = parse_sse(r.text)
    assert [f["event"] for f in frames] == ["request.created", "state_change", "request.completed"]
    rid = frames[0]["data"]["requestId"]
    for seq, f in enumerate(frames, start=1):
        assert f["id"] == f"{rid}:{seq}"
        assert f["data"]["type"] == f["event"]
        assert f["data"]["seq"] == seq and f["data"]["requestId"] == rid
    assert frames[1]["data"]["scope"] == "session" and frames[1]["data"]["fields"] == [
        "message_count"
    ]
    assert frames[2]["data"]["output"] == {"count": 1}
    replay = await api.get(
        f"/api/flows/chat/requests/{rid}/stream",
        headers={**ALICE, "Last-Event-ID": f"{rid}:1"},
    )
    assert replay.status_code == 200
    assert [f["data"]["seq"] for f in parse_sse(replay.text)] == [2, 3]
    full = await api.get(f"/api/flows/chat/requests/{rid}/stream", headers=ALICE)
    assert [f["data"]["seq"] for f in parse_sse(full.text)] == [1, 2, 3]
    other = await api.get(f"/api/flows/chat/requests/{rid}/stream", headers=BOB)
    assert other.status_code == 404


async def test_http_sessions_routes(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/flows/chat/sessions", json={}, headers=ALICE)
    assert r.status_code in (200, 201)
    sid = r.json()["sessionId"]
    listed = (await api.get("/api/flows/sessions", headers=ALICE)).json()
    assert sid in json.dumps(listed)
    assert sid not in (await api.get("/api/flows/sessions", headers=BOB)).text
    got = await api.get(f"/api/flows/sessions/{sid}", headers=ALICE)
    assert got.status_code == 200 and got.json()["sessionId"] == sid
    assert (await api.get(f"/api/flows/sessions/{sid}", headers=BOB)).status_code == 404
    assert (await api.delete(f"/api/flows/sessions/{sid}", headers=BOB)).status_code == 404
    gone = await api.delete(f"/api/flows/sessions/{sid}", headers=ALICE)
    assert gone.status_code in (200, 204)
    missing = await api.get(f"/api/flows/sessions/{sid}", headers=ALICE)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "session_not_found"


async def test_http_resource_content_and_listing(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/flows/client/actions/go", json={"input": None}, headers=ALICE)
    sid = r.json()["sessionId"]
    content = await api.get(f"/api/flows/sessions/{sid}/resources/doc/content", headers=ALICE)
    assert content.status_code == 200
    assert content.json()["name"] == "doc" and content.json()["content"] == "the content"
    # content=False (the default): no content route
    hidden = await api.get(f"/api/flows/sessions/{sid}/resources/plan/content", headers=ALICE)
    assert hidden.status_code in (403, 404)
    # a resource without client is invisible
    invisible = await api.get(f"/api/flows/sessions/{sid}/resources/hidden/content", headers=ALICE)
    assert invisible.status_code in (403, 404)
    assert "SECRET" not in invisible.text
    listing = await api.get(f"/api/flows/sessions/{sid}/resources/files", headers=ALICE)
    assert listing.status_code == 200
    assert "files/a.md" in listing.text and "SECRET-LANG" not in listing.text
    other = await api.get(f"/api/flows/sessions/{sid}/resources/files", headers=BOB)
    assert other.status_code == 404


async def test_http_body_size_limit_and_openapi(api: httpx.AsyncClient) -> None:
    big = {"input": "x" * 5_000_000}
    r = await api.post("/api/flows/chat/actions/add", json=big, headers=ALICE)
    assert r.status_code == 413
    assert r.json()["error"]["code"]
    spec = (await api.get("/openapi.json")).json()
    paths = spec["paths"]
    for route in (
        "/api/flows/{kind}/actions/{action}",
        "/api/flows/{kind}/requests/{requestId}/stream",
        "/api/flows/{kind}/sessions",
        "/api/flows/sessions",
        "/api/flows/sessions/{id}",
        "/api/flows/sessions/{id}/state",
        "/api/flows/users/me/stream",
    ):
        assert any(
            p.replace("{session_id}", "{id}")
            .replace("{sessionId}", "{id}")
            .replace("{request_id}", "{requestId}")
            == route
            for p in paths
        ), (route, sorted(paths))


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_http_callable_auth(style: str) -> None:
    def sync_auth(request: Request) -> str | None:
        return request.headers.get("x-user")

    async def async_auth(request: Request) -> str | None:
        return request.headers.get("x-user")

    server = FlowServer(
        [http_flow()], store="memory://", auth=sync_auth if style == "sync" else async_auth
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(server)), base_url="http://t"
    ) as http:
        ok = await http.post(
            "/api/flows/chat/actions/add", json={"input": None}, headers={"x-user": "carol"}
        )
        assert ok.status_code == 200
        no = await http.post("/api/flows/chat/actions/add", json={"input": None})
        assert no.status_code == 401
    await server.aclose()


# ------------------------------------------------------------------------- §9 scripts


def clean_environ() -> dict[str, str]:
    """This process's environment without any script-run context (WM_*, FLOWSTATE_*)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("WM_", "FLOWSTATE_"))}


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["flowstate", *args],
        cwd=cwd,
        env={**clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def last_json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


COUNTER_SCRIPT = """\
from flowstate import scripts

def main():
    prev = scripts.get_state()
    scripts.set_state((prev or 0) + 1)
    return {"prev": prev, "path": scripts.get_state_path()}
"""


def test_flowstate_run_state_paths_and_persistence(tmp_path: Path) -> None:
    (tmp_path / "counter.py").write_text(COUNTER_SCRIPT)
    env = {"FLOWSTATE_STORE": f"sqlite:///{tmp_path / 's.db'}", "USER": "alice"}
    env.pop("FLOWSTATE_PROJECT", None)
    first = run_cli(["run", "counter.py"], tmp_path, env)
    assert first.returncode == 0, first.stderr
    assert last_json(first.stdout) == {"prev": None, "path": "u/alice/counter/user"}
    second = run_cli(["run", "counter.py"], tmp_path, env)
    assert last_json(second.stdout) == {"prev": 1, "path": "u/alice/counter/user"}
    sched = run_cli(["run", "counter.py", "--schedule", "hourly"], tmp_path, env)
    assert last_json(sched.stdout) == {"prev": None, "path": "u/alice/counter/alice"}
    bob = run_cli(["run", "counter.py", "--user", "bob"], tmp_path, env)
    assert last_json(bob.stdout) == {"prev": None, "path": "u/bob/counter/user"}
    custom = run_cli(["run", "counter.py", "--path", "f/team/"], tmp_path, env)
    assert last_json(custom.stdout) == {"prev": None, "path": "f/team/state/user"}
    other_project = run_cli(["run", "counter.py", "--project", "ws2"], tmp_path, env)
    assert last_json(other_project.stdout)["prev"] is None


def test_flowstate_run_flow_steps_share_flow_user_state(tmp_path: Path) -> None:
    (tmp_path / "one.py").write_text(
        "from flowstate import scripts\n"
        "def main():\n"
        "    assert scripts.get_flow_user_state('k') is None\n"
        "    scripts.set_flow_user_state('k', {'from': 'a'})\n"
        "    scripts.set_state('A')\n"
        "    return scripts.get_state_path()\n"
    )
    (tmp_path / "two.py").write_text(
        "from flowstate import scripts\n"
        "def main():\n"
        "    here = scripts.get_state_path()\n"
        "    return [here, scripts.get_flow_user_state('k'), scripts.get_state()]\n"
    )
    env = {"FLOWSTATE_STORE": f"sqlite:///{tmp_path / 's.db'}", "USER": "alice"}
    res = run_cli(["run-flow", "--path", "f/team/etl", "one.py", "two.py"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    assert last_json(res.stdout) == ["f/team/etl/b_user", {"from": "a"}, None]
    # the next flow run starts with empty flow user state
    again = run_cli(["run-flow", "--path", "f/team/etl", "one.py", "two.py"], tmp_path, env)
    assert again.returncode == 0, again.stderr


def test_scripts_resources_and_state_share_the_project_scope(tmp_path: Path) -> None:
    (tmp_path / "res.py").write_text(
        "from flowstate import scripts\n"
        "def main():\n"
        "    scripts.set_resource({'host': 'db'}, 'f/team/conn', resource_type='postgresql')\n"
        "    scripts.set_state([1, 'two', {'3': None}])\n"
        "    return [scripts.get_resource('f/team/conn'), scripts.get_state()]\n"
    )
    env = {
        "FLOWSTATE_STORE": f"sqlite:///{tmp_path / 's.db'}",
        "USER": "alice",
        "FLOWSTATE_PROJECT": "acme",
    }
    res = run_cli(["run", "res.py"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    assert last_json(res.stdout) == [{"host": "db"}, [1, "two", {"3": None}]]


# ------------------------------------------------------------------------ §11 error codes


def test_error_hierarchy_and_codes() -> None:
    expected = {
        StateValidationError: "validation_error",
        ConcurrentModificationError: "concurrent_modification",
        SchemaConflictError: "schema_conflict",
        CrossFlowSchemaConflictError: "schema_conflict",
        KeyPatternError: "invalid_key",
    }
    for cls, code in expected.items():
        assert issubclass(cls, FlowStateError)
        assert cls.code == code
    assert issubclass(CrossFlowSchemaConflictError, SchemaConflictError)
    for cls in (
        ResourceNotFoundError,
        ResourceAlreadyExistsError,
        ResourceReadOnlyError,
        CollectionFullError,
        SessionNotFoundError,
        DefinitionError,
        AuthError,
    ):
        assert issubclass(cls, FlowStateError) and isinstance(cls.code, str)
    assert issubclass(FlowStateWarning, Warning)
    assert flowstate.Event is Event


# ----------------------------------------------------------------- messages name the culprit


async def test_error_messages_name_key_scope_and_rule() -> None:
    seen: dict[str, str] = {}

    async def body(input: Any, ctx: Any) -> Any:
        files = ctx.session.resources.files
        await files.create("a.md")
        for label, call in (
            ("exists", lambda: files.create("a.md")),
            ("missing", lambda: files.get("zz.md")),
            ("bad_key", lambda: files.create("../up")),
            ("full", lambda: files.create("b.md")),
            ("inc", lambda: ctx.session.inc_state(title=1)),
            ("ro", lambda: ctx.session.resources.plan.patch_state(status="active")),
        ):
            try:
                await call()
            except FlowStateError as exc:
                seen[label] = str(exc)

    await run_probe(
        "memory://",
        body,
        session_state=Doc,
        session_resources={
            "files": define_resource_collection("files/*", FileState, max_instances=1),
            "plan": define_resource(Plan, writable=False),
        },
    )
    assert "a.md" in seen["exists"]
    assert "zz.md" in seen["missing"]
    assert ".." in seen["bad_key"]
    assert "files" in seen["full"] and "1" in seen["full"]
    assert "title" in seen["inc"] and "session" in seen["inc"]
    assert "plan" in seen["ro"]


# ------------------------------------------------------------------- more of §7 and §8


async def test_exposed_values_may_travel_in_events_hidden_ones_never() -> None:
    async with FlowServer([client_flow()], store="memory://") as server:
        res = await server.run("client", "go", user_id="alice")
    sc = next(e for e in res.events if e.type == "state_change")
    dumped = json.dumps(sc.data)
    assert "agent" in dumped and "SECRET-DRAFT" not in dumped


async def test_derived_view_exposes_state_and_resources_for_each_scope() -> None:
    async def body(input: Any, ctx: Any) -> Any:
        await ctx.user.patch_state(theme="light")
        await ctx.project.resources.kb.push_state("steps", "p1")

    f = define_flow(
        "views",
        actions={"go": handler(name="go", execute=body)},
        user=ScopeConfig(
            state=Theme, client=ClientConfig(derived={"t": lambda view: view.state.theme})
        ),
        project=ScopeConfig(
            resources={"kb": define_resource(Plan)},
            client=ClientConfig(
                derived={
                    "n": lambda view: len(view.resources["kb"].steps),
                    # the seeds' attribute style reads the same state
                    "same": lambda view: view.resources.kb is view.resources["kb"],
                }
            ),
        ),
    )
    async with FlowServer([f], store="memory://") as server:
        res = await server.run("views", "go", user_id="a", project_id="acme")
        snap = await server.snapshot("views", res.session_id, user_id="a")
    assert snap["clientData"] == {"user": {"t": "light"}, "project": {"n": 1, "same": True}}
    assert "resources" not in snap


async def test_http_malformed_requests(api: httpx.AsyncClient) -> None:
    bad_json = await api.post(
        "/api/flows/chat/actions/add",
        content=b"{not json",
        headers={**ALICE, "content-type": "application/json"},
    )
    assert bad_json.status_code == 400
    assert set(bad_json.json()["error"]) >= {"code", "message"}
    unknown = await api.post("/api/flows/nokind/actions/add", json={"input": None}, headers=ALICE)
    assert unknown.status_code == 404
    bad_input = await api.post(
        "/api/flows/chat/actions/fail", json={"input": {"wrong": 1}}, headers=ALICE
    )
    assert bad_input.status_code == 422
    assert bad_input.json()["error"]["code"] == "validation_error"
    missing = await api.get("/api/flows/sessions/nope/state", headers=ALICE)
    assert missing.status_code == 404


async def test_http_collection_listing_pages(api: httpx.AsyncClient) -> None:
    sid = (
        await api.post("/api/flows/client/actions/go", json={"input": None}, headers=ALICE)
    ).json()["sessionId"]
    base = f"/api/flows/sessions/{sid}/resources/files"
    page = (await api.get(base, params={"limit": 1}, headers=ALICE)).json()
    assert page["count"] == 2
    assert [i["key"] for i in page["items"]] == ["files/a.md"]
    rest = (await api.get(base, params={"limit": 1, "after": "files/a.md"}, headers=ALICE)).json()
    assert [i["key"] for i in rest["items"]] == ["files/b.md"]


async def test_http_action_with_project_id_binds_the_session(api: httpx.AsyncClient) -> None:
    first = await api.post(
        "/api/flows/chat/actions/add", json={"input": None, "projectId": "p1"}, headers=ALICE
    )
    sid = first.json()["sessionId"]
    same = await api.post(
        "/api/flows/chat/actions/add", json={"input": None, "sessionId": sid}, headers=ALICE
    )
    assert same.status_code == 200
    other = await api.post(
        "/api/flows/chat/actions/add",
        json={"input": None, "sessionId": sid, "projectId": "p2"},
        headers=ALICE,
    )
    assert other.status_code == 404


# ---------------------------------------------------------------- scripts outside the runner


def test_scripts_read_the_runner_context_from_windmill_variables(tmp_path: Path) -> None:
    (tmp_path / "counter.py").write_text(COUNTER_SCRIPT)
    store = f"sqlite:///{tmp_path / 's.db'}"
    env = {"FLOWSTATE_STORE": store, "USER": "alice", "FLOWSTATE_PROJECT": "acme"}
    assert run_cli(["run", "counter.py"], tmp_path, env).returncode == 0
    probe = (
        "from flowstate import scripts\n"
        "import json\n"
        "print(json.dumps([scripts.get_state_path(), scripts.get_state()]))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={
            **clean_environ(),
            "FLOWSTATE_STORE": store,
            "WM_WORKSPACE": "acme",
            "WM_STATE_PATH": "u/alice/counter/user",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert last_json(res.stdout) == ["u/alice/counter/user", 1]


# ------------------------------------------------------------- caps, targets, snapshot kinds


@pytest.mark.parametrize("eviction", ["none", "lru", "oldest"])
async def test_cap_holds_under_concurrent_creates(
    store_url: str, eviction: Literal["none", "lru", "oldest"]
) -> None:
    capped = define_resource_collection("jobs/*", FileState, max_instances=3, eviction=eviction)

    async def create(input: Any, ctx: Any) -> Any:
        try:
            await ctx.project.resources.jobs.create(input)
        except CollectionFullError:
            return "full"
        return "created"

    async def count(input: Any, ctx: Any) -> Any:
        return [await ctx.project.resources.jobs.count(), await ctx.project.resources.jobs.list()]

    f = define_flow(
        "caps",
        actions={
            "create": handler(name="create", execute=create),
            "count": handler(name="count", execute=count),
        },
        project=ScopeConfig(resources={"jobs": capped}),
    )
    async with FlowServer([f], store=store_url) as server:
        results = await asyncio.gather(
            *(
                server.run("caps", "create", f"j{i}", user_id=f"u{i}", project_id="p")
                for i in range(8)
            )
        )
        n, keys = (await server.run("caps", "count", user_id="u0", project_id="p")).output
    outcomes = [r.output for r in results]
    assert n == 3 and len(keys) == 3
    if eviction == "none":
        assert outcomes.count("created") == 3 and outcomes.count("full") == 5
    else:
        assert outcomes == ["created"] * 8


async def test_get_target_reaches_any_named_ancestor_and_own_state_is_per_run() -> None:
    async def leaf(input: Any, ctx: Any) -> Any:
        outer = ctx.get_target("outer")
        assert outer is not None
        await outer.inc_state(progress=3)
        assert ctx.get_target("nobody") is None
        return ctx.sequencer.state.progress

    outer = sequencer(name="outer", state=Progress).then(handler(name="leaf", execute=leaf))
    f = define_flow("anc", actions={"go": outer})
    async with FlowServer([f], store="memory://") as server:
        first = await server.run("anc", "go", user_id="a")
        second = await server.run("anc", "go", user_id="a", session_id=first.session_id)
    assert (first.output, second.output) == (3, 3)


async def test_snapshot_of_another_flow_kind_is_not_found() -> None:
    a = _user_flow("chat", ThemeStr)
    b = _user_flow("admin", ThemeStr)
    async with FlowServer([a, b], store="memory://") as server:
        res = await server.run("chat", "go", user_id="alice")
        with pytest.raises(SessionNotFoundError):
            await server.snapshot("admin", res.session_id, user_id="alice")
        with pytest.raises(SessionNotFoundError):
            await server.snapshot("chat", "no-such-session", user_id="alice")


def test_resource_client_takes_one_projection() -> None:
    with pytest.raises(DefinitionError):
        ResourceClient(data=lambda s: s, expose=["steps"])
    with pytest.raises(DefinitionError):
        ResourceClient(expose=["steps"], exclude=["status"])


async def test_isolated_project_state_is_separate() -> None:
    def pflow(kind: str, **kw: Any) -> Any:
        async def body(input: Any, ctx: Any) -> Any:
            if input:
                await ctx.project.patch_state(theme=input)
            return ctx.project.state.theme

        return define_flow(
            kind,
            actions={"go": handler(name="go", execute=body)},
            project=ScopeConfig(state=ThemeStr),
            **kw,
        )

    async with FlowServer(
        [pflow("chat"), pflow("admin"), pflow("ops", isolate_project_state=True)],
        store="memory://",
    ) as server:
        await server.run("chat", "go", "light", user_id="a", project_id="p")
        assert (await server.run("admin", "go", user_id="b", project_id="p")).output == "light"
        assert (await server.run("ops", "go", user_id="b", project_id="p")).output == "dark"


def test_flowstate_run_defaults_user_to_user_without_USER(tmp_path: Path) -> None:
    (tmp_path / "counter.py").write_text(COUNTER_SCRIPT)
    env = {k: v for k, v in clean_environ().items() if k != "USER"}
    env["FLOWSTATE_STORE"] = f"sqlite:///{tmp_path / 's.db'}"
    res = subprocess.run(
        ["flowstate", "run", "counter.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert last_json(res.stdout)["path"] == "u/user/counter/user"


def test_overlapping_script_runs_in_threads_leave_no_environment_behind(tmp_path: Path) -> None:
    """Each run exports its context as WM_* variables; runs that overlap in one process must
    not leave one run's variables behind (they made a later get_state_path() lie)."""
    import threading

    from flowstate.scripts.runner import run_script

    (tmp_path / "slow.py").write_text(
        "import os, time\n"
        "def main(pause: float):\n"
        "    time.sleep(pause)\n"
        "    return os.environ.get('WM_JOB_PATH')\n"
    )
    before = {k: v for k, v in os.environ.items() if k.startswith("WM_")}
    store = f"sqlite:///{tmp_path / 's.db'}"
    results: dict[str, Any] = {}

    def run(name: str, pause: float) -> None:
        results[name] = run_script(
            tmp_path / "slow.py", {"pause": pause}, path=f"u/alice/{name}", store=store
        )

    first = threading.Thread(target=run, args=("first", 0.1))
    second = threading.Thread(target=run, args=("second", 0.4))
    first.start()
    time.sleep(0.05)  # second starts while first runs, and ends after it
    second.start()
    first.join()
    second.join()
    assert results["second"] == "u/alice/second"  # first's end did not wipe second's run
    assert {k: v for k, v in os.environ.items() if k.startswith("WM_")} == before
