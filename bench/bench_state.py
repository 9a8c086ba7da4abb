"""Benchmark: state operations on memory and SQLite next to the raw sqlite3 floor.

    python bench/bench_state.py [--ops 2000] [--big 1000000] [--synchronous full]

Prints one table per section; every figure comes from this run on this machine. The raw floor
is the bare sqlite3 driver doing one compare-and-swap ``UPDATE … WHERE key=? AND version=?``
per transaction with the same journal mode and synchronous setting as the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.scopes import ScopeBinding, ScopeHandle, scope_root
from flowstate.stores import MemoryStore, SQLiteStore, Store


class Bench(BaseModel):
    count: int = 0
    mode: str = "chat"
    items: list[int] = Field(default_factory=list)


def handle(store: Store, sid: str = "bench") -> tuple[ScopeBinding, ScopeHandle[Bench]]:
    binding = ScopeBinding(store, "session", sid, scope_root("session", sid), Schema(Bench), {})
    return binding, binding.handle(Bench)


async def timed(n: int, op: Callable[[int], Awaitable[Any]]) -> tuple[float, list[float]]:
    """Run ``op(i)`` n times sequentially; return ops/s and per-op latencies (µs)."""
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        await op(i)
        lat.append((time.perf_counter() - t0) * 1e6)
    return n / (time.perf_counter() - start), lat


def raw_floor(path: str, n: int, synchronous: str) -> tuple[float, list[float]]:
    """The bare driver: one CAS UPDATE per transaction, same pragmas as the store."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS raw (key TEXT PRIMARY KEY, version INT, value TEXT)")
    conn.execute("INSERT OR REPLACE INTO raw VALUES ('k', 0, '{\"count\":0}')")
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE raw SET value = ?, version = version + 1 WHERE key = ? AND version = ?",
            (json.dumps({"count": i + 1}), "k", i),
        )
        conn.execute("COMMIT")
        lat.append((time.perf_counter() - t0) * 1e6)
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate, lat


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def per_operation(store: Store, n: int) -> dict[str, tuple[float, list[float]]]:
    _, h = handle(store)
    await h.refresh()
    out = {
        "patch_state": await timed(n, lambda i: h.patch_state(mode=f"m{i}")),
        "inc_state": await timed(n, lambda i: h.inc_state(count=1)),
        "push_state": await timed(n, lambda i: h.push_state("items", i)),
        "update_state": await timed(n, lambda i: h.update_state(lambda s: {"count": s.count + 1})),
    }
    return out


async def contention(store: Store, writers: int, per_writer: int) -> tuple[float, int, int]:
    """8 tasks incrementing one record; returns ops/s, final count, expected count."""
    _, h = handle(store, "contended")

    async def writer() -> None:
        for _ in range(per_writer):
            await h.inc_state(count=1)

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - start
    await h.refresh()
    return writers * per_writer / elapsed, h.state.count, writers * per_writer


