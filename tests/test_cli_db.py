"""``flowstate db migrate``: idempotent, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowstate.cli import main
from flowstate.stores import open_store


def test_migrate_sqlite_creates_the_tables_and_can_repeat(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'state.db'}"
    for _ in range(2):
        result = CliRunner().invoke(main, ["db", "migrate", "--store", url])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"{url}: flowstate schema version 3"
    assert (tmp_path / "db" / "state.db").exists()


def test_migrate_refuses_a_store_without_tables() -> None:
    result = CliRunner().invoke(main, ["db", "migrate", "--store", "memory://"])
    assert result.exit_code == 1
    assert "'memory://' has no tables to migrate" in result.output


@pytest.mark.postgres
def test_migrate_postgres_is_idempotent_and_the_store_then_works(
    postgres_store_url: str,
) -> None:
    for _ in range(2):
        result = CliRunner().invoke(main, ["db", "migrate", "--store", postgres_store_url])
        assert result.exit_code == 0, result.output
        assert result.output.strip().endswith("flowstate schema version 3")

    async def use() -> int:
        store = open_store(postgres_store_url + "&migrate=false")
        try:
            return await store.count("")
        finally:
            await store.aclose()

    assert asyncio.run(use()) == 0


def test_migrate_reports_an_unreachable_server_in_one_line() -> None:
    url = "postgresql://nobody@127.0.0.1:1/none"
    result = CliRunner().invoke(main, ["db", "migrate", "--store", url])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: could not migrate {url}: ")
