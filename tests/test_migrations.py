"""Versioned schemas: stored records upgrade through migrations, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel

from flowstate import (
    CrossFlowSchemaConflictError,
    DefinitionError,
    FlowServer,
    FlowStateError,
    FlowStateWarning,
    MigrationError,
    SchemaVersionError,
    ScopeConfig,
    StateValidationError,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
)
from flowstate.migrations import SCHEMA_FIELD
from flowstate.stores import Store

Body = Callable[[Any], Awaitable[Any]]


def make_flow(kind: str = "chat", **scopes: Any) -> tuple[Any, list[Body]]:
    slot: list[Body] = []

    @handler(name="body")
    async def body(input: Any, ctx: Any) -> Any:
        return await slot[0](ctx)

    return define_flow(kind, actions={"body": body}, **scopes), slot


async def run(server: FlowServer, slot: list[Body], fn: Body, *, kind: str = "chat") -> Any:
    slot[:] = [fn]
    result = await server.run(kind, "body", None, user_id="alice", session_id="s1")
    return result.output


def dump(model: Any) -> dict[str, Any]:
    return dict(model.model_dump())


dump_of = dump


class V1(BaseModel):
    name: str = ""
    count: int = 0


class V2(BaseModel):  # name split into first/last
    first: str = ""
    last: str = ""
    count: int = 0


def split_name(fields: dict[str, Any]) -> dict[str, Any]:
    first, _, last = fields.pop("name", "").partition(" ")
    return {**fields, "first": first, "last": last}


async def write_v1(store: Store, fields: dict[str, Any]) -> None:
    flow, slot = make_flow(session=ScopeConfig(state=V1))
    server = FlowServer([flow], store=store)

    async def body(ctx: Any) -> None:
        await ctx.session.patch_state(fields)

    await run(server, slot, body)


def v2_server(store: Store, **extra: Any) -> tuple[FlowServer, list[Body]]:
    flow, slot = make_flow(
        session=ScopeConfig(state=V2, schema_version=2, migrations={2: split_name}, **extra)
    )
    return FlowServer([flow], store=store), slot


async def test_old_record_reads_migrated_and_is_written_back_with_the_next_write(
    store: Store,
) -> None:
    await write_v1(store, {"name": "Ada Lovelace", "count": 3})
    server, slot = v2_server(store)

    async def read(ctx: Any) -> Any:
        return ctx.session.state, ctx.session.version

    state, version = await run(server, slot, read)
    assert dump(state) == dump_of(V2(first="Ada", last="Lovelace", count=3))
    assert version == 1
    raw = await store.read("session/s1/state")
    assert raw is not None and raw.fields == {"name": "Ada Lovelace", "count": 3}  # read only

    async def inc(ctx: Any) -> Any:
        await ctx.session.inc_state(count=1)
        return ctx.session.state, ctx.session.version

    state, version = await run(server, slot, inc)
    assert dump(state) == dump_of(V2(first="Ada", last="Lovelace", count=4))
    assert version == 2
    raw = await store.read("session/s1/state")
    assert raw is not None
    assert raw.fields == {"first": "Ada", "last": "Lovelace", "count": 4, SCHEMA_FIELD: 2}


async def test_upgrade_write_emits_only_the_fields_the_operation_changed(store: Store) -> None:
    await write_v1(store, {"name": "Ada Lovelace"})
    server, slot = v2_server(store)
    slot[:] = [lambda ctx: ctx.session.inc_state(count=1)]
    result = await server.run("chat", "body", None, user_id="alice", session_id="s1")
    changes = [e.data for e in result.events if e.type == "state_change"]
    assert changes == [{"scope": "session", "operation": "inc", "fields": ["count"], "version": 2}]


async def test_new_records_are_stamped_with_the_current_version(store: Store) -> None:
    server, slot = v2_server(store)

    async def body(ctx: Any) -> Any:
        await ctx.session.patch_state(first="Grace")
        return ctx.session.state

    assert dump(await run(server, slot, body)) == dump_of(V2(first="Grace"))
    raw = await store.read("session/s1/state")
    assert raw is not None and raw.fields == {"first": "Grace", SCHEMA_FIELD: 2}


async def test_unversioned_code_writes_no_version_field(store: Store) -> None:
    await write_v1(store, {"name": "x"})
    raw = await store.read("session/s1/state")
    assert raw is not None and SCHEMA_FIELD not in raw.fields


async def test_concurrent_writers_on_an_outdated_record_lose_nothing(store: Store) -> None:
    await write_v1(store, {"name": "Ada Lovelace", "count": 0})
    servers = [v2_server(store) for _ in range(2)]

    async def one(i: int) -> None:
        server, slot = servers[i % 2]
        flow = server.flow("chat")
        # each run gets its own cells, so every writer starts from the outdated record
        del flow
        slot[:] = [lambda ctx: ctx.session.inc_state(count=1)]
        await server.run("chat", "body", None, user_id="alice", session_id="s1")

    await asyncio.gather(*(one(i) for i in range(12)))
    raw = await store.read("session/s1/state")
    assert raw is not None
    assert raw.fields == {"first": "Ada", "last": "Lovelace", "count": 12, SCHEMA_FIELD: 2}
    assert raw.version == 13


async def test_update_state_on_an_outdated_record(store: Store) -> None:
    await write_v1(store, {"name": "Ada Lovelace", "count": 1})
    server, slot = v2_server(store)

    async def body(ctx: Any) -> Any:
        await ctx.session.update_state(lambda s: {"last": s.last.upper(), "count": s.count * 10})
        return ctx.session.state

    assert dump(await run(server, slot, body)) == dump_of(
        V2(first="Ada", last="LOVELACE", count=10)
    )
    raw = await store.read("session/s1/state")
    assert raw is not None
    assert raw.fields == {"first": "Ada", "last": "LOVELACE", "count": 10, SCHEMA_FIELD: 2}


async def test_a_no_op_on_an_outdated_record_writes_nothing(store: Store) -> None:
    await write_v1(store, {"name": "Ada Lovelace", "count": 1})
    server, slot = v2_server(store)

    async def body(ctx: Any) -> Any:
        return await ctx.session.patch_state(count=1)

    assert await run(server, slot, body) is False
    raw = await store.read("session/s1/state")
    assert raw is not None and raw.version == 1 and SCHEMA_FIELD not in raw.fields


class Narrow(BaseModel):
    age: int = 0


async def test_a_record_that_does_not_validate_after_migration_raises_and_stays(
    store: Store,
) -> None:
    flow, slot = make_flow(session=ScopeConfig(state=None))
    server = FlowServer([flow], store=store)

    async def write(ctx: Any) -> None:
        await ctx.session.patch_state(age="forty")

    await run(server, slot, write)
    flow2, slot2 = make_flow(
        session=ScopeConfig(state=Narrow, schema_version=2, migrations={2: lambda f: f})
    )
    server2 = FlowServer([flow2], store=store)

    async def body(ctx: Any) -> Any:
        await ctx.session.inc_state(age=1)

    with pytest.raises(MigrationError) as info:
        await run(server2, slot2, body)
    err = info.value
    assert (err.key, err.from_version, err.to_version) == ("session/s1/state", 1, 2)
    assert '"age"' in str(err) and err.errors[0]["loc"] == ["age"]
    assert isinstance(err, FlowStateError) and err.code == "migration_error"
    raw = await store.read("session/s1/state")
    assert raw is not None and raw.fields == {"age": "forty"} and raw.version == 1


async def test_a_failing_migration_function_raises_migration_error(store: Store) -> None:
    await write_v1(store, {"name": "Ada"})

    def broken(fields: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("surname")

    flow, slot = make_flow(session=ScopeConfig(state=V2, schema_version=2, migrations={2: broken}))
    server = FlowServer([flow], store=store)
    with pytest.raises(MigrationError, match="migration to version 2") as info:
        await run(server, slot, lambda ctx: ctx.session.inc_state(count=1))
    assert info.value.from_version == 1 and info.value.to_version == 2


async def test_a_record_newer_than_the_code_is_refused_and_never_overwritten(
    store: Store,
) -> None:
    server, slot = v2_server(store)
    await run(server, slot, lambda ctx: ctx.session.patch_state(first="Ada"))
    flow, slot1 = make_flow(session=ScopeConfig(state=V1))  # rolled back to version 1
    old = FlowServer([flow], store=store)

    async def body(ctx: Any) -> Any:
        await ctx.session.inc_state(count=1)

    with pytest.raises(SchemaVersionError) as info:
        await run(old, slot1, body)
    err = info.value
    assert (err.key, err.stored_version, err.code_version) == ("session/s1/state", 2, 1)
    assert err.code == "schema_version_error"
    raw = await store.read("session/s1/state")
    assert raw is not None and raw.fields == {"first": "Ada", SCHEMA_FIELD: 2}


async def test_newer_record_refused_by_a_store_write_that_skips_the_read(store: Store) -> None:
    """A writer whose view was loaded before another process upgraded the record."""
    await write_v1(store, {"name": "Ada"})
    flow, slot = make_flow(session=ScopeConfig(state=V1))
    old = FlowServer([flow], store=store)
    server, slot2 = v2_server(store)
    gate = asyncio.Event()
    loaded = asyncio.Event()

    async def slow(ctx: Any) -> Any:
        loaded.set()
        await gate.wait()
        await ctx.session.inc_state(count=1)

    slot[:] = [slow]
    task = asyncio.create_task(old.run("chat", "body", None, user_id="alice", session_id="s1"))
    await loaded.wait()
    await run(server, slot2, lambda ctx: ctx.session.inc_state(count=5))
    gate.set()
    with pytest.raises(SchemaVersionError):
        await task
    raw = await store.read("session/s1/state")
    assert raw is not None and raw.fields[SCHEMA_FIELD] == 2 and raw.fields["count"] == 5


class Doc(BaseModel):
    title: str = ""
    words: int = 0


class DocV1(BaseModel):
    heading: str = ""
    words: str = "0"


def doc_v2(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    out["title"] = out.pop("heading", "")
    return out


def doc_v3(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "words": int(fields.get("words", "0"))}


async def test_resources_and_collection_instances_migrate(store: Store) -> None:
    old, slot = make_flow(
        session=ScopeConfig(
            resources={
                "doc": define_resource(DocV1),
                "notes": define_resource_collection("notes/*", DocV1),
            }
        )
    )
    server = FlowServer([old], store=store)

    async def write(ctx: Any) -> None:
        await ctx.session.resources.doc.patch_state(heading="Intro", words="12")
        await ctx.session.resources.notes.create("a", {"heading": "A", "words": "3"})

    await run(server, slot, write)
    migrations = {2: doc_v2, 3: doc_v3}
    new, slot2 = make_flow(
        session=ScopeConfig(
            resources={
                "doc": define_resource(Doc, schema_version=3, migrations=migrations),
                "notes": define_resource_collection(
                    "notes/*", Doc, schema_version=3, migrations=migrations
                ),
            }
        )
    )
    server2 = FlowServer([new], store=store)

    async def read(ctx: Any) -> Any:
        notes = ctx.session.resources.notes
        a = await notes.get("a")
        b = await notes.create("b", {"title": "B"})
        await ctx.session.resources.doc.inc_state(words=1)
        return ctx.session.resources.doc.state, a.state, b.state

    doc, a, b = await run(server2, slot2, read)
    assert dump(doc) == {"title": "Intro", "words": 13}
    assert dump(a) == {"title": "A", "words": 3}
    assert dump(b) == {"title": "B", "words": 0}
    raw_doc = await store.read("session/s1/r/doc")
    raw_a = await store.read("session/s1/c/notes/notes/a")
    raw_b = await store.read("session/s1/c/notes/notes/b")
    assert raw_doc is not None and raw_doc.fields == {
        "title": "Intro",
        "words": 13,
        SCHEMA_FIELD: 3,
    }
    assert raw_a is not None and raw_a.fields == {"heading": "A", "words": "3"}  # only read
    assert raw_b is not None and raw_b.fields == {"title": "B", "words": 0, SCHEMA_FIELD: 3}


def test_definition_errors() -> None:
    with pytest.raises(DefinitionError, match="missing: 3"):
        define_flow("a", session=ScopeConfig(schema_version=3, migrations={2: split_name}))
    with pytest.raises(DefinitionError, match=r"migrations\[5\] is outside 2..schema_version"):
        define_flow("a", session={"schema_version": 2, "migrations": {2: dict, 5: dict}})
    with pytest.raises(DefinitionError, match="integer >= 1"):
        define_flow("a", user=ScopeConfig(schema_version=0))
    with pytest.raises(DefinitionError, match="must be a function"):
        define_resource(V1, schema_version=2, migrations={2: "rename"})  # type: ignore[dict-item]
    with pytest.raises(DefinitionError, match=r'collection "files/\*".*missing: 2'):
        define_resource_collection("files/*", V1, schema_version=2)
    with pytest.raises(DefinitionError, match="request state lives for one run"):
        define_flow("a", request=ScopeConfig(schema_version=2, migrations={2: dict}))


async def test_free_form_state_cannot_write_the_reserved_field(store: Store) -> None:
    flow, slot = make_flow()
    server = FlowServer([flow], store=store)
    with pytest.raises(StateValidationError, match="reserved"):
        await run(server, slot, lambda ctx: ctx.session.patch_state({SCHEMA_FIELD: 9}))
    with pytest.raises(StateValidationError, match="reserved"):
        await run(server, slot, lambda ctx: ctx.session.set_state({SCHEMA_FIELD: 9}))
    assert await store.read("session/s1/state") is None


class Prefs(BaseModel):
    theme: str = "light"


def test_flows_sharing_a_record_must_agree_on_its_version() -> None:
    a, _ = make_flow("a", user=ScopeConfig(state=Prefs, schema_version=2, migrations={2: dict}))
    b, _ = make_flow("b", user=ScopeConfig(state=Prefs))
    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer([a, b], store="memory://")
    assert info.value.reason == "schema-version" and info.value.scope == "user"
    assert "schema_version=2 vs schema_version=1" in str(info.value)
    isolated, _ = make_flow("b", user=ScopeConfig(state=Prefs), isolate_user_state=True)
    FlowServer([a, isolated], store="memory://")  # isolated: no shared record
    doc = define_resource(Prefs, schema_version=2, migrations={2: dict})
    c, _ = make_flow("c", project=ScopeConfig(resources={"prefs": doc}))
    d, _ = make_flow("d", project=ScopeConfig(resources={"prefs": define_resource(Prefs)}))
    with pytest.raises(CrossFlowSchemaConflictError) as info:
        FlowServer([c, d], store="memory://")
    assert info.value.scope == "project" and info.value.field == "resources.prefs"


async def test_shared_user_record_keeps_other_flows_fields_through_migration(
    store: Store,
) -> None:
    class Mine(BaseModel):
        theme: str = "light"

    class Theirs(BaseModel):
        lang: str = "en"

    old_a, slot_a = make_flow("a", user=ScopeConfig(state=Mine))
    old_b, slot_b = make_flow("b", user=ScopeConfig(state=Theirs))
    with pytest.warns(FlowStateWarning, match="different but compatible"):
        server = FlowServer([old_a, old_b], store=store)
    slot_a[:] = [lambda ctx: ctx.user.patch_state(theme="dark")]
    await server.run("a", "body", None, user_id="alice")
    slot_b[:] = [lambda ctx: ctx.user.patch_state(lang="fr")]
    await server.run("b", "body", None, user_id="alice")

    def upper(fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "theme": fields.get("theme", "light").upper()}

    new_a, slot_a2 = make_flow(
        "a", user=ScopeConfig(state=Mine, schema_version=2, migrations={2: upper})
    )
    server2 = FlowServer([new_a], store=store)
    slot_a2[:] = [lambda ctx: ctx.user.patch_state(theme="DIM")]
    await server2.run("a", "body", None, user_id="alice")
    raw = await store.read("user/alice/state")
    assert raw is not None and raw.fields == {"theme": "DIM", "lang": "fr", SCHEMA_FIELD: 2}
