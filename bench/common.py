"""Shared pieces of the benchmark suite: the benchmark flow, backends, timing and statistics.

Every flowstate figure goes through the public API: a ``FlowServer`` on the backend's store
URL and ``server.run`` of the actions below. A benchmark that needs many operations in one
run uses the ``ops`` action, which loops one state operation on ``ctx.user`` for a fixed time
and returns each call's latency, so per-operation figures are taken inside a real run.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, Field

from flowstate import (
    ConcurrentModificationError,
    Context,
    FlowServer,
    define_flow,
    define_resource_collection,
    handler,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
OPERATIONS = ("inc", "patch", "push", "update", "set_record")


# ----------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; ``quick()`` fits the whole suite in CI's budget."""

    quick: bool
    rounds: int  # paired rounds per cell (medians over them)
    seconds: float  # per cell and round
    writers: tuple[int, ...]
    contention_seconds: float
    contention_rounds: int
    growth: tuple[int, ...]  # stored sessions / collection instances
    growth_calls: int
    push_lengths: tuple[int, ...]
    push_calls: int
    http_rounds: int
    http_requests: int
    http_sse: int
    peer_seconds: float
    peer_rounds: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            quick=False,
            rounds=4,
            seconds=0.4,
            writers=(1, 8, 32),
            contention_seconds=0.5,
            contention_rounds=2,
            growth=(1_000, 10_000, 100_000, 1_000_000),
            growth_calls=200,
            push_lengths=(10, 100, 1_000, 10_000, 100_000),
            push_calls=100,
            http_rounds=3,
            http_requests=800,
            http_sse=200,
            peer_seconds=1.0,
            peer_rounds=2,
        )

    @classmethod
    def quick_sizes(cls) -> Sizes:
        return cls(
            quick=True,
            rounds=2,
            seconds=0.15,
            writers=(1, 8),
            contention_seconds=0.25,
            contention_rounds=1,
            growth=(1_000, 10_000),
            growth_calls=40,
            push_lengths=(10, 1_000, 10_000),
            push_calls=30,
            http_rounds=2,
            http_requests=300,
            http_sse=0,
            peer_seconds=0.3,
            peer_rounds=1,
        )

    @classmethod
    def tiny(cls) -> Sizes:
        """For the harness test: every code path, minimal work."""
        return cls(
            quick=True,
            rounds=1,
            seconds=0.03,
            writers=(1, 4),
            contention_seconds=0.25,  # concurrent runs must start within the cell
            contention_rounds=1,
            growth=(50, 200),
            growth_calls=5,
            push_lengths=(10, 100),
            push_calls=5,
            http_rounds=1,
            http_requests=20,
            http_sse=0,
            peer_seconds=0.05,
            peer_rounds=1,
        )


# ----------------------------------------------------------------------------- statistics


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the flow


class Counter(BaseModel):
    count: int = 0
    mode: str = ""
    items: list[int] = Field(default_factory=list)
    tags: dict[str, int] = Field(default_factory=dict)


class FileMeta(BaseModel):
    size: int = 0


FILES = define_resource_collection("files/*", state=FileMeta)


async def _one_op(ctx: Context, op: str, i: int, attempts: list[int]) -> None:
    user = ctx.user
    if op == "inc":
        await user.inc_state(count=1)
    elif op == "patch":
        await user.patch_state(mode=f"m{i}")
    elif op == "push":
        await user.push_state("items", i)
    elif op == "set_record":
        await user.set_state_record("tags", f"k{i % 64}", i)
    elif op == "update":

        def bump(state: Counter) -> dict[str, int]:
            attempts[0] += 1
            return {"count": state.count + 1}

        await user.update_state(bump)
    else:
        raise ValueError(f"unknown operation {op!r}")


@handler(name="ops", user_state=Counter)
async def ops_action(input: Any, ctx: Context) -> dict[str, Any]:
    """Loop one operation on the user's record for ``seconds`` (or ``max`` calls).

    ``until`` (a ``time.perf_counter()`` value of this process) ends concurrent runs at one
    shared deadline: a run whose operations never suspend (memory) would otherwise hold the
    event loop for its whole time slice and serialize the others.
    """
    op, limit = input["op"], int(input.get("max", 1 << 30))
    latencies: list[float] = []
    attempts, gave_up = [0], 0
    start = time.perf_counter()
    stop = float(input["until"]) if "until" in input else start + float(input["seconds"])
    i = 0
    while i < limit and time.perf_counter() < stop:
        t0 = time.perf_counter()
        try:
            await _one_op(ctx, op, i, attempts)
        except ConcurrentModificationError:
            gave_up += 1
        else:
            latencies.append(time.perf_counter() - t0)
        i += 1
    return {
        "lat": latencies,
        "elapsed": time.perf_counter() - start,
        "attempts": attempts[0],
        "gave_up": gave_up,
    }


