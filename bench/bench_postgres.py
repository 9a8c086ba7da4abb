"""PostgreSQL store write throughput and latency next to the raw asyncpg floor.

    python bench/bench_postgres.py [--url postgresql://postgres@127.0.0.1:5432/test]
                                   [--seconds 2] [--pool 8]

Operations, each on one record shared by all writers and on 8 different records:

- ``store inc``: ``store.apply(key, Change(ops=(FieldOp("inc", "value", 1),)))``
- ``store cas``: ``store.apply(key, Change(ops=(set value),  expected_version=v))``, re-reading
  on conflict (``store.read``) until it commits
- ``raw cas`` (the floor): ``UPDATE t SET value=$1, version=version+1 WHERE key=$2 AND
  version=$3`` on a bare table, re-reading (``SELECT``) on a miss until it hits
- ``raw inc``: ``UPDATE t SET value=value+1, version=version+1 WHERE key=$1``

Both sides use one asyncpg pool of the same size on the same server, in the same run. The
ratio is raw-cas throughput / store throughput (1.0 = as fast as the floor), taken per round
(operations run in rotating order, so outside load hits them alike), median over rounds.
Everything runs in a throwaway schema that is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import asyncpg  # type: ignore[import-untyped]

from flowstate.ops import Change, FieldOp
from flowstate.schema import Schema
from flowstate.stores.postgres import PostgresStore
from flowstate.stores.postgres.sql import POOL_OPTIONS

FREE = Schema(None)
INC = Change(FREE, ops=(FieldOp("inc", "value", 1),), operation="inc")


@dataclass
class Result:
    name: str
    ops: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1e6


Op = Callable[[int], Awaitable[None]]


async def drive(name: str, make_op: Callable[[int], Op], writers: int, seconds: float) -> Result:
    """Run ``writers`` tasks calling their op in a loop; time each call."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    counts = [0] * writers

    async def writer(i: int) -> None:
        op = make_op(i)
        while True:
            start = time.perf_counter()
            if start >= stop:
                return
            await op(i)
            latencies.append(time.perf_counter() - start)
            counts[i] += 1

    begin = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    return Result(name, sum(counts), time.perf_counter() - begin, latencies)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "FLOWSTATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--seconds", type=float, default=0.25, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved; medians reported")
    parser.add_argument("--pool", type=int, default=8)
    args = parser.parse_args()

    schema = f"fs_bench_{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in args.url else "?"
    url = f"{args.url}{sep}schema={schema}&min_size={args.pool}&max_size={args.pool}"
    store = PostgresStore(url)
    await store.read("warm")  # migrate, open the pool
    raw = await asyncpg.create_pool(
        args.url.split("?")[0],
        min_size=args.pool,
        max_size=args.pool,
        server_settings={"search_path": f'"{schema}"'},
        **POOL_OPTIONS,  # the same pool configuration as the store's (no reset query)
    )
    await raw.execute(
        'CREATE TABLE bench_raw (key TEXT COLLATE "C" PRIMARY KEY, value BIGINT NOT NULL, '
        "version BIGINT NOT NULL)"
    )
    keys = [f"bench/{i}" for i in range(8)]
    await raw.executemany("INSERT INTO bench_raw VALUES ($1, 0, 0)", [(k,) for k in keys])
    for key in keys:
        await store.apply(key, Change(FREE, ops=(FieldOp("set", "value", 0),)))

    def store_inc(key_of: Callable[[int], str]) -> Callable[[int], Op]:
        def make(i: int) -> Op:
            key = key_of(i)

            async def op(_: int) -> None:
                result = await store.apply(key, INC)
                assert result.status == "committed"

            return op

        return make

    def store_cas(key_of: Callable[[int], str]) -> Callable[[int], Op]:
        def make(i: int) -> Op:
            key = key_of(i)
            seen: dict[str, Any] = {"version": None, "value": 0}

            async def op(_: int) -> None:
                while True:
                    if seen["version"] is None:
                        record = await store.read(key, frozenset({"value"}))
                        assert record is not None
                        seen["version"], seen["value"] = record.version, record.fields["value"]
                    change = Change(
                        FREE,
                        ops=(FieldOp("set", "value", seen["value"] + 1),),
                        expected_version=seen["version"],
                    )
                    result = await store.apply(key, change)
                    if result.status == "committed":
                        seen["version"], seen["value"] = result.version, seen["value"] + 1
                        return
                    seen["version"] = None

            return op

        return make

    def raw_cas(key_of: Callable[[int], str]) -> Callable[[int], Op]:
        def make(i: int) -> Op:
            key = key_of(i)
            seen: dict[str, Any] = {"version": None, "value": 0}

            async def op(_: int) -> None:
                while True:
                    if seen["version"] is None:
                        row = await raw.fetchrow(
                            "SELECT value, version FROM bench_raw WHERE key = $1", key
                        )
                        seen["value"], seen["version"] = row[0], row[1]
                    status = await raw.execute(
                        "UPDATE bench_raw SET value = $1, version = version + 1 "
                        "WHERE key = $2 AND version = $3",
                        seen["value"] + 1,
                        key,
                        seen["version"],
                    )
                    if status == "UPDATE 1":
                        seen["version"] += 1
                        seen["value"] += 1
                        return
                    seen["version"] = None

            return op

        return make

    def raw_inc(key_of: Callable[[int], str]) -> Callable[[int], Op]:
        def make(i: int) -> Op:
            key = key_of(i)

            async def op(_: int) -> None:
                await raw.execute(
                    "UPDATE bench_raw SET value = value + 1, version = version + 1 WHERE key = $1",
                    key,
                )

            return op

        return make

    scenarios = [
        ("1 writer", 1, lambda i: keys[0]),
        ("8 writers, 1 record", 8, lambda i: keys[0]),
        ("8 writers, 8 records", 8, lambda i: keys[i]),
    ]
    ops = [
        ("raw cas", raw_cas),
        ("raw inc", raw_inc),
        ("store inc", store_inc),
        ("store cas", store_cas),
    ]
    print(
        f"PostgreSQL {await raw.fetchval('SHOW server_version')}, pool {args.pool}, "
        f"{args.rounds} x {args.seconds:g} s per cell, Python {sys.version.split()[0]}, "
        f"asyncpg {asyncpg.__version__}, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'scenario':<22} {'operation':<10} {'ops/s':>9} {'p50 µs':>8} {'p99 µs':>8} "
        f"{'vs floor':>9}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for label, writers, key_of in scenarios:
        runs: dict[str, list[Result]] = {name: [] for name, _ in ops}
        for name, factory in ops:  # warm up: prepared statements, caches
            await drive(name, factory(key_of), writers, 0.2)
        for round_ in range(args.rounds):
            # rotate the order so that a burst of outside load hits every operation alike
            turn = ops[round_ % len(ops) :] + ops[: round_ % len(ops)]
            for name, factory in turn:
                runs[name].append(await drive(name, factory(key_of), writers, args.seconds))
        for name, _ in ops:
            rate = statistics.median(r.rate for r in runs[name])
            # the ratio is taken round by round (same conditions), then the median of those
            ratio = statistics.median(
                f.rate / r.rate for f, r in zip(runs["raw cas"], runs[name], strict=True)
            )
            pooled = Result(name, 0, 1.0, [x for r in runs[name] for x in r.latencies])
            if name.startswith("store"):
                worst = max(worst, ratio)
            print(
                f"{label:<22} {name:<10} {rate:>9.0f} {pooled.pct(0.5):>8.0f} "
                f"{pooled.pct(0.99):>8.0f} {ratio:>8.2f}x"
            )
    print(f"\nworst store/floor throughput ratio: {worst:.2f}x (target <= 1.5x)")

    record = await store.read(keys[0])
    assert record is not None
    await store.aclose()
    await raw.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await raw.close()


if __name__ == "__main__":
    asyncio.run(main())
