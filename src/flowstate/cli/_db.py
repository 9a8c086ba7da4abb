"""``flowstate db``: operator commands for the storage itself."""

from __future__ import annotations

import asyncio

import click

from ..stores import default_store_url, open_store

__all__ = ["db"]


async def _migrate(url: str) -> int:
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        from ..stores.postgres import migrate

        return await migrate(url)
    if scheme == "sqlite":
        from ..stores.sqlite import SCHEMA_VERSION

        store = open_store(url)  # opening creates or upgrades the tables
        await store.aclose()
        return SCHEMA_VERSION
    raise click.ClickException(
        f"{url!r} has no tables to migrate (use sqlite:/// or postgresql://)"
    )


@click.group()
def db() -> None:
    """Storage administration."""


@db.command()
@click.option(
    "--store", "url", default=None, help="Store URL (default: $FLOWSTATE_STORE or SQLite)."
)
def migrate(url: str | None) -> None:
    """Create or upgrade flowstate's tables; safe to repeat and to run from several hosts."""
    url = url or default_store_url()
    try:
        version = asyncio.run(_migrate(url))
    except click.ClickException:
        raise
    except Exception as exc:  # a bad URL or an unreachable server: one line, not a traceback
        raise click.ClickException(f"could not migrate {url}: {exc}") from None
    click.echo(f"{url}: flowstate schema version {version}")
