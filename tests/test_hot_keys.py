"""Concurrent writes to one record, committed together: each caller keeps its own outcome.

Every backend commits the writers of one record queued in one process together (SQLite: one
transaction, a savepoint per caller; PostgreSQL: one statement for the whole group; memory:
one lock). What a caller relies on is checked on all of them: its own version and mutation,
its own error without failing the others, events in commit order, nothing lost across two
processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from flowstate import FlowServer, StateValidationError, define_flow, handler, open_store
from flowstate.ops import Change, FieldOp, Mutation, compose
from flowstate.schema import Schema
from flowstate.stores import Applied, Store

FREE = Schema(None)


def change(*ops: FieldOp, **kw: Any) -> Change:
    return Change(FREE, ops=ops, **kw)


async def test_each_caller_gets_its_own_version_and_mutation(store: Store) -> None:
    await store.apply("hot", change(FieldOp("set", "n", 0)))
    results = await asyncio.gather(
        *(store.apply("hot", change(FieldOp("inc", "n", 1))) for _ in range(16))
    )
    assert all(r.status == "committed" for r in results)
    assert sorted(r.version for r in results) == list(range(2, 18))
    for r in results:  # the caller at version v took n from v - 2 to v - 1
        assert r.mutation is not None
        assert dict(r.mutation.set) == {"n": r.version - 1}
        assert dict(r.mutation.before) == {"n": r.version - 2}
    record = await store.read("hot")
    assert record is not None and record.version == 17 and record.fields == {"n": 16}


async def test_one_failing_caller_fails_alone(store: Store) -> None:
    await store.apply("hot", change(FieldOp("set", "n", 0), FieldOp("set", "word", "x")))
    calls = []
    for i in range(12):
        if i == 5:
            calls.append(store.apply("hot", change(FieldOp("inc", "word", 1))))
        elif i == 7:
            calls.append(store.apply("hot", change(FieldOp("push", "word", 1))))
        else:
            calls.append(
                store.apply("hot", change(FieldOp("inc", "n", 1), FieldOp("push", "log", i)))
            )
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    assert sorted(errors) == [5, 7]
    assert isinstance(errors[5], StateValidationError)
    assert str(errors[5]) == 'field "word": inc_state needs a number field, found str'
    assert isinstance(errors[7], StateValidationError)
    assert str(errors[7]) == 'field "word": push_state needs a list field, found str'
    good = [r for r in results if isinstance(r, Applied)]
    assert sorted(r.version for r in good) == list(range(2, 12))
    record = await store.read("hot")
    assert record is not None and record.version == 11
    assert record.fields["n"] == 10 and record.fields["word"] == "x"
    assert sorted(record.fields["log"]) == [i for i in range(12) if i not in (5, 7)]
    # the list order is the commit order
    by_version = sorted(good, key=lambda r: r.version)
    order = [r.mutation.push["log"][1][0] for r in by_version if r.mutation is not None]
    assert record.fields["log"] == order


async def test_compare_and_swap_in_a_crowd_has_one_winner_per_version(store: Store) -> None:
    await store.apply("cas", change(FieldOp("set", "owner", None)))
    results = await asyncio.gather(
        *(
            store.apply("cas", change(FieldOp("set", "owner", i), expected_version=1))
            for i in range(8)
        )
    )
    winners = [i for i, r in enumerate(results) if r.status == "committed"]
    assert len(winners) == 1
    assert all(r.version == 2 for r in results)
    assert {r.status for i, r in enumerate(results) if i not in winners} == {"conflict"}
    record = await store.read("cas")
    assert record is not None and record.fields == {"owner": winners[0]}


async def test_mixed_sets_deletes_and_record_ops_in_one_crowd(store: Store) -> None:
    await store.apply("mix", change(FieldOp("set", "d", {}), FieldOp("set", "gone", 1)))
    results = await asyncio.gather(
        store.apply("mix", change(FieldOp("record_set", "d", 1, "a"))),
        store.apply("mix", change(FieldOp("record_set", "d", 2, "b"))),
        store.apply("mix", change(FieldOp("record_delete", "d", None, "a"))),
        store.apply("mix", change(FieldOp("set", "list", [1]))),
        store.apply("mix", change(FieldOp("push", "list", 2))),
        store.apply("mix", Change(FREE, replace={"d": {"z": 0}, "list": [9]})),
        store.apply("mix", change(FieldOp("push", "list", 10))),
        store.apply("mix", change(FieldOp("set", "n", 1), must_exist=True)),
    )
    assert [r.status for r in results] == ["committed"] * 8
    assert [r.version for r in results] == list(range(2, 10))
    record = await store.read("mix")
    assert record is not None
    assert record.fields == {"d": {"z": 0}, "list": [9, 10], "n": 1}


def test_compose_is_the_same_as_writing_in_order() -> None:
    first = Mutation(set={"a": [1]}, push={"b": ([], [1])})
    second = Mutation(set={}, push={"a": ([], [2]), "b": ([], [2]), "c": ([0], [5])})
    third = Mutation(set={"c": None}, delete=frozenset({"b"}), content="t")
    fourth = Mutation(set={}, push={"c": ([], [6]), "b": ([7], [8])})
    net = compose([first, second, third, fourth])
    assert dict(net.set) == {"a": [1, 2], "c": [6], "b": [7, 8]}
    assert net.delete == frozenset() and net.content == "t" and dict(net.push) == {}
    assert compose([first, second]).push == {"b": ([], [1, 2]), "c": ([0], [5])}


class Hits(BaseModel):
    hits: int = 0
    seen: list[int] = Field(default_factory=list)


async def test_events_of_concurrent_runs_come_in_commit_order(store: Store) -> None:
    @handler(name="hit", user_state=Hits)
    async def hit(input: Any, ctx: Any) -> Any:
        await ctx.user.inc_state(hits=1)

    server = FlowServer(define_flow("hot", {"hit": hit}), store=store)
    sessions = [(await server.run("hot", "hit", user_id="u")).session_id for _ in range(8)]
    seen: list[int] = []
    async with store.subscribe("user:u") as queue:

        async def one(i: int) -> int:
            result = await server.run("hot", "hit", user_id="u", session_id=sessions[i % 8])
            (event,) = [e for e in result.events if e.type == "state_change"]
            return int(event.data["version"])

        versions = await asyncio.gather(*(one(i) for i in range(40)))
        while len(seen) < 40:
            message = await asyncio.wait_for(queue.get(), 10)
            if message["type"] == "state_change":
                seen.append(message["version"])
    assert sorted(versions) == list(range(9, 49))
    assert seen == list(range(9, 49))  # published in commit order
    record = await store.read("user/u/state")
    assert record is not None and record.fields["hits"] == 48


@pytest.mark.postgres
async def test_postgres_commits_a_crowd_in_fewer_statements(postgres_store_url: str) -> None:
    store = open_store(postgres_store_url)
    try:
        await store.apply("hot", change(FieldOp("set", "n", 0)))
        statements = 0
        commit = store._commit  # type: ignore[attr-defined]

        async def counting(job: Any) -> Any:
            nonlocal statements
            statements += 1
            return await commit(job)

        store._commit = counting  # type: ignore[attr-defined]
        await asyncio.gather(
            *(store.apply("hot", change(FieldOp("inc", "n", 1))) for _ in range(32))
        )
        record = await store.read("hot")
        assert record is not None and record.fields == {"n": 32} and record.version == 33
        assert statements < 32 / 2  # the first alone, the rest in groups
    finally:
        await store.aclose()


def _hammer(url: str, tasks: int, each: int) -> None:
    async def main() -> None:
        store = open_store(url)
        try:

            async def worker() -> None:
                for _ in range(each):
                    await store.apply(
                        "shared", change(FieldOp("inc", "n", 1), FieldOp("push", "log", 1))
                    )

            await asyncio.gather(*(worker() for _ in range(tasks)))
        finally:
            await store.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_processes_of_crowds_lose_nothing(kind: str, tmp_path: Path) -> None:
    from .conftest import make_store_url

    url = make_store_url(kind, tmp_path)
    asyncio.run(_prime(url))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(url, 8, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    record = asyncio.run(_read(url))
    assert record is not None
    assert record.fields["n"] == 640 and len(record.fields["log"]) == 640
    assert record.version == 641


async def _prime(url: str) -> None:
    store = open_store(url)
    try:
        await store.apply("shared", change(FieldOp("set", "n", 0)))
    finally:
        await store.aclose()


async def _read(url: str) -> Any:
    store = open_store(url)
    try:
        return await store.read("shared")
    finally:
        await store.aclose()


async def test_atomic_writes_share_the_turn_and_update_state_is_not_starved(store: Store) -> None:
    from flowstate.layout import scope_root
    from flowstate.scopes import ScopeBinding

    class Count(BaseModel):
        n: int = 0
        m: int = 0

    def handle() -> Any:
        binding = ScopeBinding(store, "user", "u", scope_root("user", "u"), Schema(Count), {})
        return binding.handle(Count)

    async def incs() -> None:
        h = handle()
        for _ in range(10):
            await h.inc_state(n=1)

    async def updates() -> None:
        h = handle()
        for _ in range(5):
            await h.update_state(lambda s: {"m": s.m + 1})

    await asyncio.gather(*(incs() for _ in range(8)), *(updates() for _ in range(4)))
    record = await store.read("user/u/state")
    assert record is not None and record.fields == {"n": 80, "m": 20}
    assert record.version == 100


@pytest.mark.postgres
async def test_concurrent_runs_on_one_record_are_committed_together(
    postgres_store_url: str,
) -> None:
    store = open_store(postgres_store_url)
    try:

        @handler(name="hit", user_state=Hits)
        async def hit(input: Any, ctx: Any) -> None:
            await ctx.user.inc_state(hits=1)

        server = FlowServer(define_flow("hot", {"hit": hit}), store=store)
        sid = (await server.run("hot", "hit", user_id="u")).session_id
        statements = 0
        commit = store._commit  # type: ignore[attr-defined]

        async def counting(job: Any) -> Any:
            nonlocal statements
            statements += 1
            return await commit(job)

        store._commit = counting  # type: ignore[attr-defined]
        await asyncio.gather(
            *(server.run("hot", "hit", user_id="u", session_id=sid) for _ in range(24))
        )
        record = await store.read("user/u/state")
        assert record is not None and record.fields["hits"] == 25
        assert statements < 24  # runs' writes of one record went out in groups
    finally:
        await store.aclose()



class Counter(BaseModel):
    n: int = 0


async def test_after_a_write_that_skipped_versions_the_state_shows_the_record_at_it(
    store_url: str,
) -> None:
    """A run's state reflects other writers' commits after its next operation: a commit
    whose version jumped (another run and another process wrote in between) leaves the cell
    with the record as of that commit — taken from the store's copy when it has one
    (SQLite and PostgreSQL keep this process's last commit of a record), without reading
    again — and ``update_state`` computes on it."""
    store = open_store(store_url)
    other = store if store_url == "memory://" else open_store(store_url)  # another process
    reads: list[str] = []
    seen: list[tuple[int, int]] = []

    async def body(input: Any, ctx: Any) -> None:
        seen.append((ctx.user.state.n, ctx.user.version))
        await other.apply("user/u/state", change(FieldOp("inc", "n", 5)))
        await server.run("c", "bump", None, user_id="u")  # another run of this process
        reads.clear()
        await ctx.user.inc_state(n=1)
        seen.append((ctx.user.state.n, ctx.user.version))
        await ctx.user.update_state(lambda s: {"n": s.n * 10})
        seen.append((ctx.user.state.n, ctx.user.version))

    async def bump(input: Any, ctx: Any) -> None:
        await ctx.user.inc_state(n=100)

    flow = define_flow(
        "c",
        {
            "body": handler(name="body", execute=body, user_state=Counter),
            "bump": handler(name="bump", execute=bump, user_state=Counter),
        },
    )
    real_read = store.read

    async def counted(key: str, fields: frozenset[str] | None = None) -> Any:
        reads.append(key)
        return await real_read(key, fields)

    store.read = counted  # type: ignore[method-assign]
    try:
        async with FlowServer([flow], store=store) as server:
            await server.run("c", "bump", None, user_id="u")  # n = 100 at version 1
            await server.run("c", "body", None, user_id="u")
            record = await real_read("user/u/state")
    finally:
        if other is not store:
            await other.aclose()
    # 100 at v1; another process adds 5 (v2), another run 100 (v3); the run's inc lands at
    # v4 on 205, and update_state computes on that: no conflict, nothing lost
    assert seen == [(100, 1), (206, 4), (2060, 5)]
    assert record is not None and record.fields["n"] == 2060 and record.version == 5
    if store_url == "memory://":
        assert reads == ["user/u/state"]  # read once, after the commit (no I/O there)
    else:  # SQLite and PostgreSQL remember the record as this process's commit left it
        assert reads == []


async def test_recent_is_the_record_as_the_last_commit_left_it_or_nothing(store: Store) -> None:
    """``Store.recent`` (no I/O) answers exactly what a read at that version would, for the
    fields asked, or None; a pushed list that was never loaded and a large value are not
    remembered."""
    await store.apply("r", change(FieldOp("set", "n", 1), FieldOp("set", "s", "x")))
    await store.apply("r", change(FieldOp("push", "l", 1)))
    await store.apply("r", change(FieldOp("inc", "n", 1), FieldOp("set", "s", "y")))
    await store.apply("r", change(FieldOp("push", "l", 2), FieldOp("inc", "n", 1)))
    answered = 0
    for fields in (frozenset({"n"}), frozenset({"n", "s"}), frozenset({"l"}), None):
        got = store.recent("r", fields, False)
        if got is not None:
            answered += 1
            read = await store.read("r", fields)
            assert read is not None
            assert (got.version, dict(got.fields)) == (read.version, dict(read.fields))
    if store.url and store.url.startswith("sqlite"):
        # what the last commit loaded (n) is known; the list it only pushed onto is not
        assert answered == 1 and store.recent("r", frozenset({"l"}), False) is None
        await store.apply("r", change(FieldOp("set", "s", "x" * (70 << 10))))  # past 64 KiB
        assert store.recent("r", frozenset({"s"}), False) is None  # too large to keep
        await store.apply("r", change(FieldOp("set", "s", "small")))
        got = store.recent("r", frozenset({"s"}), False)
        assert got is not None and got.version == 6 and dict(got.fields) == {"s": "small"}
    if store.url == "memory://":
        assert answered == 0  # nothing to save: a read costs no I/O
