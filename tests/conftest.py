"""Shared fixtures: every backend-parametrized test runs on each store URL in STORE_PARAMS.

PostgreSQL: the server comes from ``FLOWSTATE_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each test gets its own schema, dropped after
the test. An unreachable server skips the PostgreSQL tests, or fails them when
``FLOWSTATE_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from flowstate.stores import Store, open_store

T = TypeVar("T")

STORE_PARAMS = ["memory", "sqlite", "postgres"]

POSTGRES_URL = os.environ.get(
    "FLOWSTATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("FLOWSTATE_REQUIRE_POSTGRES", "") == "1"

_postgres_problem: list[str | None] = []  # filled once per session
_schemas: set[str] = set()  # schemas created by make_store_url, dropped after use


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop in a helper thread."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _base_postgres_url() -> str:
    """The test URL without flowstate's own query options (what asyncpg accepts)."""
    parts = urlsplit(POSTGRES_URL)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None. Checked once per session (2 s max)."""
    if not _postgres_problem:

        async def probe() -> None:
            import asyncpg  # type: ignore[import-untyped]

            conn = await asyncpg.connect(_base_postgres_url(), timeout=2)
            await conn.close()

        try:
            _run_sync(asyncio.wait_for(probe(), 3))
        except BaseException as exc:  # any failure means "not usable here"
            _postgres_problem.append(
                f"PostgreSQL not reachable at {POSTGRES_URL} ({type(exc).__name__}: {exc}); "
                "set FLOWSTATE_TEST_POSTGRES_URL"
            )
        else:
            _postgres_problem.append(None)
    return _postgres_problem[0]


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unreachable (fail if it is required)."""
    problem = postgres_problem()
    if problem is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(problem + " [FLOWSTATE_REQUIRE_POSTGRES=1]", pytrace=False)
        pytest.skip(problem)


def postgres_url(schema: str | None = None) -> str:
    """A PostgreSQL store URL on a fresh (or the given) schema, dropped at the end."""
    require_postgres()
    schema = schema or f"fs_test_{uuid.uuid4().hex[:16]}"
    _schemas.add(schema)
    parts = urlsplit(POSTGRES_URL)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    query.append(("schema", schema))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def drop_schemas() -> None:
    """Drop every schema handed out by :func:`postgres_url` so far."""
    if not _schemas:
        return
    names = sorted(_schemas)
    _schemas.clear()

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(_base_postgres_url(), timeout=5)
        try:
            for name in names:
                quoted = '"' + name.replace('"', '""') + '"'
                await conn.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
        finally:
            await conn.close()

    _run_sync(drop())


def make_store_url(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    if kind == "postgres":
        return postgres_url()
    raise ValueError(kind)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark PostgreSQL-parametrized tests ``postgres`` (``-m 'not postgres'`` skips them)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "postgres" in callspec.params.values():
            item.add_marker(pytest.mark.postgres)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the counts of the fault-injection suite (kills, faults, writes checked, lost)
    and of the fuzz and property suites (requests fuzzed, operations checked)."""
    import sys

    faults = sys.modules.get("tests.faults")
    line = None if faults is None else faults.summary()
    if line:
        terminalreporter.write_line(line)
    for count in SUITE_COUNTS:
        terminalreporter.write_line(count)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _schemas:
        drop_schemas()


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store URL of each backend kind."""
    url = make_store_url(request.param, tmp_path)
    yield url
    if request.param == "postgres":
        drop_schemas()


@pytest.fixture
def postgres_store_url() -> Iterator[str]:
    """A PostgreSQL store URL on a fresh schema (skips when PostgreSQL is unreachable)."""
    url = postgres_url()
    yield url
    drop_schemas()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    st = open_store(store_url)
    try:
        yield st
    finally:
        await st.aclose()


SUITE_COUNTS: list[str] = []
"""Lines the fuzz and property suites add (requests fuzzed, operations checked); printed in
the terminal summary so a CI log shows what ran."""

