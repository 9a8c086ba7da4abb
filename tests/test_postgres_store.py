"""PostgreSQL-only behaviour: several processes (or store instances) on one database, the
write cache staying correct when others write, migrations, URL options and live events.

The shared contract is tested in ``test_store_conformance.py``; here it is also re-run with
the write cache disabled and with the pessimistic (row-locking) write path forced.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel

from flowstate.errors import StateValidationError
from flowstate.ops import Change, FieldOp, OpKind
from flowstate.schema import Schema
from flowstate.stores import Cap, MemoryStore, Store, open_store
from flowstate.stores.postgres import SCHEMA_VERSION, PostgresStore, migrate
from flowstate.stores.postgres import sql as postgres_sql
from flowstate.stores.postgres import store as postgres_module

from . import test_store_conformance as conformance

pytestmark = pytest.mark.postgres

FREE = Schema(None)


def ops(*items: FieldOp, **kw: Any) -> Change:
    return Change(FREE, ops=items, **kw)


def inc(field: str = "n", amount: int = 1, **kw: Any) -> Change:
    return ops(FieldOp("inc", field, amount), **kw)


def put(field: str, value: Any, **kw: Any) -> Change:
    return ops(FieldOp("set", field, value), **kw)


@pytest.fixture
async def pair(postgres_store_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two independent store instances on one schema: two processes, as far as caches go."""
    a, b = PostgresStore(postgres_store_url), PostgresStore(postgres_store_url)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def fields_of(store: Store, key: str) -> dict[str, Any] | None:
    record = await store.read(key)
    return None if record is None else dict(record.fields)


# ------------------------------------------------------- the contract, on the other paths

_SINGLE_STORE_TESTS = [
    fn
    for name, fn in vars(conformance).items()
    if name.startswith("test_")
    and inspect.iscoroutinefunction(fn)
    and list(inspect.signature(fn).parameters) == ["store"]
]


@pytest.mark.parametrize("mode", ["uncached", "locked"])
@pytest.mark.parametrize("test", _SINGLE_STORE_TESTS, ids=lambda fn: fn.__name__[5:])
async def test_conformance_without_cache_and_on_the_locked_path(
    postgres_store_url: str, mode: str, test: Callable[[Store], Awaitable[None]]
) -> None:
    store = PostgresStore(postgres_store_url + "&cache_size=0")
    if mode == "locked":
        store.optimistic_attempts = 0
    try:
        await test(store)
    finally:
        await store.aclose()


# ------------------------------------------------------------ a cache that others outdate