@handler(name="bump", user_state=Counter)
async def bump_action(input: Any, ctx: Context) -> None:
    """The unit a user pays for: one run doing one ``inc_state``."""
    await ctx.user.inc_state(count=1)


@handler(name="read", user_state=Counter)
async def read_action(input: Any, ctx: Context) -> dict[str, Any]:
    return {"count": ctx.user.state.count, "items": len(ctx.user.state.items)}


@handler(name="set_items", user_state=Counter)
async def set_items_action(input: Any, ctx: Context) -> None:
    await ctx.user.patch_state(items=list(range(int(input["n"]))))


@handler(name="add_file", session_resources={"files": FILES})
async def add_file_action(input: Any, ctx: Context) -> None:
    await ctx.session.resources.files.create(input["key"], {"size": 1})


@handler(name="list_files", session_resources={"files": FILES})
async def list_files_action(input: Any, ctx: Context) -> dict[str, Any]:
    """Time ``list(limit=50)`` from the start and from the middle of the collection."""
    files = ctx.session.resources.files
    first: list[float] = []
    middle: list[float] = []
    for _ in range(int(input["calls"])):
        t0 = time.perf_counter()
        page = await files.list(limit=50)
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await files.list(limit=50, after=input["after"])
        middle.append(time.perf_counter() - t0)
    return {"first": first, "middle": middle, "page": len(page)}


FLOW = define_flow(
    "bench",
    {
        "ops": ops_action,
        "bump": bump_action,
        "read": read_action,
        "set_items": set_items_action,
        "add_file": add_file_action,
        "list_files": list_files_action,
    },
)


# ----------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """One store under test: its flowstate URL plus what its raw floor needs."""

    name: str  # memory | sqlite | postgres
    url: str
    tmp: Path
    sqlite_path: str | None = None
    postgres_dsn: str | None = None  # plain asyncpg DSN, no flowstate options
    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def server(self) -> FlowServer:
        return FlowServer([FLOW], store=self.url)


def postgres_base_url() -> str:
    return os.environ.get("FLOWSTATE_BENCH_POSTGRES_URL") or os.environ.get(
        "FLOWSTATE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL
    )


def plain_dsn(url: str) -> str:
    """The URL without flowstate's own query options (what asyncpg/psycopg accept)."""
    parts = urlsplit(url)
    ours = {"schema", "migrate", "min_size", "max_size", "cache_size"}
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ours]
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))


async def postgres_problem(url: str) -> str | None:
    """None when PostgreSQL answers at ``url``, else why not (the section is skipped)."""
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:
        return f"asyncpg not installed ({exc})"
    try:
        conn = await asyncio.wait_for(asyncpg.connect(plain_dsn(url)), 5)
    except Exception as exc:
        return f"PostgreSQL unreachable at {plain_dsn(url)}: {type(exc).__name__}: {exc}"
    await conn.close()
    return None


POOL_SIZE = 10  # flowstate's default max_size; the raw floor gets the same
CREATED_SCHEMAS: list[str] = []  # every schema this process made (each dropped after use)


@asynccontextmanager
async def backend(name: str, tmp: Path, tag: str) -> AsyncIterator[Backend]:
    """A fresh store of kind ``name``; PostgreSQL gets its own schema, dropped after."""
    if name == "memory":
        yield Backend(name, "memory://", tmp)
    elif name == "sqlite":
        path = str(tmp / f"{tag}-{uuid.uuid4().hex[:6]}.db")
        yield Backend(name, f"sqlite:///{path}", tmp, sqlite_path=path)
    elif name == "postgres":
        import asyncpg

        dsn = plain_dsn(postgres_base_url())
        schema = f"fs_bench_{tag}_{uuid.uuid4().hex[:8]}"
        sep = "&" if "?" in dsn else "?"
        url = f"{dsn}{sep}schema={schema}&max_size={POOL_SIZE}"
        CREATED_SCHEMAS.append(schema)
        try:
            yield Backend(name, url, tmp, postgres_dsn=dsn, schema=schema)
        finally:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
    else:
        raise ValueError(f"unknown backend {name!r}")


# ----------------------------------------------------------------------------- machine


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=10, cwd=ROOT, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    """What a reader needs to weigh the figures: hardware, load, versions, commit."""
    import sqlite3
    from importlib.metadata import PackageNotFoundError, version

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for pkg in ("flowstate", "pydantic", "asyncpg", "fastapi", "uvicorn"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_gib, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "versions": versions,
        "git_commit": commit,
        "git_dirty": dirty,
        "loadavg_start": list(os.getloadavg()),
        "tmpdir": tempfile.gettempdir(),
    }
