"""Raw driver floors: the bare driver doing the same versioned write at the same durability.

The write is a compare-and-swap: ``UPDATE raw SET value = ?, version = version + 1 WHERE
key = ? AND version = ?`` (the value a JSON document, as flowstate stores fields), one
transaction per write; a miss re-reads and retries. SQLite: ``sqlite3`` in WAL mode with
``synchronous=FULL`` (flowstate's default), ``BEGIN IMMEDIATE … COMMIT``. PostgreSQL: asyncpg,
autocommit, the server's ``synchronous_commit`` (as flowstate), a pool as big as flowstate's.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .common import POOL_SIZE, Backend

KEYS = [f"k{i}" for i in range(64)]


@dataclass
class Cell:
    """One timed cell: completed operations, wall time, per-op latencies (s), retries."""

    ops: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    retries: int = 0
    gave_up: int = 0
    lost: int | None = None  # returned successfully but missing from the stored result

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


class SQLiteFloor:
    """CAS writes through bare sqlite3, one connection per writer thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        conn = self._connect()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw (key TEXT PRIMARY KEY, version INTEGER NOT NULL, "
            "value TEXT NOT NULL) WITHOUT ROWID"
        )
        conn.executemany(
            "INSERT OR REPLACE INTO raw VALUES (?, 0, ?)",
            [(k, json.dumps({"count": 0})) for k in KEYS],
        )
        conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def total(self, keys: list[str]) -> int:
        conn = self._connect()
        try:
            return sum(
                json.loads(conn.execute("SELECT value FROM raw WHERE key = ?", (k,)).fetchone()[0])[
                    "count"
                ]
                for k in keys
            )
        finally:
            conn.close()

    def _writer(self, key: str, stop: float, out: Cell, lock: threading.Lock) -> None:
        conn = self._connect()
        lat: list[float] = []
        retries = 0
        seen: tuple[int, int] | None = None  # (version, count)
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                while True:
                    if seen is None:
                        version, value = conn.execute(
                            "SELECT version, value FROM raw WHERE key = ?", (key,)
                        ).fetchone()
                        seen = (version, json.loads(value)["count"])
                    conn.execute("BEGIN IMMEDIATE")
                    hit = conn.execute(
                        "UPDATE raw SET value = ?, version = version + 1 "
                        "WHERE key = ? AND version = ?",
                        (json.dumps({"count": seen[1] + 1}), key, seen[0]),
                    ).rowcount
                    conn.execute("COMMIT")
                    if hit == 1:
                        seen = (seen[0] + 1, seen[1] + 1)
                        break
                    retries += 1
                    seen = None
                lat.append(time.perf_counter() - t0)
        finally:
            conn.close()
        with lock:
            out.latencies.extend(lat)
            out.ops += len(lat)
            out.retries += retries

    def run(self, seconds: float, writers: int = 1, *, same_key: bool = True) -> Cell:
        keys = [KEYS[0] if same_key else KEYS[w % len(KEYS)] for w in range(writers)]
        distinct = sorted(set(keys))
        before = self.total(distinct)
        cell = Cell(0, 0.0)
        lock = threading.Lock()
        start = time.perf_counter()
        stop = start + seconds
        if writers == 1:
            self._writer(keys[0], stop, cell, lock)
        else:
            threads = [
                threading.Thread(target=self._writer, args=(k, stop, cell, lock)) for k in keys
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        cell.seconds = time.perf_counter() - start
        cell.lost = cell.ops - (self.total(distinct) - before)
        return cell


class PostgresFloor:
    """CAS writes through a bare asyncpg pool in the same server, own table in our schema."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, b: Backend) -> PostgresFloor:
        import asyncpg  # type: ignore[import-untyped]

        assert b.postgres_dsn and b.schema
        admin = await asyncpg.connect(b.postgres_dsn)
        try:
            await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{b.schema}"')
        finally:
            await admin.close()
        pool = await asyncpg.create_pool(
            b.postgres_dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            server_settings={"search_path": f'"{b.schema}"', "application_name": "flowstate-bench"},
        )
        await pool.execute(
            'CREATE TABLE IF NOT EXISTS bench_raw (key TEXT COLLATE "C" PRIMARY KEY, '
            "version BIGINT NOT NULL, value TEXT NOT NULL)"
        )
        await pool.executemany(
            "INSERT INTO bench_raw VALUES ($1, 0, $2) ON CONFLICT (key) DO NOTHING",
            [(k, json.dumps({"count": 0})) for k in KEYS],
        )
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def total(self, keys: list[str]) -> int:
        rows = await self.pool.fetch("SELECT value FROM bench_raw WHERE key = ANY($1)", keys)
        return sum(json.loads(r[0])["count"] for r in rows)

    async def run(self, seconds: float, writers: int = 1, *, same_key: bool = True) -> Cell:
        keys = [KEYS[0] if same_key else KEYS[w % len(KEYS)] for w in range(writers)]
        distinct = sorted(set(keys))
        before = await self.total(distinct)
        cell = Cell(0, 0.0)
        stop = time.perf_counter() + seconds

        async def writer(key: str) -> None:
            seen: tuple[int, int] | None = None
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                while True:
                    if seen is None:
                        row = await self.pool.fetchrow(
                            "SELECT version, value FROM bench_raw WHERE key = $1", key
                        )
                        seen = (row[0], json.loads(row[1])["count"])
                    status = await self.pool.execute(
                        "UPDATE bench_raw SET value = $1, version = version + 1 "
                        "WHERE key = $2 AND version = $3",
                        json.dumps({"count": seen[1] + 1}),
                        key,
                        seen[0],
                    )
                    if status == "UPDATE 1":
                        seen = (seen[0] + 1, seen[1] + 1)
                        break
                    cell.retries += 1
                    seen = None
                cell.latencies.append(time.perf_counter() - t0)
                cell.ops += 1

        start = time.perf_counter()
        await asyncio.gather(*(writer(k) for k in keys))
        cell.seconds = time.perf_counter() - start
        cell.lost = cell.ops - (await self.total(distinct) - before)
        return cell


class Floor:
    """The backend's floor behind one async interface (None for memory: no driver)."""

    def __init__(self, impl: SQLiteFloor | PostgresFloor) -> None:
        self.impl = impl

    @classmethod
    async def open(cls, b: Backend) -> Floor | None:
        if b.name == "sqlite":
            return cls(SQLiteFloor(str(b.tmp / f"floor-{b.url.rsplit('/', 1)[1]}")))
        if b.name == "postgres":
            return cls(await PostgresFloor.open(b))
        return None

    async def run(self, seconds: float, writers: int = 1, *, same_key: bool = True) -> Cell:
        if isinstance(self.impl, SQLiteFloor):
            if writers == 1:
                return self.impl.run(seconds, 1, same_key=same_key)
            return await asyncio.to_thread(self.impl.run, seconds, writers, same_key=same_key)
        return await self.impl.run(seconds, writers, same_key=same_key)

    async def close(self) -> None:
        if isinstance(self.impl, PostgresFloor):
            await self.impl.close()
