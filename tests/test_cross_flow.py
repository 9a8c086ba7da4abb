"""Several flows on one server: the registration check and shared/isolated user & project state."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from flowstate import (
    CrossFlowSchemaConflictError,
    FlowServer,
    FlowStateWarning,
    SchemaConflictError,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
    open_store,
)
from flowstate.stores import Store


class ThemeStr(BaseModel):
    theme: str = "dark"


class ThemeInt(BaseModel):
    theme: int = 0


class ThemeLiteral(BaseModel):
    theme: Literal["dark", "light"] = "dark"


class Locale(BaseModel):
    locale: str = "en"


class LastRun(BaseModel):
    lastRunAt: float = 0


async def noop(input: Any, ctx: Any) -> Any:
    return input


def flow(kind: str, **scopes: Any) -> Any:
    return define_flow(kind, actions={"go": handler(name=f"{kind}-go", execute=noop)}, **scopes)


def register(*flows: Any, store: str | Store = "memory://") -> tuple[FlowServer, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        server = FlowServer(list(flows), store=store)
    return server, [str(w.message) for w in caught if issubclass(w.category, FlowStateWarning)]


# ------------------------------------------------------------------------ registration check


def test_incompatible_user_schemas_raise_with_the_exact_message(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "state.db"
    chat = flow("chat", user={"state": ThemeStr})
    admin = flow("admin", user={"state": ThemeInt})
    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer([chat, admin], store=f"sqlite:///{db}")
    err = info.value
    assert str(err) == (
        'Flows "chat" and "admin" declare incompatible user state schemas (incompatible-types: '
        'field "theme": str vs int). Set isolate_user_state=True on one of the flows to opt out '
        "of cross-flow sharing, or reconcile the schemas."
    )
    assert (err.scope, err.field, err.flow_a, err.flow_b) == ("user", "theme", "chat", "admin")
    assert err.reason == "incompatible-types"
    assert err.detail == 'field "theme": str vs int'
    assert isinstance(err, SchemaConflictError)
    assert err.code == "schema_conflict"
    assert not db.exists() and not db.parent.exists()  # nothing stored, not even the file


def test_incompatible_project_schemas_name_the_project_flag() -> None:
    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer(
            [flow("chat", project={"state": ThemeStr}), flow("admin", org={"state": ThemeInt})],
            store="memory://",
        )
    assert info.value.scope == "project"
    assert "declare incompatible project state schemas" in str(info.value)
    assert "Set isolate_project_state=True on one of the flows" in str(info.value)


def test_identical_schemas_register_silently() -> None:
    class ThemeStrAgain(BaseModel):
        theme: str = "dark"

    _, caught = register(
        flow("chat", user={"state": ThemeStr}), flow("a", user={"state": ThemeStr})
    )
    assert caught == []
    _, caught = register(
        flow("chat", user={"state": ThemeStr}), flow("b", user={"state": ThemeStrAgain})
    )
    assert caught == []


def test_flows_that_declare_nothing_for_a_scope_do_not_take_part() -> None:
    _, caught = register(flow("chat", user={"state": ThemeStr}), flow("bare"))
    assert caught == []


def test_disjoint_schemas_register_with_a_warning_naming_the_fields() -> None:
    _, caught = register(
        flow("chat", user={"state": ThemeStr}), flow("admin", user={"state": Locale})
    )
    assert len(caught) == 1
    message = caught[0]
    assert 'Flows "chat" and "admin" share user state with different but compatible schemas' in (
        message
    )
    assert 'field "theme" only in "chat"' in message
    assert 'field "locale" only in "admin"' in message
    assert "isolate_user_state=True" in message


def test_narrower_type_or_other_default_is_compatible_but_warned() -> None:
    _, caught = register(
        flow("chat", user={"state": ThemeStr}), flow("admin", user={"state": ThemeLiteral})
    )
    assert len(caught) == 1 and 'field "theme" differs' in caught[0]

    class OtherDefault(BaseModel):
        theme: str = "light"

    _, caught = register(
        flow("chat", user={"state": ThemeStr}), flow("admin", user={"state": OtherDefault})
    )
    assert len(caught) == 1 and 'field "theme" differs' in caught[0]


def test_isolated_flows_are_not_compared() -> None:
    _, caught = register(
        flow("chat", user={"state": ThemeStr}),
        flow("admin", user={"state": ThemeInt}, isolate_user_state=True),
        flow("ops", project={"state": ThemeInt}, user={"state": ThemeStr}),
        flow("ops2", project={"state": ThemeStr}, isolate_project_state=True),
    )
    assert caught == []


def test_the_flags_are_independent() -> None:
    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer(
            [
                flow("chat", project={"state": ThemeStr}),
                flow("admin", project={"state": ThemeInt}, isolate_user_state=True),
            ],
            store="memory://",
        )
    assert info.value.scope == "project"


def test_shared_resources_are_compared_too() -> None:
    class Doc(BaseModel):
        title: str = ""

    class DocInt(BaseModel):
        title: int = 0

    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer(
            [
                flow("chat", user={"resources": {"doc": define_resource(Doc)}}),
                flow("admin", user={"resources": {"doc": define_resource(DocInt)}}),
            ],
            store="memory://",
        )
    assert info.value.field == "resources.doc.title"
    assert info.value.detail == 'field "resources.doc.title": str vs int'

    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer(
            [
                flow("chat", user={"resources": {"doc": define_resource(Doc)}}),
                flow("admin", user={"resources": {"doc": define_resource_collection("d/*", Doc)}}),
            ],
            store="memory://",
        )
    assert info.value.reason == "incompatible-resources"

    shared = define_resource(Doc)
    _, caught = register(
        flow("chat", user={"resources": {"doc": shared}}),
        flow("admin", user={"resources": {"doc": shared}}),
    )
    assert caught == []
    _, caught = register(
        flow("chat", user={"resources": {"doc": shared}}),
        flow("admin", user={"resources": {"notes": define_resource(Doc)}}),
    )
    assert len(caught) == 1 and 'resource "doc" only in "chat"' in caught[0]


# --------------------------------------------------------------------------- shared records


def writer_flow(kind: str, model: type[BaseModel], *, scope: str = "user", **flags: Any) -> Any:
    async def write(input: Any, ctx: Any) -> Any:
        handle = ctx.user if scope == "user" else ctx.project
        if input:
            await handle.patch_state(input)
        return handle.state.model_dump(), handle.version

    options: dict[str, Any] = {f"{scope}_state": model}
    block = handler(name=f"{kind}-rw", execute=write, **options)
    return define_flow(kind, actions={"rw": block}, **flags)


async def rw(server: FlowServer, kind: str, patch: Any = None, **ids: Any) -> Any:
    result = await server.run(kind, "rw", patch, user_id="alice", **ids)
    return result.output


async def test_shared_user_state_is_one_record_and_isolated_flows_keep_their_own(
    store_url: str,
) -> None:
    class Maint(BaseModel):
        theme: str = "dark"
        lastRunAt: float = 0

    chat = writer_flow("chat", ThemeStr)
    admin = writer_flow("admin", ThemeLiteral)
    maintenance = writer_flow("maintenance", Maint, isolate_user_state=True)
    store = open_store(store_url)  # one store object, so memory:// persists across servers
    server, _ = register(chat, admin, maintenance, store=store)
    async with server:
        assert await rw(server, "chat", {"theme": "light"}) == ({"theme": "light"}, 1)
        assert await rw(server, "admin") == ({"theme": "light"}, 1)  # same record
        assert await rw(server, "maintenance") == ({"theme": "dark", "lastRunAt": 0}, 0)
        await rw(server, "maintenance", {"theme": "blue", "lastRunAt": 5.0})
        assert await rw(server, "chat") == ({"theme": "light"}, 1)  # untouched
        shared = await server.store.read("user/alice/state")
        assert shared is not None and shared.fields == {"theme": "light"}
        isolated = await server.store.read("user@maintenance/alice/state")
        assert isolated is not None
        assert dict(isolated.fields) == {"theme": "blue", "lastRunAt": 5.0}

    # Flipping the flag moves no data: the now-shared flow reads the shared record.
    shared_maintenance = writer_flow("maintenance", Maint)
    server, caught = register(chat, shared_maintenance, store=store)
    assert len(caught) == 1
    async with server:
        assert await rw(server, "maintenance") == ({"theme": "light", "lastRunAt": 0}, 1)
        isolated = await server.store.read("user@maintenance/alice/state")
        assert isolated is not None
        assert dict(isolated.fields) == {"theme": "blue", "lastRunAt": 5.0}
    await store.aclose()


async def test_project_state_sharing_and_isolation(store_url: str) -> None:
    a = writer_flow("a", ThemeStr, scope="project")
    b = writer_flow("b", ThemeStr, scope="project")
    c = writer_flow("c", ThemeStr, scope="project", isolate_project_state=True)
    async with FlowServer([a, b, c], store=store_url) as server:
        await rw(server, "a", {"theme": "x"}, project_id="p1")
        assert await rw(server, "b", project_id="p1") == ({"theme": "x"}, 1)
        assert await rw(server, "c", project_id="p1") == ({"theme": "dark"}, 0)
        assert await rw(server, "b", project_id="p2") == ({"theme": "dark"}, 0)
        await rw(server, "c", {"theme": "private"}, project_id="p1")
        assert await rw(server, "a", project_id="p1") == ({"theme": "x"}, 1)


async def test_user_state_is_shared_across_sessions_and_users_are_apart(store_url: str) -> None:
    chat = writer_flow("chat", ThemeStr)
    async with FlowServer([chat], store=store_url) as server:
        first = await server.run("chat", "rw", {"theme": "light"}, user_id="alice")
        second = await server.run("chat", "rw", None, user_id="alice")
        assert first.session_id != second.session_id
        assert second.output == ({"theme": "light"}, 1)
        bob = await server.run("chat", "rw", None, user_id="bob")
        assert bob.output == ({"theme": "dark"}, 0)


# ------------------------------------------------- startup check: what fails instead of warning


def test_disjoint_literal_sets_fail_the_startup_check() -> None:
    class Light(BaseModel):
        theme: Literal["white", "black"] = "white"

    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer(
            [flow("chat", user={"state": ThemeLiteral}), flow("admin", user={"state": Light})],
            store="memory://",
        )
    assert str(info.value) == (
        'Flows "chat" and "admin" declare incompatible user state schemas (disjoint-literals: '
        "field \"theme\": Literal['dark', 'light'] vs Literal['white', 'black']). Set "
        "isolate_user_state=True on one of the flows to opt out of cross-flow sharing, or "
        "reconcile the schemas."
    )
    assert (info.value.reason, info.value.field) == ("disjoint-literals", "theme")
    # Overlapping sets stay a warning: some values are valid for both flows.
    _, caught = register(
        flow("chat", user={"state": ThemeLiteral}), flow("admin", user={"state": ThemeStr})
    )
    assert len(caught) == 1


def test_a_field_required_by_one_flow_and_absent_in_another_fails_the_startup_check() -> None:
    class Named(BaseModel):
        name: str
        theme: str = "dark"

    for order, detail in (
        (("chat", Named, "admin", ThemeStr), 'field "name": required str vs absent'),
        (("chat", ThemeStr, "admin", Named), 'field "name": absent vs required str'),
    ):
        a, ma, b, mb = order
        with pytest.raises(CrossFlowSchemaConflictError) as info:
            FlowServer(
                [flow(a, user={"state": ma}), flow(b, user={"state": mb})], store="memory://"
            )
        err = info.value
        assert (err.reason, err.field, err.detail) == ("missing-required-field", "name", detail)
        assert str(err) == (
            f'Flows "chat" and "admin" declare incompatible user state schemas '
            f"(missing-required-field: {detail}). Set isolate_user_state=True on one of the "
            "flows to opt out of cross-flow sharing, or reconcile the schemas."
        )

    # Declared with a default in the other flow: every record has a name, so only a warning.
    class NamedDefault(BaseModel):
        name: str = "anon"
        theme: str = "dark"

    _, caught = register(
        flow("chat", user={"state": Named}), flow("admin", user={"state": NamedDefault})
    )
    assert len(caught) == 1 and 'field "name" differs' in caught[0]


def test_one_collection_with_two_caps_or_evictions_fails_the_startup_check() -> None:
    class Doc(BaseModel):
        title: str = ""

    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (dict(max_instances=3, eviction="oldest"), dict(max_instances=100, eviction="oldest")),
        (dict(max_instances=3, eviction="lru"), dict(max_instances=3, eviction="oldest")),
        (dict(max_instances=3), dict()),
    ]
    for ca, cb in cases:
        with pytest.raises(CrossFlowSchemaConflictError) as info:
            FlowServer(
                [
                    flow(
                        "a",
                        project={
                            "resources": {"docs": define_resource_collection("d/*", Doc, **ca)}
                        },
                    ),
                    flow(
                        "b",
                        project={
                            "resources": {"docs": define_resource_collection("d/*", Doc, **cb)}
                        },
                    ),
                ],
                store="memory://",
            )
        err = info.value
        assert (err.reason, err.field, err.scope) == (
            "incompatible-collections",
            "resources.docs",
            "project",
        )
        assert f"max_instances={ca.get('max_instances')}" in err.detail
        assert "isolate_project_state=True" in str(err)
    # The same caps on two definitions share fine (a warning-free registration).
    _, caught = register(
        flow(
            "a",
            project={
                "resources": {"docs": define_resource_collection("d/*", Doc, max_instances=3)}
            },
        ),
        flow(
            "b",
            project={
                "resources": {"docs": define_resource_collection("d/*", Doc, max_instances=3)}
            },
        ),
    )
    assert caught == []
