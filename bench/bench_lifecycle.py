"""Bulk lifecycle operations at scale: migrate-state, gc and copy, time and peak memory.

    python bench/bench_lifecycle.py [--records 1000000] [--backend sqlite|postgres|both]
                                    [--only migrate|gc|export|copy]
                                    [--url postgresql://postgres@127.0.0.1:5432/test]
                                    [--dir /tmp/flowstate-bench]

Each measured step runs in its own process (``python bench/bench_lifecycle.py step …``) so
its peak RSS (``ru_maxrss``) is its own, not the data generation's. Steps, per backend:

- ``migrate``: N user-state records written at schema version 1 (``{"name": …, "n": i}``),
  upgraded to version 2 (``name`` renamed ``title``) by ``flowstate.lifecycle.migrate_state``
  — a read, the migration, validation and a compare-and-swap write per record.
- ``gc``: N sessions (binding, user index entry, state record: 3 N records) idle past their
  flow's ttl, removed by ``flowstate.lifecycle.collect_garbage``.
- ``copy``: the N migrated records copied SQLite → PostgreSQL (``both`` only) and
  verified (count + checksum of both stores). ``--only copy``: N freshly generated user
  records (1 in 100 with pushes not yet folded into their list) copied SQLite → PostgreSQL.
- ``export`` (``--only export``): the same N records written as a dump
  (``flowstate.transfer.export_dump``, what ``flowstate db export`` runs) to a file.

Next to each, the raw-driver floor in the same run: the same number of rows read in key
order in batches of 500 (``SELECT`` of ``fs_records`` joined by range to ``fs_fields``) —
what any bulk pass over the store must at least pay. Data is generated through
``Store.import_records`` (not measured). PostgreSQL runs in a throwaway schema.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from flowstate import FlowServer, ScopeConfig, define_flow, handler  # noqa: E402
from flowstate.ops import Change, FieldOp  # noqa: E402
from flowstate.schema import Schema  # noqa: E402
from flowstate.stores import Record, open_store  # noqa: E402

BATCH = 5000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------- app


def app(url: str, version: int, ttl_seconds: float | None = None) -> FlowServer:
    from datetime import timedelta

    from pydantic import BaseModel

    class V1(BaseModel):
        name: str = ""
        n: int = 0

    class V2(BaseModel):
        title: str = ""
        n: int = 0

    def rename(fields: dict[str, Any]) -> dict[str, Any]:
        out = dict(fields)
        out["title"] = out.pop("name", "")
        return out

    @handler(name="noop")
    async def noop(input: Any, ctx: Any) -> Any:
        return None

    ttl = None if ttl_seconds is None else timedelta(seconds=ttl_seconds)
    user = (
        ScopeConfig(state=V1)
        if version == 1
        else ScopeConfig(state=V2, schema_version=2, migrations={2: rename})
    )
    flow = define_flow(
        "bench", actions={"noop": noop}, user=user, session=ScopeConfig(state=V1, ttl=ttl)
    )
    return FlowServer([flow], store=url)


# ----------------------------------------------------------------------------------- data


async def generate(url: str, what: str, n: int) -> None:
    store = open_store(url)
    now = time.time_ns()
    old = now - 7 * 86400 * 10**9
    try:
        for start in range(0, n, BATCH):
            batch: list[Record] = []
            for i in range(start, min(n, start + BATCH)):
                uid = f"u{i:08d}"
                if what in ("users", "dump"):
                    batch.append(
                        Record(f"user/{uid}/state", 1, {"name": f"n{i}", "n": i}, None, now, now)
                    )
                else:
                    sid = f"s{i:08d}"
                    binding = {
                        "userId": uid,
                        "flowKind": "bench",
                        "projectId": None,
                        "createdAt": old / 1e9,
                    }
                    batch.append(Record(f"_sessions/{sid}", 1, binding, None, old, old))
                    batch.append(
                        Record(
                            f"_user_sessions/{uid}/{sid}", 1, {"flowKind": "bench"}, None, old, old
                        )
                    )
                    batch.append(
                        Record(f"session/{sid}/state", 3, {"name": "x", "n": i}, None, old, old)
                    )
            await store.import_records(batch)
        if what == "dump":
            # 1 in 100 records has a list with pushes not yet folded into it (SQLite keeps
            # them as rows of fs_items): export and copy must reassemble them.
            free = Schema(None)
            for i in range(0, n, 100):
                key = f"user/u{i:08d}/state"
                await store.apply(key, Change(free, ops=(FieldOp("set", "log", [0]),)))
                for j in range(1, 4):
                    await store.apply(key, Change(free, ops=(FieldOp("push", "log", j),)))
    finally:
        await store.aclose()


# ----------------------------------------------------------------------------------- floor


async def floor_scan(url: str, prefix: str) -> int:
    """Read every record under prefix with the raw driver, 500 at a time, in key order."""
    end = prefix + "\U0010ffff"
    n = 0
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url[len("sqlite:///") :])
        after = prefix
        op = ">="
        while True:
            rows = conn.execute(
                f"SELECT key, version, content, created_at, accessed_at FROM fs_records "
                f"WHERE key {op} ? AND key < ? ORDER BY key LIMIT 500",
                (after, end),
            ).fetchall()
            if not rows:
                break
            fields = conn.execute(
                "SELECT key, name, value FROM fs_fields WHERE key >= ? AND key <= ?",
                (rows[0][0], rows[-1][0]),
            ).fetchall()
            n += len(rows) + 0 * len([json.loads(v) for _, _, v in fields])
            after, op = rows[-1][0], ">"
        conn.close()
        return n
    import asyncpg  # type: ignore[import-untyped]

    from flowstate.stores.postgres.migrations import parse_url

    config = parse_url(url)
    conn = await asyncpg.connect(config.dsn, server_settings=config.server_settings)
    try:
        after, op = prefix, ">="
        while True:
            rows = await conn.fetch(
                f"SELECT key, version, content, created_at, accessed_at FROM fs_records "
                f"WHERE key {op} $1 AND key < $2 ORDER BY key LIMIT 500",
                after,
                end,
            )
            if not rows:
                break
            fields = await conn.fetch(
                "SELECT key, name, value FROM fs_fields WHERE key >= $1 AND key <= $2",
                rows[0][0],
                rows[-1][0],
            )
            n += len(rows) + 0 * len([json.loads(r[2]) for r in fields])
            after, op = rows[-1][0], ">"
    finally:
        await conn.close()
    return n


# ----------------------------------------------------------------------------------- steps


async def step(name: str, url: str, extra: str) -> dict[str, Any]:
    from flowstate.lifecycle import collect_garbage, migrate_state
    from flowstate.transfer import copy_records, digest, export_dump

    start = time.perf_counter()
    out: dict[str, Any] = {}
    if name == "migrate":
        server = app(url, 2)
        report = await migrate_state(server)
        out = {"upgraded": report.upgraded, "failed": len(report.failed)}
        await server.aclose()
    elif name == "gc":
        server = app(url, 1, ttl_seconds=3600)
        report = await collect_garbage(server)
        out = {"sessions": report.sessions, "records": report.records}
        await server.aclose()
    elif name == "copy":
        source, target = open_store(url), open_store(extra)
        copied = await copy_records(source, target)
        copy_done = time.perf_counter()
        same = await digest(source) == await digest(target)
        out = {"copied": copied, "verified": same, "copy_s": round(copy_done - start, 1)}
        await source.aclose()
        await target.aclose()
    elif name == "export":
        store = open_store(url)
        with open(extra, "w", encoding="utf-8") as dump:
            result = await export_dump(store, dump)
        await store.aclose()
        out = {"exported": result.count, "dump_mb": round(os.path.getsize(extra) / 2**20, 1)}
        os.unlink(extra)
    elif name == "floor":
        out = {"rows": await floor_scan(url, extra)}
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def run_step(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "step", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"step {args} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def pg_url(base: str) -> tuple[str, str]:
    schema = f"bench_lifecycle_{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}schema={schema}", schema


async def drop_schema(base: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base.split("?", 1)[0])
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def dump_steps(
    args: argparse.Namespace, n: int, work: Path, backends: list[str], cleanup: list[str]
) -> None:
    """``--only export`` (each backend) or ``--only copy`` (SQLite → PostgreSQL)."""
    if args.only == "copy":
        backends = ["sqlite"]
    for backend in backends:
        if backend == "sqlite":
            path = work / f"dump-{uuid.uuid4().hex[:6]}.db"
            url = f"sqlite:///{path}"
        else:
            url, schema = pg_url(args.url)
            cleanup.append(schema)
        t = time.perf_counter()
        asyncio.run(generate(url, "dump", n))
        gen_s = time.perf_counter() - t
        floor = run_step("floor", url, "")
        if args.only == "export":
            op = run_step("export", url, str(work / f"dump-{uuid.uuid4().hex[:6]}.jsonl"))
            took, label = op["seconds"], f"{backend:8} export       "
        else:
            target, schema = pg_url(args.url)
            cleanup.append(schema)
            op = run_step("copy", url, target)
            took, label = op["copy_s"], "sqlite→pg copy        "
        ratio = took / max(floor["seconds"], 0.001)
        print(
            f"{label} {json.dumps(op)}  floor scan {floor['seconds']} s "
            f"({floor['rows']} rows)  ratio {ratio:.1f}x  (generated in {gen_s:.0f} s)",
            flush=True,
        )
        if backend == "sqlite":
            path.unlink(missing_ok=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "step":
        name, url, extra = sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else ""
        print(json.dumps(asyncio.run(step(name, url, extra))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "FLOWSTATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--dir", default="/tmp/flowstate-bench")
    parser.add_argument(
        "--only",
        choices=["migrate", "gc", "export", "copy"],
        default=None,
        help="Run one step (copy: SQLite to PostgreSQL, whatever --backend says).",
    )
    args = parser.parse_args()
    n = args.records
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"# bulk lifecycle, {n} records, python {sys.version.split()[0]}", flush=True)
    cleanup: list[str] = []
    try:
        if args.only in ("export", "copy"):
            dump_steps(args, n, work, backends, cleanup)
            return
        sqlite_users = None
        for backend in backends:
            kinds = {"migrate": ["users"], "gc": ["sessions"], None: ["users", "sessions"]}
            for what in kinds[args.only]:
                if backend == "sqlite":
                    path = work / f"{what}-{uuid.uuid4().hex[:6]}.db"
                    url = f"sqlite:///{path}"
                else:
                    url, schema = pg_url(args.url)
                    cleanup.append(schema)
                t = time.perf_counter()
                asyncio.run(generate(url, what, n))
                gen_s = time.perf_counter() - t
                prefix = "user/" if what == "users" else "_sessions/"
                floor = run_step("floor", url, prefix)
                op = run_step("migrate" if what == "users" else "gc", url)
                ratio = op["seconds"] / max(floor["seconds"], 0.001)
                label = "migrate-state" if what == "users" else "gc"
                print(
                    f"{backend:8} {label:13} {json.dumps(op)}  floor scan {floor['seconds']} s "
                    f"({floor['rows']} rows)  ratio {ratio:.1f}x  (generated in {gen_s:.0f} s)",
                    flush=True,
                )
                if what == "users" and backend == "sqlite":
                    sqlite_users = url
                elif backend == "sqlite":
                    Path(url[len("sqlite:///") :]).unlink(missing_ok=True)
        if sqlite_users is not None and "postgres" in backends and args.only is None:
            target, schema = pg_url(args.url)
            cleanup.append(schema)
            floor = run_step("floor", sqlite_users, "")
            op = run_step("copy", sqlite_users, target)
            ratio = op["copy_s"] / max(floor["seconds"], 0.001)
            print(
                f"sqlite→pg copy          {json.dumps(op)}  floor scan {floor['seconds']} s  "
                f"ratio {ratio:.1f}x",
                flush=True,
            )
    finally:
        for schema in cleanup:
            asyncio.run(drop_schema(args.url, schema))


if __name__ == "__main__":
    main()
