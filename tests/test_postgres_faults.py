"""PostgreSQL faults: dropped connections and outages are survived by the same process.

Only this test's own connections are touched (a unique ``application_name``); a full outage is
a TCP proxy in front of the server stopping. Every call is bounded in time, so a hang fails.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from flowstate import StoreUnavailableError
from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores.postgres import PostgresStore
from tests.faults import TcpProxy, terminate_backends, unique_app_name, via, with_options

FREE = Schema(None)


def inc(n: int = 1) -> Change:
    return Change(FREE, ops=(FieldOp("inc", "n", n),), operation="inc")


async def bounded(awaitable: Any, seconds: float = 10) -> Any:
    """Await with a deadline: a store call that hangs fails the test."""
    return await asyncio.wait_for(awaitable, seconds)


async def test_writes_recover_after_the_stores_connections_are_terminated(
    postgres_store_url: str,
) -> None:
    name = unique_app_name()
    store = PostgresStore(with_options(postgres_store_url, application_name=name))
    try:
        for _ in range(5):  # the kept writer connection is in use
            assert (await bounded(store.apply("k", inc()))).status == "committed"
        assert await terminate_backends(name) >= 1
        acknowledged = 5
        failures = 0
        deadline = time.monotonic() + 10
        streak = 0
        while streak < 20:
            assert time.monotonic() < deadline, "writes did not recover within 10 s"
            try:
                applied = await bounded(store.apply("k", inc()))
            except StoreUnavailableError as exc:
                failures += 1
                assert exc.code == "store_unavailable"
                streak = 0
                continue
            assert applied.status == "committed"
            acknowledged += 1
            streak += 1
        assert failures <= 2  # at most the writes in flight on a terminated connection
        record = await bounded(store.read("k"))
        assert record is not None and record.fields["n"] == acknowledged
    finally:
        await store.aclose()


async def test_concurrent_writers_recover_after_repeated_terminations(
    postgres_store_url: str,
) -> None:
    name = unique_app_name()
    store = PostgresStore(with_options(postgres_store_url, application_name=name))
    acknowledged = 0
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def writer(i: int) -> None:
        nonlocal acknowledged
        while not stop.is_set():
            try:
                applied = await bounded(store.apply(f"w/{i % 4}", inc()))
            except StoreUnavailableError:
                await asyncio.sleep(0.01)
                continue
            except BaseException as exc:  # anything else (a hang, a driver error) is a bug
                errors.append(exc)
                return
            assert applied.status == "committed"
            acknowledged += 1

    try:
        tasks = [asyncio.create_task(writer(i)) for i in range(8)]
        for _ in range(3):
            await asyncio.sleep(0.3)
            await terminate_backends(name)
        await asyncio.sleep(0.5)
        before = acknowledged
        await asyncio.sleep(0.5)
        assert acknowledged > before, "writes did not resume after the terminations"
        stop.set()
        await asyncio.gather(*tasks)
        assert errors == []
        total = 0
        for i in range(4):
            record = await bounded(store.read(f"w/{i}"))
            total += 0 if record is None else record.fields["n"]
        # Every acknowledged write is stored; a write that failed with store_unavailable
        # may have committed before its connection died, so the total may be a little higher.
        assert acknowledged <= total <= acknowledged + 8 * 3
    finally:
        await store.aclose()


async def test_an_outage_fails_fast_and_the_same_store_resumes(postgres_store_url: str) -> None:
    proxy = TcpProxy()
    await proxy.start()
    url = with_options(
        via(postgres_store_url, proxy.port),
        application_name=unique_app_name(),
        connect_timeout="2",
        command_timeout="5",
    )
    store = PostgresStore(url)
    try:
        await bounded(store.apply("k", inc()))
        await proxy.stop()
        for call in (
            lambda: store.apply("k", inc()),
            lambda: store.read("k"),
            lambda: store.scan(""),
            lambda: store.create("other", {"a": 1}),
            lambda: store.delete("k"),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as info:
                await bounded(call(), 8)
            assert time.monotonic() - started < 6
            assert info.value.code == "store_unavailable"
        await proxy.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                await bounded(store.apply("k", inc()))
                break
            except StoreUnavailableError:
                assert time.monotonic() < deadline, "the store did not come back"
                await asyncio.sleep(0.05)
        record = await bounded(store.read("k"))
        assert record is not None and record.fields["n"] == 2
    finally:
        await proxy.stop()
        await store.aclose()


async def test_a_store_opened_during_an_outage_starts_working_when_the_database_answers(
    postgres_store_url: str,
) -> None:
    proxy = TcpProxy()
    await proxy.start()
    port = proxy.port
    await proxy.stop()
    store = PostgresStore(with_options(via(postgres_store_url, port), connect_timeout="2"))
    try:
        with pytest.raises(StoreUnavailableError):
            await bounded(store.read("k"))
        await proxy.start()
        assert (await bounded(store.apply("k", inc()))).status == "committed"
    finally:
        await proxy.stop()
        await store.aclose()


async def test_the_event_listener_listens_again_after_its_connection_is_terminated(
    postgres_store_url: str,
) -> None:
    name = unique_app_name()
    listener = PostgresStore(with_options(postgres_store_url, application_name=name))
    sender = PostgresStore(postgres_store_url)
    try:
        async with listener.subscribe("t") as queue:
            await sender.publish("t", {"n": 0})
            await sender.flush_events()
            assert await bounded(queue.get(), 5) == {"n": 0}
            assert await terminate_backends(name) >= 1
            deadline = time.monotonic() + 10
            n = 0
            while True:
                n += 1
                await sender.publish("t", {"n": n})
                await sender.flush_events()
                try:
                    got = await asyncio.wait_for(queue.get(), 0.2)
                except TimeoutError:
                    assert time.monotonic() < deadline, "events did not resume"
                    continue
                assert got["n"] >= 1
                break
    finally:
        await sender.aclose()
        await listener.aclose()
