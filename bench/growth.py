"""Growth: does an operation's cost move with what else is stored?

- **Stored sessions.** One template session (its binding, the user's session index entry and
  the user's record, all written by a real ``server.run``) is cloned inside the database to
  reach 1e3 → 1e6 sessions of as many users; at each size we time the in-run ``inc_state``
  and a whole ``server.run`` on one existing session.
- **Collection size.** One instance created through ``files.create`` is cloned to reach
  1e3 → 1e6 instances in that session's collection; we time ``list(limit=50)`` from the start
  and from the middle (``after=``) inside a run.
- **List length.** ``push_state`` onto a list of 10 → 100,000 items (the list is set through
  the API first).

Cloning copies every stored row whose key holds the template's token, with the token replaced
(SQL ``INSERT … SELECT`` on SQLite and PostgreSQL, a dict copy on memory): building a million
sessions through the API would take longer than the whole suite may.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any

from flowstate import FlowServer

from .common import Backend, Sizes, log, pct
from .operations import in_run

S_TOKEN = "zsTPLz"
F_TOKEN = "zfTPLz"


class Cloner:
    """Copies the rows whose key contains a token, replacing it by a zero-padded number."""

    def __init__(self, b: Backend, server: FlowServer) -> None:
        self.b = b
        self.server = server
        self.templates: dict[str, dict[str, list[str]]] = {}  # token -> table -> keys

    async def prepare(self, token: str) -> None:
        self.templates[token] = await self._template_keys(token)

    async def clone(self, token: str, lo: int, hi: int) -> None:
        """Rows for numbers lo..hi-1 (inclusive lo, exclusive hi)."""
        if hi <= lo:
            return
        if self.b.name == "memory":
            self._clone_memory(token, lo, hi)
        elif self.b.name == "sqlite":
            self._clone_sqlite(token, lo, hi)
        else:
            await self._clone_postgres(token, lo, hi)

    # ---------------------------------------------------------------- template lookup

    async def _template_keys(self, token: str) -> dict[str, list[str]]:
        if self.b.name == "memory":
            rows = self.server.store._rows  # type: ignore[attr-defined]
            return {"": [k for k in rows if token in k]}
        if self.b.name == "sqlite":
            conn = sqlite3.connect(self.b.sqlite_path or "")
            try:
                out = {}
                for table in self._sqlite_tables(conn):
                    keys = [
                        r[0]
                        for r in conn.execute(
                            f"SELECT DISTINCT key FROM {table} WHERE instr(key, ?) > 0", (token,)
                        )
                    ]
                    out[table] = keys
                return out
            finally:
                conn.close()
        conn = await self._pg()
        try:
            out = {}
            for table in await self._pg_tables(conn):
                rows = await conn.fetch(
                    f'SELECT DISTINCT key FROM "{table}" WHERE strpos(key, $1) > 0', token
                )
                out[table] = [r[0] for r in rows]
            return out
        finally:
            await conn.close()

    # ---------------------------------------------------------------- memory

    def _clone_memory(self, token: str, lo: int, hi: int) -> None:
        store: Any = self.server.store
        rows = store._rows
        for key in self.templates[token][""]:
            # Clones share the template's row object: they are only ever read (listed,
            # counted, skipped over), and a million copies would cost a minute.
            row = rows[key]
            parts = key.split(token)  # the token may occur twice (user and session id)
            rows.update((f"{n:07d}".join(parts), row) for n in range(lo, hi))
        store._keys = sorted(rows)

    # ---------------------------------------------------------------- sqlite

    @staticmethod
    def _sqlite_tables(conn: sqlite3.Connection) -> list[str]:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [
            t for t in names if any(c[1] == "key" for c in conn.execute(f"PRAGMA table_info({t})"))
        ]

    def _clone_sqlite(self, token: str, lo: int, hi: int) -> None:
        conn = sqlite3.connect(self.b.sqlite_path or "", isolation_level=None, timeout=60)
        try:
            conn.execute("PRAGMA synchronous = OFF")  # filler rows: durability is not measured
            conn.execute("BEGIN IMMEDIATE")
            for table, keys in self.templates[token].items():
                if not keys:
                    continue
                cols = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
                select = ", ".join(
                    "replace(t.key, ?, printf('%07d', s.n))" if c == "key" else f"t.{c}"
                    for c in cols
                )
                marks = ", ".join("?" for _ in keys)
                conn.execute(
                    f"WITH RECURSIVE s(n) AS (SELECT ? UNION ALL SELECT n + 1 FROM s WHERE n < ?) "
                    f"INSERT INTO {table} ({', '.join(cols)}) SELECT {select} "
                    f"FROM s, {table} t WHERE t.key IN ({marks})",
                    (lo, hi - 1, token, *keys),
                )
            conn.execute("COMMIT")
        finally:
            conn.close()

    # ---------------------------------------------------------------- postgres

    async def _pg(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]

        return await asyncpg.connect(
            self.b.postgres_dsn,
            server_settings={"search_path": f'"{self.b.schema}"'},
        )

    async def _pg_tables(self, conn: Any) -> list[str]:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND column_name = 'key'",
            self.b.schema,
        )
        return [r[0] for r in rows]

    async def _clone_postgres(self, token: str, lo: int, hi: int) -> None:
        conn = await self._pg()
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL synchronous_commit = off")
                for table, keys in self.templates[token].items():
                    if not keys:
                        continue
                    cols = [
                        r[0]
                        for r in await conn.fetch(
                            "SELECT column_name FROM information_schema.columns "
                            "WHERE table_schema = $1 AND table_name = $2 "
                            "AND column_default IS NULL ORDER BY ordinal_position",
                            self.b.schema,
                            table,
                        )
                    ]
                    select = ", ".join(
                        "replace(t.key, $1, lpad(s.n::text, 7, '0'))" if c == "key" else f't."{c}"'
                        for c in cols
                    )
                    quoted = ", ".join('"' + c + '"' for c in cols)
                    await conn.execute(
                        f'INSERT INTO "{table}" ({quoted}) '
                        f"SELECT {select} FROM generate_series($2::int, $3::int) s(n), "
                        f'"{table}" t WHERE t.key = ANY($4::text[])',
                        token,
                        lo,
                        hi - 1,
                        keys,
                    )
            # Settle the new rows now (visibility map, hint bits, statistics): otherwise
            # autovacuum does it during the measurement, on the same two cores.
            for table, keys in self.templates[token].items():
                if keys:
                    await conn.execute(f'VACUUM (ANALYZE) "{table}"')
        finally:
            await conn.close()


async def stored(b: Backend, sizes: Sizes) -> list[dict[str, Any]]:
    """Per size: in-run inc, whole run, collection list latency."""
    tag = uuid.uuid4().hex[:6]
    rows: list[dict[str, Any]] = []
    async with b.server() as server:
        user = f"grow-{tag}"
        session = (await server.run("bench", "bump", None, user_id=user)).session_id
        await server.run("bench", "bump", None, user_id=f"u{S_TOKEN}", session_id=f"s{S_TOKEN}")
        await server.run(
            "bench", "add_file", {"key": f"f{F_TOKEN}"}, user_id=user, session_id=session
        )
        cloner = Cloner(b, server)
        await cloner.prepare(S_TOKEN)
        await cloner.prepare(F_TOKEN)
        have = 0
        for size in sizes.growth:
            t0 = time.perf_counter()
            await cloner.clone(S_TOKEN, have, size)
            await cloner.clone(F_TOKEN, have, size)
            have = size
            log(
                f"growth {b.name}: {size:,} sessions + instances stored in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            inc = await in_run(server, "inc", 10.0, user, limit=sizes.growth_calls)
            run_lat = []
            for _ in range(sizes.growth_calls):
                t1 = time.perf_counter()
                await server.run("bench", "bump", None, user_id=user, session_id=session)
                run_lat.append(time.perf_counter() - t1)
            listing = (
                await server.run(
                    "bench",
                    "list_files",
                    {"calls": max(5, sizes.growth_calls // 4), "after": f"files/f{size // 2:07d}"},
                    user_id=user,
                    session_id=session,
                )
            ).output
            assert listing["page"] == 50 or size < 50, listing["page"]
            rows.append(
                {
                    "stored": size,
                    "inc_p50_us": pct(inc.latencies, 0.5) * 1e6,
                    "inc_p99_us": pct(inc.latencies, 0.99) * 1e6,
                    "run_p50_us": pct(run_lat, 0.5) * 1e6,
                    "run_p99_us": pct(run_lat, 0.99) * 1e6,
                    "list_p50_us": pct(listing["first"], 0.5) * 1e6,
                    "list_after_p50_us": pct(listing["middle"], 0.5) * 1e6,
                }
            )
    return rows


async def push_lengths(b: Backend, sizes: Sizes) -> list[dict[str, Any]]:
    """push_state latency onto lists of growing length (each length its own user record)."""
    tag = uuid.uuid4().hex[:6]
    rows = []
    async with b.server() as server:
        for length in sizes.push_lengths:
            user = f"push-{length}-{tag}"
            await server.run("bench", "set_items", {"n": length}, user_id=user)
            cell = await in_run(server, "push", 30.0, user, limit=sizes.push_calls)
            check = (await server.run("bench", "read", None, user_id=user)).output
            assert check["items"] == length + cell.ops, (check, length, cell.ops)
            rows.append(
                {
                    "length": length,
                    "p50_us": pct(cell.latencies, 0.5) * 1e6,
                    "p99_us": pct(cell.latencies, 0.99) * 1e6,
                }
            )
    return rows
