"""Data lifecycle commands: ``db copy|export|import|migrate-state``, ``gc``, ``sessions list``.

Bulk commands walk the store in key order in batches (bounded memory), draw a progress bar on
stderr, and on Ctrl-C say the last key they committed so a re-run can continue with
``--after KEY`` (re-running from the start is also safe: everything they do is idempotent).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import click

from ..stores import Store, default_store_url, open_store
from ..transfer import DumpError, Progress, copy_records, digest, export_dump, import_dump

__all__ = ["register"]

T = TypeVar("T")


def _err(message: str) -> None:
    click.echo(message, err=True)


@contextmanager
def _bar(label: str, total: int | None) -> Iterator[Progress]:
    """A progress bar on stderr (plain counts when the total is unknown)."""
    if total is None:
        progress = Progress()
        shown = [0]

        def report(n: int) -> None:
            if progress.done - shown[0] >= 10_000:
                shown[0] = progress.done
                _err(f"{label}: {progress.done} records")

        progress.on_batch = report
        yield progress
        return
    with click.progressbar(
        length=max(total, 1), label=label, file=sys.stderr, show_pos=True
    ) as bar:
        progress = Progress(on_batch=bar.update)
        yield progress


def _run(progress: Progress | None, work: Callable[[], Awaitable[T]], what: str) -> T:
    """Run a bulk job; on Ctrl-C say where it stopped and how to continue, exit 130."""
    try:
        return asyncio.run(_call(work))
    except KeyboardInterrupt:
        where = progress.last_key if progress is not None else None
        hint = f" --after {_shell(where)}" if where is not None else ""
        _err(
            f"\ninterrupted: {what} stopped after {progress.done if progress else 0} records"
            + (f"; continue with the same command plus{hint}" if hint else "; run it again")
        )
        sys.exit(130)


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def _shell(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


async def _close(*stores: Store) -> None:
    for store in stores:
        await store.aclose()


_after = click.option(
    "--after",
    default=None,
    metavar="KEY",
    help="Continue after this key (from an interrupted run).",
)
_batch = click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 10_000))
_store = click.option(
    "--store", "store_url", default=None, help="Store URL (default: $FLOWSTATE_STORE or SQLite)."
)


# ----------------------------------------------------------------------------------- db


@click.command("copy")
@click.argument("source_url")
@click.argument("target_url")
@_after
@_batch
def db_copy(source_url: str, target_url: str, after: str | None, batch: int) -> None:
    """Copy every record from SOURCE_URL to TARGET_URL (e.g. SQLite to PostgreSQL).

    Versions, fields, content, timestamps and schema versions travel as they are. The
    target must be empty (or pass --after KEY to continue an interrupted copy). At the end
    both stores are counted and checksummed; a difference exits with status 1.
    """
    source, target = open_store(source_url), open_store(target_url)

    async def prepare() -> tuple[int, int]:
        return await source.count(""), await target.count("")

    total, existing = asyncio.run(prepare())
    if existing and after is None:
        asyncio.run(_close(source, target))
        raise click.ClickException(
            f"{target_url} already holds {existing} records: copy into an empty store, or "
            "pass --after KEY to continue an interrupted copy"
        )
    progress: Progress | None = None
    try:
        with _bar("copying", total) as progress:
            p = progress
            copied = _run(
                p,
                lambda: copy_records(source, target, after=after, batch=batch, progress=p),
                "the copy",
            )
        with _bar("verifying", total * 2) as check:
            c = check

            async def verify() -> tuple[Any, Any]:
                return await digest(source, progress=c), await digest(target, progress=c)

            src, dst = _run(None, verify, "the verification")
    finally:
        asyncio.run(_close(source, target))
    click.echo(f"copied {copied} records; source {src.count} records {src.checksum}")
    click.echo(f"target {dst.count} records {dst.checksum}")
    if src != dst:
        raise click.ClickException(
            "the target does not match the source (another writer, or an interrupted copy "
            "resumed at the wrong key?): copy again into an empty store"
        )
    click.echo("verified: same records, same checksum")


@click.command("export")
@click.argument("url", required=False)
@_batch
def db_export(url: str | None, batch: int) -> None:
    """Write every record of the store URL to stdout as JSON lines (a backup).

    Restore with ``flowstate db import URL < dump.jsonl``. The last line carries the record
    count and a checksum that import verifies.
    """
    store = open_store(url or default_store_url())
    try:
        total = asyncio.run(store.count(""))
        with _bar("exporting", total) as progress:
            p = progress
            out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
            try:
                result = _run(p, lambda: export_dump(store, out, batch=batch, progress=p), "export")
            finally:
                out.flush()
                out.detach()  # leave sys.stdout open
    finally:
        asyncio.run(store.aclose())
    _err(f"exported {result.count} records {result.checksum}")


@click.command("import")
@click.argument("url", required=False)
@_batch
def db_import(url: str | None, batch: int) -> None:
    """Read a dump (from ``flowstate db export``) on stdin into the store URL.

    Records are written as they were (replacing records with the same keys); the dump's
    count and checksum are verified at the end (exit status 1 on a mismatch or truncation).
    """
    store = open_store(url or default_store_url())
    try:
        lines = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
        with _bar("importing", None) as progress:
            p = progress
            try:
                result = _run(
                    p, lambda: import_dump(store, lines, batch=batch, progress=p), "import"
                )
            except DumpError as exc:
                raise click.ClickException(str(exc)) from None
    finally:
        asyncio.run(store.aclose())
    click.echo(f"imported {result.count} records {result.checksum}")


@click.command("migrate-state")
@click.argument("target")
@_store
@click.option("--dry-run", is_flag=True, help="Run migrations in memory; write nothing.")
@_after
@_batch
def db_migrate_state(
    target: str, store_url: str | None, dry_run: bool, after: str | None, batch: int
) -> None:
    """Upgrade every stored record of the app TARGET (module:server) to its schema versions.

    Prints how many were upgraded, already current, and failed (with their keys and why);
    exits with status 1 when any failed. Safe to interrupt and run again.
    """
    from ..lifecycle import STATE_PREFIXES, migrate_state
    from ._serve import load_server

    server = load_server(target, store_url)

    async def total() -> int:
        n = 0
        for prefix in STATE_PREFIXES:
            n += await server.store.count(prefix)
        return n

    try:
        with _bar(
            "migrating" + (" (dry run)" if dry_run else ""), asyncio.run(total())
        ) as progress:
            p = progress
            report = _run(
                p,
                lambda: migrate_state(
                    server, dry_run=dry_run, after=after, batch=batch, progress=p
                ),
                "migrate-state",
            )
    finally:
        asyncio.run(server.aclose())
    verb = "would upgrade" if dry_run else "upgraded"
    click.echo(
        f"{verb} {report.upgraded}, already current {report.current}, failed "
        f"{report.failed_count}, not described by the app {report.other}"
    )
    for key, why in report.failed[:100]:
        click.echo(f"failed {key}: {why}")
    if report.failed_count > 100:
        click.echo(f"… and {report.failed_count - 100} more failed")
    if report.failed_count:
        sys.exit(1)


# ----------------------------------------------------------------------------------- gc


@click.command("gc")
@click.argument("target")
@_store
def gc(target: str, store_url: str | None) -> None:
    """Remove expired data of the app TARGET (module:server): idle sessions, old instances.

    Sessions idle longer than their flow's session ttl go with all their records; instances
    of collections with max_age when untouched that long. Safe to interrupt and run again.
    """
    from ..lifecycle import collect_garbage
    from ._serve import load_server

    server = load_server(target, store_url)
    try:
        total = asyncio.run(server.store.count("_sessions/"))
        with _bar("collecting", total) as progress:
            p = progress
            report = _run(p, lambda: collect_garbage(server, progress=p), "gc")
    finally:
        asyncio.run(server.aclose())
    click.echo(
        f"removed {report.sessions} expired sessions and {report.instances} expired "
        f"collection instances ({report.records} records)"
    )


# ----------------------------------------------------------------------------------- sessions


@click.group()
def sessions() -> None:
    """Find sessions in a store."""


def _when(value: Any) -> str:
    if isinstance(value, int | float) and value > 0:
        seconds = value / 1e9 if value > 1e12 else value
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return "-"


@sessions.command("list")
@_store
@click.option("--user", default=None, help="Only this user's sessions.")
@click.option("--kind", default=None, help="Only sessions of this flow kind.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1))
def sessions_list(store_url: str | None, user: str | None, kind: str | None, limit: int) -> None:
    """Print sessions as a table: id, user, kind, project, created, last active, title, tags."""
    store = open_store(store_url or default_store_url())

    async def collect() -> list[list[str]]:
        rows: list[list[str]] = []
        try:
            if user is not None:
                index = f"_user_sessions/{quote(user, safe='')}/"
                keys = await store.scan(index, limit=None)
                found = []
                for key in keys:
                    record = await store.read("_sessions/" + key[len(index) :])
                    if record is not None:
                        found.append(record)
                        if len(found) >= limit and kind is None:
                            break
                batches = [found]
            else:
                from ..transfer import iter_records

                batches = [b async for b in iter_records(store, "_sessions/")]
            for records in batches:
                for record in records:
                    f = record.fields
                    if user is not None and f.get("userId") != user:
                        continue
                    if kind is not None and f.get("flowKind") != kind:
                        continue
                    raw_meta = f.get("metadata")
                    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
                    tags = meta.get("tags")
                    rows.append(
                        [
                            unquote(record.key[len("_sessions/") :]),
                            str(f.get("userId", "")),
                            str(f.get("flowKind", "")),
                            str(f.get("projectId") or "-"),
                            _when(f.get("createdAt")),
                            _when(record.accessed_at),
                            str(meta.get("title", "")),
                            ",".join(map(str, tags)) if isinstance(tags, list) else "",
                        ]
                    )
                    if len(rows) >= limit:
                        return rows
            return rows
        finally:
            await store.aclose()

    rows = asyncio.run(collect())
    header = ["SESSION", "USER", "KIND", "PROJECT", "CREATED", "LAST ACTIVE", "TITLE", "TAGS"]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    for row in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    _err(f"{len(rows)} session(s)")


def register(main: click.Group, db: click.Group) -> None:
    """Add the lifecycle commands to the ``flowstate`` group and its ``db`` group."""
    for command in (db_copy, db_export, db_import, db_migrate_state):
        db.add_command(command)
    main.add_command(gc)
    main.add_command(sessions)
