"""Peer worker: LangGraph doing flowstate's benchmark work, run in the peers' own venv.

    /work/venvs/bench-peers/bin/python bench/peers_worker.py '{"peer": "store-sqlite", ...}'

Prints one JSON object on stdout. It imports nothing from flowstate (its pins never meet
ours). The work is a counter per user, read-modify-write as application code writes it:

- ``store-*``: ``item = await store.aget(ns, user)`` then ``await store.aput(ns, user,
  {"count": n + 1})`` (InMemoryStore, AsyncSqliteStore, AsyncPostgresStore);
- ``checkpoint-*``: one ``ainvoke`` per increment of a one-node graph returning
  ``{"count": state["count"] + 1}`` on ``thread_id = user`` (InMemorySaver, AsyncSqliteSaver,
  AsyncPostgresSaver) — what a LangGraph app keeping per-user state in its checkpoints does.

Each cell runs ``tasks`` concurrent asyncio tasks on one user's counter for ``seconds``; the
final stored count is read back and compared with the number of increments that returned:
``lost = returned - final``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
import uuid
from contextlib import AsyncExitStack
from importlib.metadata import version
from typing import Any, TypedDict


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def drive(bump: Any, final: Any, tasks: int, seconds: float, user: str) -> dict[str, Any]:
    """``tasks`` tasks calling ``bump(user)`` until the deadline; then check the count."""
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    async def task() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                await bump(user)
            except Exception as exc:  # a peer's own conflict/busy error: counted, not fatal
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - t0)

    begin = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(tasks)))
    elapsed = time.perf_counter() - begin
    stored = await final(user)
    done = len(latencies)
    return {
        "tasks": tasks,
        "ops": done,
        "seconds": elapsed,
        "rate": done / elapsed,
        "p50_us": pct(latencies, 0.5) * 1e6,
        "p99_us": pct(latencies, 0.99) * 1e6,
        "final": stored,
        "lost": done - stored,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
    }


class Counter(TypedDict, total=False):
    count: int


def graph(saver: Any) -> Any:
    from langgraph.graph import END, START, StateGraph

    def bump(state: Counter) -> Counter:
        return {"count": state.get("count", 0) + 1}

    builder = StateGraph(Counter)
    builder.add_node("bump", bump)
    builder.add_edge(START, "bump")
    builder.add_edge("bump", END)
    return builder.compile(checkpointer=saver)


async def open_peer(peer: str, cfg: dict[str, Any], stack: AsyncExitStack) -> dict[str, Any]:
    """Open the peer; return its bump/final coroutines and its durability settings."""
    settings: dict[str, Any] = {}
    kind, backend = peer.split("-", 1)
    target: Any
    if backend == "memory":
        if kind == "store":
            from langgraph.store.memory import InMemoryStore

            target = InMemoryStore()
        else:
            from langgraph.checkpoint.memory import InMemorySaver

            target = InMemorySaver()
    elif backend == "sqlite":
        path = os.path.join(cfg["tmp"], f"{peer}.db")
        if kind == "store":
            from langgraph.store.sqlite.aio import AsyncSqliteStore

            target = await stack.enter_async_context(AsyncSqliteStore.from_conn_string(path))
        else:
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            target = await stack.enter_async_context(AsyncSqliteSaver.from_conn_string(path))
        await target.setup()
        conn = sqlite3.connect(path)  # what the peer left the file at (journal mode persists)
        settings["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.close()
        settings["synchronous"] = "sqlite default (FULL; the peer sets none)"
    else:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        schema = cfg["schema"]
        admin = await psycopg.AsyncConnection.connect(cfg["pg_url"], autocommit=True)
        await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        row = await (await admin.execute("SHOW synchronous_commit")).fetchone()
        settings["synchronous_commit"] = row[0] if row else None

        async def drop() -> None:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()

        stack.push_async_callback(drop)
        pool = AsyncConnectionPool(
            cfg["pg_url"],
            min_size=1,
            max_size=cfg.get("pool", 10),
            open=False,
            kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "row_factory": dict_row,
                "options": f"-csearch_path={schema}",
            },
        )
        await pool.open()
        stack.push_async_callback(pool.close)
        if kind == "store":
            from langgraph.store.postgres.aio import AsyncPostgresStore

            target = AsyncPostgresStore(conn=pool)
        else:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

            target = AsyncPostgresSaver(conn=pool)
        await target.setup()
    ns = ("counters",)
    if kind == "store":
        store = target

        async def bump(user: str) -> None:
            item = await store.aget(ns, user)
            count = item.value["count"] if item is not None else 0
            await store.aput(ns, user, {"count": count + 1})

        async def final(user: str) -> int:
            item = await store.aget(ns, user)
            return int(item.value["count"]) if item is not None else 0

    else:
        app = graph(target)

        async def bump(user: str) -> None:
            await app.ainvoke({}, {"configurable": {"thread_id": user}})

        async def final(user: str) -> int:
            snapshot = await app.aget_state({"configurable": {"thread_id": user}})
            return int(snapshot.values.get("count", 0))

    return {"bump": bump, "final": final, "settings": settings}


async def main(cfg: dict[str, Any]) -> dict[str, Any]:
    peer = cfg["peer"]
    async with AsyncExitStack() as stack:
        opened = await open_peer(peer, cfg, stack)
        await opened["bump"]("warmup")
        cells = []
        for tasks in cfg["tasks"]:
            for round_ in range(cfg.get("rounds", 1)):
                user = f"u{tasks}-{round_}-{uuid.uuid4().hex[:6]}"
                cells.append(
                    await drive(opened["bump"], opened["final"], tasks, cfg["seconds"], user)
                )
        return {
            "peer": peer,
            "versions": {
                name: version(name)
                for name in (
                    "langgraph",
                    "langgraph-checkpoint-sqlite",
                    "langgraph-checkpoint-postgres",
                )
            },
            "python": sys.version.split()[0],
            "settings": opened["settings"],
            "cells": cells,
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