async def test_a_stale_cache_never_loses_another_writers_update(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    await a.apply("k", put("n", 1))
    await b.apply("k", inc())
    result = await a.apply("k", inc())
    assert (result.status, result.version) == ("committed", 3)
    assert await fields_of(b, "k") == {"n": 3}


async def test_a_recreated_record_at_the_same_version_is_not_mistaken(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    await a.apply("k", put("n", 5))
    await a.apply("k", inc())  # a has {n: 6} at version 2 cached
    await b.delete("k")
    await b.apply("k", put("n", 100))
    await b.apply("k", inc())  # version 2 again, other content
    result = await a.apply("k", inc())
    assert (result.status, result.version) == ("committed", 3)
    assert await fields_of(b, "k") == {"n": 102}


async def test_outcomes_from_a_stale_cache_are_rechecked(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    # an error that only the stale value would cause
    await a.apply("k", put("x", "text"))
    await b.apply("k", put("x", 1))
    assert (await a.apply("k", inc("x"))).status == "committed"
    assert await fields_of(b, "k") == {"x": 2}
    # a no-op only against the stale value
    await a.apply("k", put("y", 1))
    await b.apply("k", put("y", 2))
    assert (await a.apply("k", put("y", 1))).status == "committed"
    assert (await fields_of(b, "k") or {})["y"] == 1
    # a conflict only against the stale version
    version = (await a.apply("k", inc("x"))).version
    await b.apply("k", inc("x"))
    result = await a.apply("k", inc("x", expected_version=version + 1))
    assert (result.status, result.version) == ("committed", version + 2)
    stale = await a.apply("k", inc("x", expected_version=version))
    assert (stale.status, stale.version) == ("conflict", version + 2)
    # a record deleted elsewhere
    await b.delete("k")
    assert (await a.apply("k", inc(must_exist=True))).status == "missing"


async def test_appends_stay_in_order_across_instances(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    await a.apply("k", put("l", [1]))
    await b.apply("k", ops(FieldOp("push", "l", 2)))
    await a.apply("k", ops(FieldOp("push", "l", 3)))
    await a.apply("k", ops(FieldOp("push", "l", {"z": 1, "a": [4]})))
    expected = [1, 2, 3, {"z": 1, "a": [4]}]
    assert await fields_of(b, "k") == {"l": expected}
    assert await fields_of(a, "k") == {"l": expected}
    await b.apply("k", put("l", "no longer a list"))
    with pytest.raises(StateValidationError, match="found str"):
        await a.apply("k", ops(FieldOp("push", "l", 5)))


async def test_no_lost_writes_between_instances_under_contention(
    postgres_store_url: str,
) -> None:
    stores = [PostgresStore(postgres_store_url) for _ in range(3)]
    stores[2].optimistic_attempts = 0  # one of them always takes the row lock
    try:
        changes = [
            stores[i % 3].apply("k", ops(FieldOp("inc", "n", 1), FieldOp("push", "l", i)))
            for i in range(60)
        ]
        results = await asyncio.gather(*changes)
        assert sorted(r.version for r in results) == list(range(1, 61))
        record = await stores[0].read("k")
        assert record is not None and record.fields["n"] == 60
        assert sorted(record.fields["l"]) == list(range(60))
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.parametrize("eviction", ["none", "lru", "oldest"])
async def test_the_cap_holds_across_instances(postgres_store_url: str, eviction: Any) -> None:
    stores = [PostgresStore(postgres_store_url) for _ in range(3)]
    try:
        cap = Cap("c/", 5, eviction)
        creates = [stores[i % 3].create(f"c/{i:02}", {"i": i}, cap=cap) for i in range(24)]
        await asyncio.gather(*creates)
        assert await stores[0].count("c/") == 5
    finally:
        for store in stores:
            await store.aclose()


# ------------------------------------------------------------------ several OS processes

N = 80


def _inc_worker(url: str, who: str) -> None:
    async def main() -> None:
        store = open_store(url)
        try:
            change = ops(FieldOp("inc", "n", 1), FieldOp("push", "log", who))
            await asyncio.gather(*(store.apply("shared", change) for _ in range(N)))
            for _ in range(N // 4):  # and a compare-and-swap loop
                while True:
                    record = await store.read("shared")
                    assert record is not None
                    cas = put("m", record.fields.get("m", 0) + 1, expected_version=record.version)
                    if (await store.apply("shared", cas)).status == "committed":
                        break
        finally:
            await store.aclose()

    asyncio.run(main())


def test_no_lost_writes_across_two_processes(postgres_store_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_inc_worker, args=(postgres_store_url, w)) for w in ("p1", "p2")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0

    async def check() -> None:
        store = open_store(postgres_store_url)
        try:
            record = await store.read("shared")
        finally:
            await store.aclose()
        assert record is not None
        assert record.fields["n"] == 2 * N and record.fields["m"] == 2 * (N // 4)
        assert sorted(record.fields["log"]) == ["p1"] * N + ["p2"] * N

    asyncio.run(check())


def _publish_worker(url: str, ready: Any, messages: list[Any]) -> None:
    async def main() -> None:
        store = open_store(url)
        try:
            ready.wait(30)
            for message in messages:
                await store.publish("room", message)
        finally:
            await store.aclose()  # flushes what is still queued

    asyncio.run(main())


async def test_a_subscriber_receives_what_another_process_publishes(
    postgres_store_url: str,
) -> None:
    messages: list[Any] = [{"i": i} for i in range(5)]
    messages.insert(2, {"big": "é" * 9000})  # over the NOTIFY limit: goes through fs_events
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_publish_worker, args=(postgres_store_url, ready, messages))
    proc.start()
    store = open_store(postgres_store_url)
    try:
        async with store.subscribe("room") as queue, store.subscribe("other") as other:
            ready.set()
            received = [await asyncio.wait_for(queue.get(), 20) for _ in messages]
            assert received == messages
            assert other.empty()
    finally:
        await store.aclose()
        await asyncio.to_thread(proc.join, 30)
    assert proc.exitcode == 0


async def test_events_between_instances_and_after_the_listener_is_cut(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    async with a.subscribe("t") as queue:
        await b.publish("t", {"n": 1})
        assert await asyncio.wait_for(queue.get(), 5) == {"n": 1}
        events = a._events
        assert events is not None and events.conn is not None
        pid = events.conn.get_server_pid()
        await b.read("x")  # make sure b's pool exists
        pool = await b._get_pool()
        await pool.execute("SELECT pg_terminate_backend($1)", pid)
        for _ in range(100):  # the listener reconnects and listens again
            await asyncio.sleep(0.05)
            if events.conn is not None and events.conn.get_server_pid() != pid:
                break
        await b.publish("t", {"n": 2})
        assert await asyncio.wait_for(queue.get(), 5) == {"n": 2}
        assert queue.empty()


async def test_large_event_rows_are_pruned(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url)
    try:
        pool = await store._get_pool()
        await pool.execute(
            "INSERT INTO fs_events (topic, payload, created_at) "
            "VALUES ('old', '{}', now() - interval '1 hour')"
        )
        await store.publish("t", {"big": "x" * 10_000})
        await store.flush_events()
        assert await pool.fetchval("SELECT count(*) FROM fs_events WHERE topic = 'old'") == 0
        assert await pool.fetchval("SELECT count(*) FROM fs_events WHERE topic = 't'") == 1
    finally:
        await store.aclose()


# ------------------------------------------------------------------------- migrations


async def test_migrate_is_idempotent_and_safe_to_run_concurrently(postgres_store_url: str) -> None:
    results = await asyncio.gather(*(migrate(postgres_store_url) for _ in range(4)))
    assert results == [SCHEMA_VERSION] * 4
    assert await migrate(postgres_store_url) == SCHEMA_VERSION
    store = PostgresStore(postgres_store_url, migrate=False)
    try:
        await store.apply("k", inc())
        pool = await store._get_pool()
        assert await pool.fetchval("SELECT current_schema()") == store.schema
        version = await pool.fetchval("SELECT value FROM fs_meta WHERE name = 'schema_version'")
        assert version == str(SCHEMA_VERSION)
    finally:
        await store.aclose()


async def test_without_migrate_a_missing_schema_is_a_clear_error(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url + "&migrate=false")
    try:
        with pytest.raises(RuntimeError, match="flowstate db migrate"):
            await store.read("k")
    finally:
        await store.aclose()


async def test_a_newer_schema_version_is_refused(postgres_store_url: str) -> None:
    await migrate(postgres_store_url)
    store = PostgresStore(postgres_store_url)
    try:
        pool = await store._get_pool()
        await pool.execute("UPDATE fs_meta SET value = '999' WHERE name = 'schema_version'")
    finally:
        await store.aclose()
    with pytest.raises(RuntimeError, match="newer than this flowstate"):
        await migrate(postgres_store_url)


# --------------------------------------------------------------------- layout and options


async def test_prefix_scans_use_the_primary_key_index(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url)
    try:
        pool = await store._get_pool()
        await pool.execute(
            "INSERT INTO fs_records (key, version, created_at, accessed_at) "
            "SELECT 'k/' || i, 1, 0, 0 FROM generate_series(1, 5000) i"
        )
        await pool.execute("ANALYZE fs_records")
        collation = await pool.fetchval(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'fs_records' AND column_name = 'key'",
            store.schema,
        )
        assert collation == "C"
        plan = "\n".join(
            r[0]
            for r in await pool.fetch(
                "EXPLAIN SELECT key FROM fs_records WHERE key < $1 AND key >= $2 "
                "ORDER BY key LIMIT 10",
                "k/12\U0010ffff",
                "k/12",
            )
        )
        assert "fs_records_pkey" in plan and "Sort" not in plan
        assert await store.count("k/12") == 111
    finally:
        await store.aclose()


async def test_a_store_survives_a_new_event_loop(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url)

    async def bump() -> int:
        return (await store.apply("k", inc())).version

    def in_new_loop() -> list[int]:
        return [asyncio.run(bump()), asyncio.run(bump())]

    try:
        assert await asyncio.to_thread(in_new_loop) == [1, 2]
        assert (await store.apply("k", inc())).version == 3
    finally:
        await store.aclose()


async def test_values_postgres_cannot_store_are_validation_errors(postgres_store_url: str) -> None:
    class Model(BaseModel):
        x: float = 0.0

    store = PostgresStore(postgres_store_url)
    try:
        with pytest.raises(StateValidationError, match='field "x"'):
            await store.apply("k", Change(Schema(Model), ops=(FieldOp("set", "x", float("inf")),)))
        with pytest.raises(StateValidationError, match='field "y"'):
            await store.create("k", {"y": float("inf")})
        assert await store.read("k") is None
    finally:
        await store.aclose()


def test_url_options_are_parsed_and_removed() -> None:
    store = PostgresStore(
        "postgresql://u@h:5/db?schema=My%20Schema&migrate=off&max_size=3&cache_size=0&sslmode=disable"
    )
    config = store._config
    assert config.schema == "My Schema" and not config.migrate
    assert (config.max_size, config.cache_size) == (3, 0)
    assert config.dsn == "postgresql://u@h:5/db?sslmode=disable"
    assert config.server_settings["search_path"] == '"My Schema"'
    assert PostgresStore("postgres://u@h/db", migrate=False)._config.migrate is False
    with pytest.raises(ValueError, match="migrate"):
        PostgresStore("postgresql://u@h/db?migrate=maybe")


# ------------------------------------------------------------------------ batched writes


def _random_change(rng: random.Random, i: int) -> Change:
    kind = rng.choice(["inc", "set", "append", "record", "replace", "content", "drop"])
    if kind == "inc":
        return inc(rng.choice(["n", "m"]), rng.randint(1, 5))
    if kind == "set":
        return put(rng.choice(["a", "b", "c"]), rng.choice([i, "s", [i], {"z": i, "a": 1}]))
    if kind == "append":
        return ops(FieldOp("push", rng.choice(["l", "l2"]), i))
    if kind == "record":
        op: OpKind = rng.choice(["record_set", "record_delete"])
        return ops(FieldOp(op, "d", i if op == "record_set" else None, key=rng.choice("xyz")))
    if kind == "replace":
        return Change(FREE, replace={"a": i, "l": [i]})
    if kind == "content":
        return Change(FREE, ops=(FieldOp("set", "b", i),), content=rng.choice([None, f"c{i}"]))
    return Change(FREE, replace={})


async def test_concurrent_writes_to_many_records_match_one_by_one_writes(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches mixing inserts, updates, deletes, appends and content equal sequential writes."""
    sizes: list[int] = []
    real = postgres_sql.write_batch  # what the store module imported and calls

    async def spy(conn: Any, jobs: list[Any], *rest: Any, **named: Any) -> Any:
        sizes.append(len(jobs))
        return await real(conn, jobs, *rest, **named)

    monkeypatch.setattr(postgres_module, "write_batch", spy)
    rng = random.Random(7)
    store = PostgresStore(postgres_store_url)
    reference = MemoryStore()
    keys = [f"r/{i}" for i in range(12)]
    try:
        for round_ in range(15):
            changes = {key: _random_change(rng, round_) for key in keys if rng.random() < 0.8}
            got = await asyncio.gather(
                *(store.apply(k, c) for k, c in changes.items()), return_exceptions=True
            )
            for (key, change), result in zip(changes.items(), got, strict=True):
                try:
                    expected = await reference.apply(key, change)
                except StateValidationError:
                    assert isinstance(result, StateValidationError), (key, change, result)
                    continue
                assert not isinstance(result, BaseException), (key, change, result)
                assert (result.status, result.version) == (expected.status, expected.version)
            if round_ % 5 == 4:
                for key in keys[:3]:
                    await store.delete(key)
                    await reference.delete(key)
        other = PostgresStore(postgres_store_url)  # no cache: what is really stored
        try:
            for key in keys:
                mine, theirs = await other.read(key), await reference.read(key)
                assert (mine is None) == (theirs is None), key
                if mine is not None and theirs is not None:
                    assert dict(mine.fields) == dict(theirs.fields), key
                    assert (mine.version, mine.content) == (theirs.version, theirs.content), key
        finally:
            await other.aclose()
    finally:
        await store.aclose()
    assert max(sizes) > 1, "concurrent writes were never batched"


async def test_one_failing_write_in_a_batch_fails_alone(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url)
    try:
        for i in range(10):
            await store.apply(f"k/{i}", put("v", "text" if i == 3 else [i]))
        results = await asyncio.gather(
            *(store.apply(f"k/{i}", ops(FieldOp("push", "v", "x"))) for i in range(10)),
            return_exceptions=True,
        )
        assert isinstance(results[3], StateValidationError)
        assert all(r.status == "committed" for i, r in enumerate(results) if i != 3)  # type: ignore[union-attr]
        assert await fields_of(store, "k/3") == {"v": "text"}
        assert await fields_of(store, "k/9") == {"v": [9, "x"]}
    finally:
        await store.aclose()


async def test_a_cancelled_write_does_not_disturb_the_others(postgres_store_url: str) -> None:
    store = PostgresStore(postgres_store_url)
    try:
        tasks = [asyncio.create_task(store.apply(f"k/{i}", inc())) for i in range(20)]
        await asyncio.sleep(0)
        tasks[5].cancel()
        tasks[12].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(done):
            record = await store.read(f"k/{i}")
            if isinstance(result, asyncio.CancelledError):
                assert record is None or record.fields == {"n": 1}
            else:
                assert record is not None and record.fields == {"n": 1}
        assert (await store.apply("k/5", inc())).status == "committed"
    finally:
        await store.aclose()


@pytest.mark.parametrize("tombstone", ["update", "swap"])
async def test_a_guarded_write_that_waited_for_a_tombstone_fails(
    postgres_store_url: str, tombstone: str
) -> None:
    """A guarded write whose guard check waits for the transaction that tombstones the guard
    record (``delete_session``: the field updated in place; ``flowstate gc``: the record
    swapped whole) sees the tombstone and writes nothing. Locking only the record row, the
    check read the guard field as of its statement's snapshot (before the tombstone) and
    passed: a late run could write into a session being deleted, after its data was."""
    import asyncpg  # type: ignore[import-untyped]

    from flowstate.stores.base import Guard

    def gone() -> Exception:
        return LookupError("session gone")

    store = open_store(postgres_store_url)
    assert isinstance(store, PostgresStore)
    config = store._config
    raw = await asyncpg.connect(config.dsn, server_settings=config.server_settings)
    try:
        await store.create("_sessions/s", {"createdAt": 1.5, "userId": "alice"})
        await store.apply("session/s/state", ops_set("n", 1))
        guard = Guard("_sessions/s", "createdAt", 1.5, gone)
        assert (await store.apply("session/s/state", ops_set("n", 2), guard=guard)).version == 2

        txn = raw.transaction()
        await txn.start()
        await raw.execute("UPDATE fs_records SET version = version + 1 WHERE key = '_sessions/s'")
        if tombstone == "update":
            await raw.execute(
                "UPDATE fs_fields SET value = '-1'::json "
                "WHERE key = '_sessions/s' AND name = 'createdAt'"
            )
        else:
            await raw.execute("DELETE FROM fs_fields WHERE key = '_sessions/s'")
            await raw.execute(
                "INSERT INTO fs_fields (key, name, value) VALUES "
                "('_sessions/s', 'createdAt', '-1'::json), ('_sessions/s', 'deleted', 'true')"
            )
        writes = [
            asyncio.create_task(store.apply("session/s/state", ops_set("n", 3), guard=guard)),
            asyncio.create_task(store.apply("session/s/r/new", ops_set("n", 1), guard=guard)),
            asyncio.create_task(store.create("session/s/c/x", {"n": 1}, guard=guard)),
            asyncio.create_task(store.delete("session/s/state", guard=guard)),
        ]
        await asyncio.sleep(0.5)
        assert not any(w.done() for w in writes)  # waiting for the tombstone's transaction
        await txn.commit()
        for write in writes:
            with pytest.raises(LookupError, match="session gone"):
                await asyncio.wait_for(write, 10)
        assert await store.scan("session/s/") == ["session/s/state"]
        state = await store.read("session/s/state")
        assert state is not None and state.version == 2 and dict(state.fields) == {"n": 2}
    finally:
        await raw.close()
        await store.aclose()


def ops_set(name: str, value: Any) -> Change:
    return Change(Schema(None), ops=(FieldOp("set", name, value),))
