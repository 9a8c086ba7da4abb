"""Fault injection for tests: a TCP proxy in front of PostgreSQL, and killing our own backends.

Never restarts or reconfigures the shared PostgreSQL server: a full outage is the proxy
stopping (its listener and every connection through it close), and terminated connections
are only those whose ``application_name`` this test chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from tests.conftest import _base_postgres_url

FAULT_BUDGET = max(1.0, float(os.environ.get("FLOWSTATE_FAULT_BUDGET", "1")))
"""Multiplies the rounds of the fault suite (default 1: a quick run; e.g. 20 for releases)."""


def with_options(url: str, **options: str) -> str:
    """``url`` with flowstate query options added (or replaced)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in options]
    query += list(options.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def via(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port`` (the proxy) instead of the real server."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, ""))


def unique_app_name() -> str:
    return f"fs_fault_{uuid.uuid4().hex[:12]}"


async def terminate_backends(application_name: str) -> int:
    """Terminate the PostgreSQL backends of one ``application_name`` (ours only); how many."""
    conn = await asyncpg.connect(_base_postgres_url(), timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
        )
        return sum(1 for r in rows if r[0])
    finally:
        await conn.close()


class TcpProxy:
    """A byte-for-byte proxy on 127.0.0.1 to the real server; ``stop()`` is a full outage."""

    def __init__(self) -> None:
        real = urlsplit(_base_postgres_url())
        self.upstream = (real.hostname or "127.0.0.1", real.port or 5432)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (on the same port as before, after a stop)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.transport.abort()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


COUNTS: dict[str, int] = {"kills": 0, "faults injected": 0, "writes checked": 0, "lost": 0}
"""Totals of the fault-injection suite, printed at the end of the test run."""


def summary() -> str | None:
    if not any(COUNTS.values()):
        return None
    return (
        "fault injection: "
        + ", ".join(f"{k} {v}" for k, v in COUNTS.items())
        + (f" (FLOWSTATE_FAULT_BUDGET={FAULT_BUDGET:g})")
    )
