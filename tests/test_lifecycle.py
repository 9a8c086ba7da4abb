"""Bulk lifecycle operations on every backend: migrate-state, gc, copy, export/import."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import flowstate.resources
from flowstate import (
    FlowServer,
    ScopeConfig,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
    open_store,
)
from flowstate.lifecycle import classify, collect_garbage, migrate_state
from flowstate.migrations import SCHEMA_FIELD
from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores import Record, Store
from flowstate.transfer import (
    DumpError,
    Progress,
    copy_records,
    digest,
    export_dump,
    import_dump,
)


class Old(BaseModel):
    name: str = ""
    age: str = "0"


class New(BaseModel):
    full_name: str = ""
    age: int = 0


def rename(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    out["full_name"] = out.pop("name", "")
    return out


def narrow(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "age": int(fields.get("age", "0"))}  # "forty" raises: reported


@handler(name="write")
async def write(input: Any, ctx: Any) -> Any:
    await ctx.session.patch_state(input)
    await ctx.user.patch_state(input)
    await ctx.session.resources.card.patch_state(input)
    await ctx.session.resources.items.create("x", input)
    return None


@handler(name="touch")
async def touch(input: Any, ctx: Any) -> Any:
    return ctx.session.state


def old_flow() -> Any:
    return define_flow(
        "app",
        actions={"write": write},
        session=ScopeConfig(
            state=Old,
            resources={
                "card": define_resource(Old),
                "items": define_resource_collection("items/*", Old),
            },
        ),
        user=ScopeConfig(state=Old),
    )


def new_flow(**session: Any) -> Any:
    migrations = {2: rename, 3: narrow}
    return define_flow(
        "app",
        actions={"write": write, "touch": touch},
        session=ScopeConfig(
            state=New,
            schema_version=3,
            migrations=migrations,
            resources={
                "card": define_resource(New, schema_version=3, migrations=migrations),
                "items": define_resource_collection(
                    "items/*", New, schema_version=3, migrations=migrations
                ),
            },
            **session,
        ),
        user=ScopeConfig(state=New, schema_version=3, migrations=migrations),
    )


def test_classify_keys() -> None:
    assert classify("session/s%2F1/state") is not None
    kind = classify("session/s%2F1/c/items/items/a/b")
    assert kind is not None and (kind.scope_id, kind.what, kind.name) == (
        "s/1",
        "instance",
        "items",
    )
    iso = classify("user@chat/alice/r/prefs")
    assert iso is not None and (iso.isolated_kind, iso.what) == ("chat", "resource")
    for other in ("_sessions/s1", "_user_sessions/a/s1", "session/s1", "session@x/s/state"):
        assert classify(other) is None


async def test_migrate_state_upgrades_everything_and_reports_failures(store: Store) -> None:
    old = FlowServer([old_flow()], store=store)
    for i in range(5):
        await old.run(
            "app", "write", {"name": f"n{i}", "age": str(i)}, user_id=f"u{i}", session_id=f"s{i}"
        )
    await old.run(
        "app", "write", {"name": "bad", "age": "forty"}, user_id="ubad", session_id="sbad"
    )
    server = FlowServer([new_flow()], store=store)

    dry = await migrate_state(server, dry_run=True)
    # per session: state, card, items/x; per user: state → 4 records; 6 writers
    assert (dry.upgraded, len(dry.failed)) == (20, 4)
    assert (await store.read("session/s1/state")).fields == {"name": "n1", "age": "1"}  # type: ignore[union-attr]

    progress = Progress()
    report = await migrate_state(server, batch=3, progress=progress)
    assert report.upgraded == 20 and report.current == 0
    assert sorted(k for k, _ in report.failed) == [
        "session/sbad/c/items/items/x",
        "session/sbad/r/card",
        "session/sbad/state",
        "user/ubad/state",
    ]
    assert all("migration to version 3" in why and "forty" in why for _, why in report.failed)
    assert report.other >= 0 and progress.done == report.scanned
    state = await store.read("session/s1/state")
    assert state is not None and state.fields == {"full_name": "n1", "age": 1, SCHEMA_FIELD: 3}
    assert state.version == 2
    bad = await store.read("session/sbad/state")
    assert bad is not None and bad.fields == {"name": "bad", "age": "forty"}  # untouched
    again = await migrate_state(server)
    assert (again.upgraded, again.current, len(again.failed)) == (0, 20, 4)


async def test_migrate_state_refuses_records_newer_than_the_code(store: Store) -> None:
    server = FlowServer([new_flow()], store=store)
    await server.run("app", "write", {"full_name": "x", "age": 3}, user_id="u", session_id="s")
    old = FlowServer([old_flow()], store=store)
    report = await migrate_state(old)
    assert report.upgraded == 0 and len(report.failed) == 4
    assert all("newer than this code's version 1" in why for _, why in report.failed)
    assert (await store.read("session/s/state")).fields[SCHEMA_FIELD] == 3  # type: ignore[union-attr]


async def test_gc_removes_idle_sessions_and_old_instances(store: Store) -> None:
    flow = define_flow(
        "app",
        actions={"write": write, "touch": touch},
        session=ScopeConfig(
            state=Old,
            ttl=timedelta(hours=1),
            resources={
                "card": define_resource(Old),
                "items": define_resource_collection("items/*", Old, max_age=timedelta(hours=2)),
            },
        ),
        user=ScopeConfig(state=Old),
    )
    server = FlowServer([flow], store=store)
    for i in range(4):
        await server.run("app", "write", {"name": "n"}, user_id="alice", session_id=f"s{i}")
    before = await store.count("")
    # nothing has expired yet
    assert (await collect_garbage(server)).sessions == 0
    assert await store.count("") == before
    later = time.time_ns() + 3600 * 10**9 + 10**9
    report = await collect_garbage(server, now_ns=later)
    assert report.sessions == 4
    assert await store.count("session/") == 0 and await store.count("_sessions/") == 0
    assert await store.count("_user_sessions/") == 0
    assert await store.count("user/") == 1  # user state is not a session's
    assert await server.list_sessions(user_id="alice") == []


@handler(name="probe")
async def probe(input: Any, ctx: Any) -> Any:
    items = ctx.session.resources.items
    if input == "create":
        return (await items.create("x", {"name": "again"})).state.name
    return None if await items.get_optional("x") is None else "present"


class _ShiftedClock:
    """Stands in for the ``time`` module where expiry is decided: real time plus ``ahead``."""

    def __init__(self) -> None:
        self.ahead = 0

    def time_ns(self) -> int:
        return time.time_ns() + self.ahead


async def test_expired_instances_read_as_deleted_and_gc_frees_them(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clock that decides expiry is moved forward instead of sleeping, so a slow machine
    # cannot make a fresh instance look expired.
    clock = _ShiftedClock()
    monkeypatch.setattr(flowstate.resources, "time", clock)
    items = define_resource_collection("items/*", Old, max_age=timedelta(minutes=1))
    flow = define_flow(
        "app",
        actions={"write": write, "probe": probe},
        session=ScopeConfig(state=Old, resources={"card": define_resource(Old), "items": items}),
        user=ScopeConfig(state=Old),
    )
    server = FlowServer([flow], store=store)

    async def run(input: Any = None, action: str = "probe") -> Any:
        return (await server.run("app", action, input, user_id="alice", session_id="s1")).output

    await run({"name": "n"}, "write")
    assert await run() == "present"
    clock.ahead = 61 * 10**9
    assert await run() is None  # expired: reads as deleted before gc runs
    assert (await collect_garbage(server)).instances == 0  # not expired at gc's own clock
    report = await collect_garbage(server, now_ns=clock.time_ns())
    assert report.instances == 1 and report.sessions == 0
    assert await store.count("session/s1/c/") == 0
    assert await run("create") == "again"
    clock.ahead += 61 * 10**9
    assert await run("create") == "again"  # an expired key can be created anew, before gc


async def test_copy_export_import_keep_every_record_exactly(store: Store, tmp_path: Any) -> None:
    server = FlowServer([new_flow()], store=store)
    for i in range(7):
        await server.run(
            "app", "write", {"full_name": f"é{i}\u2028", "age": i}, user_id="u", session_id=f"s{i}"
        )
    await server.set_session_metadata("s1", {"title": "T"}, user_id="u")
    source_digest = await digest(store)
    assert source_digest.count == await store.count("")

    sqlite = open_store(f"sqlite:///{tmp_path / 'copy.db'}")
    try:
        progress = Progress()
        n = await copy_records(store, sqlite, batch=4, progress=progress)
        assert n == source_digest.count == progress.done
        assert await digest(sqlite) == source_digest
        for record in await store.export_records():
            assert await sqlite.read(record.key) == record
        # the copy is a working store for the same app
        copy_server = FlowServer([new_flow()], store=sqlite)
        out = await copy_server.run("app", "touch", None, user_id="u", session_id="s3")
        assert out.output.full_name == "é3\u2028"
    finally:
        await sqlite.aclose()

    buffer = io.StringIO()
    exported = await export_dump(store, buffer, batch=3)
    assert exported == source_digest
    text = buffer.getvalue()
    target = open_store("memory://")
    imported = await import_dump(target, io.StringIO(text), batch=2)
    assert imported == source_digest and await digest(target) == source_digest
    again = io.StringIO()
    await export_dump(target, again)
    assert again.getvalue() == text  # byte for byte
    await target.aclose()


async def test_copy_resumes_after_the_last_key(store: Store) -> None:
    for i in range(10):
        await store.create(f"k/{i:02d}", {"i": i})
    target = open_store("memory://")
    first = await store.export_records(limit=4)
    await target.import_records(first)
    n = await copy_records(store, target, after=first[-1].key, batch=3)
    assert n == 6 and await digest(target) == await digest(store)


def test_import_refuses_bad_dumps() -> None:
    import asyncio

    async def attempt(text: str) -> Any:
        target = open_store("memory://")
        try:
            return await import_dump(target, io.StringIO(text))
        finally:
            await target.aclose()

    with pytest.raises(DumpError, match="not a flowstate dump"):
        asyncio.run(attempt('{"key": "a"}\n'))
    good = io.StringIO()

    async def make() -> str:
        source = open_store("memory://")
        await source.create("a", {"x": 1})
        await source.create("b", {"x": 2})
        await export_dump(source, good)
        return good.getvalue()

    text = asyncio.run(make())
    lines = text.splitlines(keepends=True)
    with pytest.raises(DumpError, match="truncated: no end line after 2 records"):
        asyncio.run(attempt("".join(lines[:-1])))
    with pytest.raises(DumpError, match="does not match its end line"):
        asyncio.run(attempt("".join([lines[0], lines[1], lines[-1]])))
    tampered = text.replace('"x":2', '"x":3')
    with pytest.raises(DumpError, match="does not match"):
        asyncio.run(attempt(tampered))
    with pytest.raises(DumpError, match="not a record line"):
        asyncio.run(attempt(lines[0] + "{oops\n"))


async def test_migrate_state_keeps_last_access_and_loses_no_concurrent_write(store: Store) -> None:
    old = FlowServer([old_flow()], store=store)
    for i in range(3):
        await old.run(
            "app", "write", {"name": f"n{i}", "age": str(i)}, user_id=f"u{i}", session_id=f"s{i}"
        )
    before = await store.read("session/s1/c/items/items/x")
    assert before is not None
    server = FlowServer([new_flow()], store=store)
    real_swap = store.swap_records
    real_apply = store.apply

    async def racing_swap(records: Sequence[Record], expected_versions: Sequence[int]) -> list[str]:
        # another writer (old code) commits to one record between the read and the swap
        late = Change(Schema(Old), ops=(FieldOp("set", "name", "late"),))
        assert (await real_apply("session/s1/state", late)).status == "committed"
        store.swap_records = real_swap  # type: ignore[method-assign]
        return await real_swap(records, expected_versions)

    store.swap_records = racing_swap  # type: ignore[method-assign]
    report = await migrate_state(server, batch=100)
    store.swap_records = real_swap  # type: ignore[method-assign]
    assert report.failed == [] and report.upgraded == 12
    state = await store.read("session/s1/state")
    assert state is not None
    assert state.fields == {"full_name": "late", "age": 1, SCHEMA_FIELD: 3}  # the late write kept
    assert state.version == 3
    item = await store.read("session/s0/c/items/items/x")
    assert item is not None and item.fields[SCHEMA_FIELD] == 3
    item1 = await store.read("session/s1/c/items/items/x")
    assert item1 is not None and item1.accessed_at == before.accessed_at  # not activity
    assert item1.version == before.version + 1
    untouched = await store.read("session/s0/r/card")
    assert untouched is not None and untouched.version == 2


async def test_migrate_state_never_writes_an_upgrade_over_a_record_created_again(
    store: Store,
) -> None:
    """A record deleted and created again between migrate-state's read and its swap is back at
    version 1, as read: its creation time tells it apart, so the upgrade of the old record is
    not written over the new one (which is upgraded on its own)."""
    old = FlowServer([old_flow()], store=store)
    await old.run("app", "write", {"name": "n0", "age": "0"}, user_id="u0", session_id="s0")
    key = "session/s0/c/items/items/x"
    first = await store.read(key)
    assert first is not None and first.version == 1
    server = FlowServer([new_flow()], store=store)
    real_swap = store.swap_records

    async def racing_swap(records: Sequence[Record], expected_versions: Sequence[int]) -> list[str]:
        store.swap_records = real_swap  # type: ignore[method-assign]
        assert await store.delete(key) is not None
        await asyncio.sleep(0.002)
        assert (await store.create(key, {"name": "reborn", "age": "7"})).version == 1
        return await real_swap(records, expected_versions)

    store.swap_records = racing_swap  # type: ignore[method-assign]
    report = await migrate_state(server, batch=100)
    store.swap_records = real_swap  # type: ignore[method-assign]
    assert report.failed == [] and report.upgraded == 4
    reborn = await store.read(key)
    assert reborn is not None and reborn.created_at != first.created_at
    assert reborn.fields == {"full_name": "reborn", "age": 7, SCHEMA_FIELD: 3}


async def test_gc_finishes_a_deletion_cut_short_and_spares_a_new_incarnation(store: Store) -> None:
    flow = define_flow(
        "app",
        actions={"write": write, "touch": touch},
        session=ScopeConfig(
            state=Old,
            ttl=timedelta(hours=1),
            resources={
                "card": define_resource(Old),
                "items": define_resource_collection("items/*", Old),
            },
        ),
        user=ScopeConfig(state=Old),
    )
    server = FlowServer([flow], store=store)
    for sid in ("cut", "old"):
        await server.run("app", "write", {"name": "n"}, user_id="alice", session_id=sid)
    # a deletion that stopped after its first step leaves a tombstone and the data
    tomb = Change(
        Schema(None), ops=(FieldOp("set", "deleted", True), FieldOp("set", "createdAt", -1.0))
    )
    assert (await store.apply("_sessions/cut", tomb)).status == "committed"
    later = time.time_ns() + 2 * 3600 * 10**9
    real_swap = store.swap_records
    taken_over = False

    async def racing_swap(records: Sequence[Record], expected_versions: Sequence[int]) -> list[str]:
        nonlocal taken_over
        if "_sessions/old" in [r.key for r in records] and not taken_over:
            # between gc's read and its tombstones, a run deletes the expired session and
            # starts a new one with the same id (a new incarnation)
            taken_over = True
            store.swap_records = real_swap  # type: ignore[method-assign]
            await server.delete_session("old", user_id="alice")
            await server.run("app", "touch", None, user_id="alice", session_id="old")
        return await real_swap(records, expected_versions)

    store.swap_records = racing_swap  # type: ignore[method-assign]
    report = await collect_garbage(server, now_ns=later)
    store.swap_records = real_swap  # type: ignore[method-assign]
    assert taken_over and report.sessions == 1
    assert await store.count("session/cut/") == 0 and await store.read("_sessions/cut") is None
    assert await store.read("_sessions/old") is not None  # the new incarnation is left alone
    assert [s.session_id for s in await server.list_sessions(user_id="alice")] == ["old"]
