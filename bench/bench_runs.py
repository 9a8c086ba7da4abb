"""Whole runs next to the operations inside them, hot keys, and pushes onto long lists.

    python bench/bench_runs.py [--stores sqlite,postgres] [--rounds 8] [--seconds 0.5]
                               [--push-ops 200]

Cells, each per store, in rotating order per round (so outside load hits them alike); the
table shows the median over rounds, and ratios are medians of per-round ratios:

- ``in-run op``: one run doing ``ctx.user.inc_state(n=1)`` in a loop (operations per second).
- ``run, 1 writer``: ``FlowServer.run`` of an action doing one ``ctx.user.inc_state(n=1)``,
  one after another, on an existing session.
- ``runs, 8 writers / 8 users`` and ``runs, 8 writers / 1 user`` (8 sessions of one user,
  all incrementing the same user record).
- ``store inc, 1 writer`` / ``store inc, 8 writers / 1 record``: ``store.apply`` of an inc.
- ``push onto N items``: ``push_state`` p50 onto a list of 100 and 100,000 items.

Lost updates are checked at the end of every contended cell (final count == operations done).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pydantic import BaseModel, Field

from flowstate import Context, FlowServer, define_flow, handler
from flowstate.layout import scope_root
from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.scopes import ScopeBinding
from flowstate.stores import Store, open_store

PG_URL = os.environ.get("FLOWSTATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Counter(BaseModel):
    n: int = 0


class Log(BaseModel):
    items: list[int] = Field(default_factory=list)


def make_flow(inner: int) -> Any:
    @handler(name="bump", user_state=Counter)
    async def bump(input: Any, ctx: Context) -> int:
        await ctx.user.inc_state(n=1)
        return 1

    @handler(name="loop", user_state=Counter)
    async def loop(input: Any, ctx: Context) -> float:
        start = time.perf_counter()
        for _ in range(inner):
            await ctx.user.inc_state(n=1)
        return inner / (time.perf_counter() - start)

    return define_flow("bench", {"bump": bump, "loop": loop})


async def timed_loop(writers: int, seconds: float, op: Callable[[int], Awaitable[Any]]) -> int:
    stop = time.perf_counter() + seconds
    done = [0] * writers

    async def writer(i: int) -> None:
        while time.perf_counter() < stop:
            await op(i)
            done[i] += 1

    await asyncio.gather(*(writer(i) for i in range(writers)))
    return sum(done)


async def backend_pids(store: Store) -> list[int]:
    """The PostgreSQL backend pids of the store's pool (empty for other stores)."""
    pool = getattr(store, "_pool", None)
    if pool is None:
        return []
    holders = getattr(pool, "_holders", [])  # asyncpg internals: bench-only
    return [h._con.get_server_pid() for h in holders if getattr(h, "_con", None) is not None]


def proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by processes ``pids`` (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def cells(server: FlowServer, store: Store, seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    tag = uuid.uuid4().hex[:6]
    # in-run op rate
    result = await server.run("bench", "loop", user_id=f"in-{tag}")
    out["in-run op"] = float(result.output)
    # one writer
    first = await server.run("bench", "bump", user_id=f"one-{tag}")
    sid = first.session_id
    start = time.perf_counter()
    n = await timed_loop(
        1, seconds, lambda i: server.run("bench", "bump", user_id=f"one-{tag}", session_id=sid)
    )
    out["run, 1 writer"] = n / (time.perf_counter() - start)
    # 8 writers on 8 users
    sids = [
        (await server.run("bench", "bump", user_id=f"u{i}-{tag}")).session_id for i in range(8)
    ]
    pids = await backend_pids(store)
    server_cpu = proc_cpu(pids)
    client_cpu = time.process_time()
    start = time.perf_counter()
    n = await timed_loop(
        8,
        seconds,
        lambda i: server.run("bench", "bump", user_id=f"u{i}-{tag}", session_id=sids[i]),
    )
    wall = time.perf_counter() - start
    out["runs, 8 writers / 8 users"] = n / wall
    # where the time goes: this process's CPU, the database backends' CPU (its pool's)
    out["8/8: client CPU ms/run"] = (time.process_time() - client_cpu) / n * 1e3
    if pids:
        out["8/8: server CPU ms/run"] = (proc_cpu(pids) - server_cpu) / n * 1e3
    # 8 writers on one user (8 sessions)
    shared = f"shared-{tag}"
    sids = [(await server.run("bench", "bump", user_id=shared)).session_id for i in range(8)]
    start = time.perf_counter()
    n = await timed_loop(
        8, seconds, lambda i: server.run("bench", "bump", user_id=shared, session_id=sids[i])
    )
    out["runs, 8 writers / 1 user"] = n / (time.perf_counter() - start)
    record = await store.read(scope_root("user", shared) + "state")
    assert record is not None
    lost = n + 8 - record.fields["n"]
    out["lost (runs)"] = lost
    # store level
    change = Change(Schema(None), ops=(FieldOp("inc", "n", 1),), operation="inc")
    key1 = f"bench/{tag}/one"
    start = time.perf_counter()
    n = await timed_loop(1, seconds, lambda i: store.apply(key1, change))
    out["store inc, 1 writer"] = n / (time.perf_counter() - start)
    key8 = f"bench/{tag}/hot"
    start = time.perf_counter()
    n = await timed_loop(8, seconds, lambda i: store.apply(key8, change))
    out["store inc, 8 writers / 1 record"] = n / (time.perf_counter() - start)
    record = await store.read(key8)
    out["lost (store)"] = n - (record.fields["n"] if record else 0)
    return out


async def pushes(store: Store, ops: int) -> dict[str, float]:
    out = {}
    for length in (100, 100_000):
        sid = f"push{length}-{uuid.uuid4().hex[:6]}"
        binding = ScopeBinding(store, "session", sid, scope_root("session", sid), Schema(Log), {})
        h = binding.handle(Log)
        await h.set_state({"items": list(range(length))})
        lat = []
        for i in range(ops):
            t0 = time.perf_counter()
            await h.push_state("items", i)
            lat.append(time.perf_counter() - t0)
        out[f"push onto {length:,} items, p50 µs"] = statistics.median(lat) * 1e6
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--inner", type=int, default=300)
    parser.add_argument("--push-ops", type=int, default=200)
    parser.add_argument("--push-only", action="store_true", help="only the push cells")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    stores: dict[str, Store] = {}
    schemas = []
    for name in args.stores.split(","):
        if name == "sqlite":
            stores[name] = open_store(f"sqlite:///{tmp}/runs.db")
        elif name == "memory":
            stores[name] = open_store("memory://")
        elif name == "postgres":
            schema = f"fs_benchruns_{uuid.uuid4().hex[:8]}"
            schemas.append(schema)
            stores[name] = open_store(f"{PG_URL}?schema={schema}&min_size=8&max_size=8")
    servers = {name: FlowServer(make_flow(args.inner), store=s) for name, s in stores.items()}
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in stores}
    try:
        order = list(stores)
        for r in range(0 if args.push_only else args.rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                got = await cells(servers[name], stores[name], args.seconds)
                for cell, value in got.items():
                    rows[name].setdefault(cell, []).append(value)
        for name, store in stores.items():
            for cell, value in (await pushes(store, args.push_ops)).items():
                rows[name][cell] = [value]
        print("| store | cell | median | ratio (median of per-round) |")
        print("|---|---|---:|---|")
        for name, data in rows.items():
            if args.push_only:
                a = data["push onto 100,000 items, p50 µs"][0]
                b = data["push onto 100 items, p50 µs"][0]
                print(f"| {name} | push p50 µs: 100 items {b:,.0f}, 100,000 items {a:,.0f} "
                      f"| {a / b:.2f} |")
                continue
            inrun = data["in-run op"]
            one = data["run, 1 writer"]
            s1 = data["store inc, 1 writer"]
            ratios = {
                "run, 1 writer": ("÷ in-run op", one, inrun),
                "runs, 8 writers / 8 users": ("÷ run, 1 writer", data[
                    "runs, 8 writers / 8 users"], one),
                "runs, 8 writers / 1 user": ("÷ run, 1 writer", data[
                    "runs, 8 writers / 1 user"], one),
                "store inc, 8 writers / 1 record": ("÷ store inc, 1 writer", data[
                    "store inc, 8 writers / 1 record"], s1),
            }
            for cell, values in data.items():
                ratio = ""
                if cell in ratios:
                    label, a, b = ratios[cell]
                    per = [x / y for x, y in zip(a, b, strict=True)]
                    ratio = f"{statistics.median(per):.2f} {label}"
                if cell.startswith("8/8"):
                    print(f"| {name} | {cell} | {statistics.median(values):.3f} | |")
                elif cell.startswith("lost"):
                    print(f"| {name} | {cell} | {sum(values):.0f} (sum) | |")
                else:
                    print(f"| {name} | {cell} | {statistics.median(values):,.0f} | {ratio} |")
            if "push onto 100 items, p50 µs" in data:
                a = data["push onto 100,000 items, p50 µs"][0]
                b = data["push onto 100 items, p50 µs"][0]
                print(f"| {name} | push 100,000 ÷ push 100 | {a / b:.2f} | |")
    finally:
        for server in servers.values():
            await server.aclose()
        if schemas:
            import asyncpg  # type: ignore[import-untyped]

            conn = await asyncpg.connect(PG_URL)
            for schema in schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
