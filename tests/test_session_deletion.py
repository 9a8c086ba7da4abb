"""A deleted session stays deleted (SPEC §13, issue 9 defect 2), on every backend.

A run still in flight when its session is deleted fails with SessionNotFoundError at its next
write and writes nothing (state, static resources, collections); a new session may reuse the
id and starts empty. The deleting server may be another store instance on the same database
(another process, as far as the store can tell).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from flowstate import (
    ClientConfig,
    FlowServer,
    ScopeConfig,
    SessionNotFoundError,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
)
from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores import Record, open_store


class Secret(BaseModel):
    visible: int = 0
    secret: str = ""


class Doc(BaseModel):
    text: str = ""


def lab(
    gate: dict[str, asyncio.Event], outcome: dict[str, Any], ttl: timedelta | None = None
) -> Any:
    async def slow(input: Any, ctx: Any) -> str:
        await ctx.session.patch_state(visible=1, secret="alice-only")
        await ctx.session.resources.notes.create("a", {"text": "alice"})
        await ctx.session.resources.plan.patch_state(text="alice plan")
        gate["written"].set()
        await gate["go"].wait()
        for name, write in (
            ("state", lambda: ctx.session.patch_state(secret="after delete")),
            ("inc", lambda: ctx.session.inc_state(visible=5)),
            ("update", lambda: ctx.session.update_state(lambda s: {"visible": s.visible + 1})),
            ("create", lambda: ctx.session.resources.notes.create("b", {"text": "late"})),
            ("resource", lambda: ctx.session.resources.plan.patch_state(text="late plan")),
            ("content", lambda: ctx.session.resources.plan.write_content("late")),
        ):
            try:
                await write()
            except SessionNotFoundError as exc:
                outcome[name] = exc
            else:
                outcome[name] = "committed"
        return "done"

    async def peek(input: Any, ctx: Any) -> dict[str, Any]:
        return {
            "state": ctx.session.state.model_dump(),
            "version": ctx.session.version,
            "notes": await ctx.session.resources.notes.list(),
            "plan": ctx.session.resources.plan.state.text,
            "content": await ctx.session.resources.plan.read_content_raw(),
        }

    return define_flow(
        "lab",
        actions={
            "slow": handler(name="slow", execute=slow),
            "peek": handler(name="peek", execute=peek),
        },
        session=ScopeConfig(
            state=Secret,
            resources={
                "notes": define_resource_collection("notes/*", state=Doc),
                "plan": define_resource(state=Doc),
            },
            client=ClientConfig(expose=["visible"]),
            ttl=ttl,
        ),
    )


@pytest.mark.parametrize("deleter", ["same", "other"])
async def test_a_run_in_flight_cannot_write_into_its_deleted_session(
    store_url: str, deleter: str
) -> None:
    gate = {"written": asyncio.Event(), "go": asyncio.Event()}
    outcome: dict[str, Any] = {}
    flow = lab(gate, outcome)
    store = open_store(store_url)
    other_store = store if deleter == "same" or store_url == "memory://" else open_store(store_url)
    alice_server = FlowServer([flow], store=store)
    other = FlowServer([flow], store=other_store)
    try:
        run = asyncio.create_task(alice_server.run("lab", "slow", user_id="alice", session_id="s"))
        await asyncio.wait_for(gate["written"].wait(), 10)
        assert await other.delete_session("s", user_id="alice") is True
        gate["go"].set()
        assert await asyncio.wait_for(run, 20) is not None

        assert set(outcome) == {"state", "inc", "update", "create", "resource", "content"}
        for name, result in outcome.items():
            assert isinstance(result, SessionNotFoundError), (name, result)
            assert 'session "s" not found' in str(result)
        # Nothing of the session is left, in any store instance.
        assert await store.scan("session/s/") == []
        assert await other_store.scan("session/s/") == []
        with pytest.raises(SessionNotFoundError):
            await other.get_session("s", user_id="alice")

        # Bob takes the id: he starts empty and sees nothing of Alice's.
        peek = await other.run("lab", "peek", user_id="bob", session_id="s")
        assert peek.output == {
            "state": {"visible": 0, "secret": ""},
            "version": 0,
            "notes": [],
            "plan": "",
            "content": None,
        }
        snapshot = await other.snapshot("lab", "s", user_id="bob")
        assert snapshot["clientData"] == {"session": {"visible": 0}}
        with pytest.raises(SessionNotFoundError):
            await alice_server.snapshot("lab", "s", user_id="alice")
    finally:
        await alice_server.aclose()
        await store.aclose()
        if other_store is not store:
            await other_store.aclose()


@pytest.mark.parametrize("collector", ["same", "other"])
async def test_gc_in_batches_stops_runs_in_flight_and_spares_sessions_written_meanwhile(
    store_url: str, collector: str
) -> None:
    """``flowstate gc`` removes expired sessions a batch at a time (one compare-and-swap of
    the bindings, then the data, then the tombstones): a run in flight on one of them fails
    with SessionNotFoundError and writes nothing; a session whose binding changed since gc
    read it is left alone; a new session that takes an id over a tombstone keeps it."""
    from flowstate.lifecycle import collect_garbage

    gate = {"written": asyncio.Event(), "go": asyncio.Event()}
    gate["go"].set()
    outcome: dict[str, Any] = {}
    flow = lab(gate, outcome, ttl=timedelta(hours=1))
    store = open_store(store_url)
    gc_store = store if collector == "same" or store_url == "memory://" else open_store(store_url)
    alice = FlowServer([flow], store=store)
    gc_server = FlowServer([flow], store=gc_store)
    fillers = [f"e{i}" for i in range(7)] + ["m"]
    try:
        for sid in fillers:
            await alice.run("lab", "slow", user_id="alice", session_id=sid)
        assert set(outcome.values()) == {"committed"}
        outcome.clear()
        gate["written"], gate["go"] = asyncio.Event(), asyncio.Event()
        run = asyncio.create_task(alice.run("lab", "slow", user_id="alice", session_id="s"))
        await asyncio.wait_for(gate["written"].wait(), 10)

        swapped: list[list[str]] = []
        real_swap, real_delete_keys = gc_store.swap_records, gc_store.delete_keys

        async def racing_swap(
            records: Sequence[Record], expected_versions: Sequence[int]
        ) -> list[str]:
            keys = [r.key for r in records]
            swapped.append(keys)
            if "_sessions/m" in keys:  # written after gc read it: left alone
                await alice.set_session_metadata("m", {"title": "kept"}, user_id="alice")
            return await real_swap(records, expected_versions)

        async def racing_delete_keys(keys: Any) -> Any:
            if "_user_sessions/alice/e4" in keys:  # bob takes e4 over its tombstone
                await alice.create_session("lab", user_id="bob", session_id="e4")
            return await real_delete_keys(keys)

        gc_store.swap_records = racing_swap  # type: ignore[method-assign]
        gc_store.delete_keys = racing_delete_keys  # type: ignore[method-assign]
        later = time.time_ns() + 2 * 3600 * 10**9
        try:
            report = await collect_garbage(gc_server, now_ns=later, batch=3)
        finally:
            gc_store.swap_records = real_swap  # type: ignore[method-assign]
            gc_store.delete_keys = real_delete_keys  # type: ignore[method-assign]
        # batches of 3 bindings: e0-e2, e3-e5, e6 m s
        assert swapped == [
            ["_sessions/e0", "_sessions/e1", "_sessions/e2"],
            ["_sessions/e3", "_sessions/e4", "_sessions/e5"],
            ["_sessions/e6", "_sessions/m", "_sessions/s"],
        ]
        assert report.sessions == 8  # e0-e6 and s; not m

        gate["go"].set()
        assert await asyncio.wait_for(run, 20) is not None
        assert set(outcome) == {"state", "inc", "update", "create", "resource", "content"}
        for name, result in outcome.items():
            assert isinstance(result, SessionNotFoundError), (name, result)
            assert 'session "s" not found' in str(result)
        for st in (store, gc_store):
            assert await st.scan("session/s/") == []
            for sid in fillers[:-1]:
                assert await st.scan(f"session/{sid}/") == []
        with pytest.raises(SessionNotFoundError):
            await alice.get_session("s", user_id="alice")
        # m, written meanwhile, is whole
        m = await alice.get_session("m", user_id="alice")
        assert m.metadata == {"title": "kept"}
        assert (await alice.run("lab", "peek", user_id="alice", session_id="m")).output[
            "state"
        ] == {"visible": 7, "secret": "after delete"}
        # bob's e4 survived the removal of alice's tombstone; alice has only m left
        assert (await alice.get_session("e4", user_id="bob")).user_id == "bob"
        assert [i.session_id for i in await alice.list_sessions(user_id="bob")] == ["e4"]
        assert [i.session_id for i in await alice.list_sessions(user_id="alice")] == ["m"]
        # bob takes s too: it starts empty
        peek = await alice.run("lab", "peek", user_id="bob", session_id="s")
        assert peek.output["state"] == {"visible": 0, "secret": ""}
        assert peek.output["notes"] == [] and peek.output["content"] is None
        # the next gc finds m (and bob's sessions) expired too
        again = await collect_garbage(gc_server, now_ns=later + 3600 * 10**9)
        assert again.sessions == 3
        assert await store.count("_sessions/") == 0 and await store.count("session/") == 0
    finally:
        await alice.aclose()
        await gc_server.aclose()
        await store.aclose()
        if gc_store is not store:
            await gc_store.aclose()


async def test_an_interrupted_deletion_reads_as_deleted_and_the_id_starts_empty(
    store_url: str,
) -> None:
    """A crash between the tombstone and the cleanup leaves a tombstone and orphans: the id
    reads as no session, and creating it again removes the orphans first."""
    gate = {"written": asyncio.Event(), "go": asyncio.Event()}
    gate["go"].set()
    flow = lab(gate, {})
    async with FlowServer([flow], store=store_url) as server:
        await server.run("lab", "slow", user_id="alice", session_id="s")
        # What _purge_session's first step leaves if the process dies right after it.
        await server.store.apply(
            "_sessions/s",
            Change(
                Schema(None),
                ops=(FieldOp("set", "deleted", True), FieldOp("set", "createdAt", -1.0)),
            ),
        )
        assert await server.store.scan("session/s/") != []
        with pytest.raises(SessionNotFoundError):
            await server.get_session("s", user_id="alice")
        assert await server.list_sessions(user_id="alice") == []
        peek = await server.run("lab", "peek", user_id="bob", session_id="s")
        assert peek.output["state"] == {"visible": 0, "secret": ""}
        assert peek.output["notes"] == [] and peek.output["plan"] == ""
        assert (await server.get_session("s", user_id="bob")).user_id == "bob"


async def test_deleting_under_concurrent_writers_leaves_nothing(store_url: str) -> None:
    """Writers hammer a session while it is deleted: afterwards nothing of it is stored, and
    every write either committed before the deletion or failed with SessionNotFoundError."""

    started = asyncio.Event()

    async def write(input: Any, ctx: Any) -> None:
        for i in range(100_000):  # until the session is deleted (bounded, in case it is not)
            await ctx.session.inc_state(visible=1)
            await ctx.session.resources.notes.get_or_create(f"n{i % 7}", {"text": "x"})
            if i == 5:
                started.set()
            await asyncio.sleep(0)  # the memory store never yields by itself

    flow = define_flow(
        "w",
        actions={"write": handler(name="write", execute=write)},
        session=ScopeConfig(
            state=Secret, resources={"notes": define_resource_collection("notes/*", state=Doc)}
        ),
    )
    async with FlowServer([flow], store=store_url) as server:
        await server.create_session("w", user_id="alice", session_id="s")
        runs = [
            asyncio.create_task(server.run("w", "write", user_id="alice", session_id="s"))
            for _ in range(4)
        ]
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.05)
        await server.delete_session("s", user_id="alice")
        results = await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 60)
        for result in results:
            assert isinstance(result, SessionNotFoundError), result
        assert await server.store.scan("session/s/") == []
        assert await server.store.read("_sessions/s") is None


async def test_get_or_create_racing_a_deletion_answers_session_not_found(store_url: str) -> None:
    """get_or_create finds no instance, its create loses to a concurrent one, and then the
    session is deleted: the run fails with SessionNotFoundError (not "resource not found"),
    and nothing of the session is left."""

    seen: list[BaseException] = []

    async def write(input: Any, ctx: Any) -> None:
        try:
            await ctx.session.resources.notes.get_or_create("n", {"text": "mine"})
        except BaseException as exc:
            seen.append(exc)
            raise

    flow = define_flow(
        "w",
        actions={"write": handler(name="write", execute=write)},
        session=ScopeConfig(resources={"notes": define_resource_collection("notes/*", state=Doc)}),
    )
    async with FlowServer([flow], store=store_url) as server:
        await server.create_session("w", user_id="alice", session_id="s")
        store = server.store
        real_create = store.create
        raced = False

        async def create(key: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal raced
            if raced or "notes" not in key:
                return await real_create(key, *args, **kwargs)
            raced = True
            # Another writer creates the instance first, then the session is deleted.
            other = await real_create(key, *args, **kwargs)
            await server.delete_session("s", user_id="alice")
            return type(other)("exists", other.version)

        store.create = create  # type: ignore[method-assign]
        with pytest.raises(SessionNotFoundError):
            await server.run("w", "write", user_id="alice", session_id="s")
        assert raced
        assert [type(e) for e in seen] == [SessionNotFoundError]
        assert await store.scan("session/s/") == []
