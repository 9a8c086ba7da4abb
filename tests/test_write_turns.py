"""Writers of one record in one process take turns (issue 9, defect 13), async hooks are
refused, and a failed run that wrote nothing leaves no session behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from flowstate import (
    ConcurrentModificationError,
    DefinitionError,
    FlowServer,
    SessionNotFoundError,
    define_flow,
    define_resource_collection,
    handler,
)
from flowstate.stores import open_store
from tests.helpers import probe_server, run_body


class Counter(BaseModel):
    count: int = 0
    log: list[int] = []


async def test_update_state_never_gives_up_against_writers_of_the_same_process(
    store_url: str,
) -> None:
    """8 tasks x 25 update_state calls on one user record (default retries): none fails."""
    store = open_store(store_url)
    server = probe_server(store, user_state=Counter)
    rounds = 25

    async def body(ctx: Any) -> None:
        async def bump(current: Counter) -> dict[str, Any]:
            await asyncio.sleep(0)  # let the other tasks in between read and write
            return {"count": current.count + 1}

        for _ in range(rounds):
            await ctx.user.update_state(bump)
            await ctx.user.push_state("log", 1)  # atomic writes of the same key interleave

    try:
        results = await asyncio.gather(
            *(run_body(server, body, session_id=f"s{i}") for i in range(8)),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []

        async def read(ctx: Any) -> tuple[int, int]:
            await ctx.user.refresh()
            return ctx.user.state.count, len(ctx.user.state.log)

        assert (await run_body(server, read)).output == (8 * rounds, 8 * rounds)
    finally:
        await store.aclose()


async def test_an_update_function_that_writes_the_same_record_does_not_deadlock(
    store_url: str,
) -> None:
    """``fn`` must be pure; one that writes its own record conflicts with itself every time,
    and gets ConcurrentModificationError instead of waiting for its own turn forever."""
    store = open_store(store_url)
    server = probe_server(store, session_state=Counter)

    async def body(ctx: Any) -> int:
        async def impure(current: Counter) -> dict[str, Any]:
            await ctx.session.push_state("log", 1)
            return {"count": current.count + 1}

        with pytest.raises(ConcurrentModificationError):
            await asyncio.wait_for(ctx.session.update_state(impure), 20)
        return len(ctx.session.state.log)

    try:
        assert (await run_body(server, body)).output == 10  # one push per attempt
    finally:
        await store.aclose()


def test_an_async_collection_hook_is_refused_at_definition() -> None:
    async def on_created(key: str, state: Any, hook_ctx: Any) -> None:
        pass

    for name in ("on_instance_created", "on_instance_updated", "on_instance_deleted"):
        with pytest.raises(DefinitionError) as info:
            hooks: dict[str, Any] = {name: on_created}  # async: refused
            define_resource_collection("files/*", **hooks)
        message = str(info.value)
        assert name in message and "files/*" in message and "async" in message


def test_a_collection_hook_must_be_callable() -> None:
    with pytest.raises(DefinitionError, match="on_instance_deleted must be callable"):
        define_resource_collection("files/*", on_instance_deleted="nope")  # type: ignore[arg-type]


class Note(BaseModel):
    text: str = ""


async def test_a_failed_run_that_wrote_nothing_leaves_no_session(store_url: str) -> None:
    async def boom(input: Any, ctx: Any) -> None:
        raise RuntimeError("boom")

    async def write_then_boom(input: Any, ctx: Any) -> None:
        await ctx.session.patch_state(text="kept")
        raise RuntimeError("boom")

    flow = define_flow(
        "notes",
        actions={
            "boom": handler(name="boom", execute=boom),
            "write_then_boom": handler(name="wtb", execute=write_then_boom, session_state=Note),
        },
    )
    async with FlowServer([flow], store=store_url) as server:
        with pytest.raises(RuntimeError):
            await server.run("notes", "boom", user_id="alice", session_id="fresh")
        with pytest.raises(SessionNotFoundError):
            await server.get_session("fresh", user_id="alice")
        assert await server.list_sessions(user_id="alice") == []
        with pytest.raises(RuntimeError):  # without an id: the generated one is removed too
            await server.run("notes", "boom", user_id="alice")
        assert await server.list_sessions(user_id="alice") == []

        # A run that committed something keeps its session (and what it wrote).
        with pytest.raises(RuntimeError):
            await server.run("notes", "write_then_boom", user_id="alice", session_id="w")
        assert (await server.get_session("w", user_id="alice")).session_id == "w"

        # A session that existed before the failed run stays.
        with pytest.raises(RuntimeError):
            await server.run("notes", "boom", user_id="alice", session_id="w")
        assert (await server.get_session("w", user_id="alice")).session_id == "w"