def populate_sqlite(path: str, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    now = time.time_ns()
    conn.executemany(
        "INSERT INTO fs_records VALUES (?, 1, NULL, ?, ?)",
        ((f"session/other{i:07d}/state", now, now) for i in range(n)),
    )
    conn.executemany(
        "INSERT INTO fs_fields VALUES (?, 'count', '1')",
        ((f"session/other{i:07d}/state",) for i in range(n)),
    )
    conn.execute("COMMIT")
    conn.close()


def populate_memory(store: MemoryStore, n: int) -> None:
    from flowstate.stores.memory import _Row

    now = time.time_ns()
    for i in range(n):
        store._rows[f"session/other{i:07d}/state"] = _Row(1, {"count": 1}, None, now, now)
    store._keys = sorted(store._rows)


async def scale(kind: str, others: int, n: int, tmp: Path, synchronous: str) -> dict[str, float]:
    """inc_state and a collection prefix list/count with ``others`` unrelated records stored."""
    if kind == "sqlite":
        path = str(tmp / f"scale{others}.db")
        SQLiteStore(path)  # creates the tables
        populate_sqlite(path, others)
        store: Store = SQLiteStore(path, synchronous=synchronous)
    else:
        store = MemoryStore()
        populate_memory(store, others)
    try:
        _, h = handle(store, "target")
        inc_rate, inc_lat = await timed(n, lambda i: h.inc_state(count=1))
        for i in range(50):
            await store.create(f"session/target/c/files/files/f{i:03d}", {"count": i})
        _, list_lat = await timed(200, lambda i: store.scan("session/target/c/files/files/"))
        count_rate, _ = await timed(200, lambda i: store.count("session/target/c/files/"))
        return {
            "inc_state ops/s": inc_rate,
            "inc_state p50 µs": pct(inc_lat, 0.5),
            "list(50) p50 µs": pct(list_lat, 0.5),
            "count ops/s": count_rate,
        }
    finally:
        await store.aclose()


async def store_apply_floor(store: Store, n: int) -> tuple[float, list[float]]:
    """flowstate's store layer alone (no handle): the inc Change applied directly."""
    change = Change(Schema(Bench), ops=(FieldOp("inc", "count", 1),))
    return await timed(n, lambda i: store.apply("session/floor/state", change))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--synchronous", default="full")
    args = parser.parse_args()
    sync = args.synchronous.upper()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        raw_rate, raw_lat = raw_floor(str(tmp / "raw.db"), args.ops, sync)
        print(f"\n## Per operation ({args.ops} sequential ops; SQLite WAL, synchronous={sync})\n")
        print("| backend | operation | ops/s | p50 µs | p99 µs | raw floor ÷ flowstate |")
        print("|---|---|---:|---:|---:|---:|")
        print(
            f"| sqlite3 (raw) | CAS UPDATE | {raw_rate:,.0f} | {pct(raw_lat, 0.5):.0f} | "
            f"{pct(raw_lat, 0.99):.0f} | 1.00 |"
        )
        sqlite = SQLiteStore(tmp / "flow.db", synchronous=sync)
        memory = MemoryStore()
        try:
            rate, lat = await store_apply_floor(sqlite, args.ops)
            print(
                f"| sqlite (store.apply) | inc | {rate:,.0f} | {pct(lat, 0.5):.0f} | "
                f"{pct(lat, 0.99):.0f} | {raw_rate / rate:.2f} |"
            )
            for name, store in (("sqlite", sqlite), ("memory", memory)):
                results = await per_operation(store, args.ops)
                for op, (rate, lat) in results.items():
                    ratio = f"{raw_rate / rate:.2f}" if name == "sqlite" else "—"
                    print(
                        f"| {name} | {op} | {rate:,.0f} | {pct(lat, 0.5):.0f} | "
                        f"{pct(lat, 0.99):.0f} | {ratio} |"
                    )
            print("\n## Contention: 8 writers, one record, inc_state\n")
            print("| backend | ops/s | final count | expected | lost |")
            print("|---|---:|---:|---:|---:|")
            for name, store in (("sqlite", sqlite), ("memory", memory)):
                rate, final, expected = await contention(store, 8, args.ops // 8)
                print(f"| {name} | {rate:,.0f} | {final} | {expected} | {expected - final} |")
        finally:
            await sqlite.aclose()
        print("\n## Hot appends: push_state onto a long list\n")
        print("| backend | list length | push_state p50 µs | p99 µs |")
        print("|---|---:|---:|---:|")
        for name, make in (
            ("sqlite", lambda: SQLiteStore(tmp / "lists.db", synchronous=sync)),
            ("memory", MemoryStore),
        ):
            store = make()
            try:
                for length in (100, 100_000):
                    _, h = handle(store, f"list{length}")
                    await h.set_state({"items": list(range(length))})
                    _, lat = await timed(200, lambda i, h=h: h.push_state("items", i))
                    print(f"| {name} | {length:,} | {pct(lat, 0.5):.0f} | {pct(lat, 0.99):.0f} |")
            finally:
                await store.aclose()
        print("\n## Scale: unrelated records in the store\n")
        print(
            "| backend | other records | inc_state ops/s | inc p50 µs | list(50) p50 µs |"
            " count ops/s |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for kind in ("sqlite", "memory"):
            for others in (1_000, args.big):
                r = await scale(kind, others, min(args.ops, 1000), tmp, sync)
                print(
                    f"| {kind} | {others:,} | {r['inc_state ops/s']:,.0f} | "
                    f"{r['inc_state p50 µs']:.0f} | {r['list(50) p50 µs']:.0f} | "
                    f"{r['count ops/s']:,.0f} |"
                )


if __name__ == "__main__":
    asyncio.run(main())
