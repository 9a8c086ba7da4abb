"""The lifecycle commands end to end: db copy/export/import/migrate-state, gc, sessions list,
serve --gc-every; SQLite → PostgreSQL → SQLite round trip."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from flowstate import FlowServer, ScopeConfig, define_flow, define_resource, handler, open_store
from flowstate.cli import main
from flowstate.cli._serve import load_server, parse_duration
from flowstate.http import create_app

from .conftest import postgres_url

APP = """
from datetime import timedelta
from pydantic import BaseModel
from flowstate import FlowServer, ScopeConfig, define_flow, define_resource, handler


class Old(BaseModel):
    name: str = ""


class New(BaseModel):
    title: str = ""


def rename(fields):
    out = dict(fields)
    out["title"] = out.pop("name", "")
    if out["title"] == "bad":
        raise ValueError("bad name")
    return out


VERSION = {version}


@handler(name="write")
async def write(input, ctx):
    if input is not None:
        await ctx.session.patch_state(input)
        await ctx.session.resources.doc.write_content("text é", **input)
    return ctx.session.version


if VERSION == 1:
    session = ScopeConfig(state=Old, resources={{"doc": define_resource(Old)}}, ttl={ttl})
else:
    session = ScopeConfig(
        state=New,
        schema_version=2,
        migrations={{2: rename}},
        resources={{"doc": define_resource(New, schema_version=2, migrations={{2: rename}})}},
        ttl={ttl},
    )

server = FlowServer([define_flow("notes", actions={{"write": write}}, session=session)],
                    store="memory://")
"""


def app_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int, ttl: str = "None"
) -> str:
    name = f"lifecycle_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP.format(version=version, ttl=ttl)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:server"


def invoke(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


async def _populate(server: FlowServer, names: list[str], field: str) -> None:
    try:
        for i, name in enumerate(names):
            await server.run("notes", "write", {field: name}, user_id="alice", session_id=f"s{i}")
        await server.set_session_metadata(
            "s0", {"title": "First", "tags": ["a", "b"]}, user_id="alice"
        )
    finally:
        await server.aclose()


def populate(url: str, target: str, names: list[str], field: str = "name") -> None:
    asyncio.run(_populate(load_server(target, url), names, field))


def rows(path: Path) -> tuple[list[Any], list[Any]]:
    with sqlite3.connect(path) as conn:
        records = conn.execute("SELECT * FROM fs_records ORDER BY key").fetchall()
        fields = conn.execute("SELECT * FROM fs_fields ORDER BY key, name").fetchall()
    return records, fields


@pytest.mark.postgres
def test_sqlite_to_postgres_and_back_is_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = app_module(tmp_path, monkeypatch, version=2)
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    url_a, url_b = f"sqlite:///{a}", f"sqlite:///{b}"
    populate(url_a, target, ["x", "ÿ\u2028🙂", "z" * 3000], "title")
    pg = postgres_url()
    copied = invoke("db", "copy", url_a, pg)
    assert copied.exit_code == 0, copied.output
    assert "verified: same records, same checksum" in copied.stdout
    back = invoke("db", "copy", pg, url_b)
    assert back.exit_code == 0, back.output
    assert rows(a) == rows(b)  # every column of every row, byte for byte
    dump_a = invoke("db", "export", url_a)
    dump_b = invoke("db", "export", url_b)
    assert dump_a.exit_code == 0 and dump_a.stdout == dump_b.stdout
    assert '"$schema_version":2' in dump_a.stdout
    # the copy serves the same app: state and versions continue
    server = load_server(target, url_b)

    async def next_write() -> int:
        try:
            out = await server.run(
                "notes", "write", {"title": "t"}, user_id="alice", session_id="s1"
            )
            return int(out.output)
        finally:
            await server.aclose()

    assert asyncio.run(next_write()) == 2


def test_export_import_and_copy_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = app_module(tmp_path, monkeypatch, version=1)
    a = tmp_path / "a.db"
    url_a = f"sqlite:///{a}"
    populate(url_a, target, [f"n{i}" for i in range(12)])
    dump = invoke("db", "export", url_a, "--batch", "5")
    assert dump.exit_code == 0
    lines = dump.stdout.splitlines()
    assert lines[0] == '{"flowstate": "dump", "format": 1}' and lines[-1].startswith('{"end": true')
    assert "exported" in dump.stderr
    url_c = f"sqlite:///{tmp_path / 'c.db'}"
    loaded = invoke("db", "import", url_c, input=dump.stdout)
    assert loaded.exit_code == 0, loaded.output
    assert rows(a) == rows(tmp_path / "c.db")
    truncated = invoke(
        "db", "import", f"sqlite:///{tmp_path / 'd.db'}", input="\n".join(lines[:-3])
    )
    assert truncated.exit_code == 1 and "truncated" in truncated.output
    refused = invoke("db", "copy", url_a, url_c)
    assert refused.exit_code == 1 and "already holds" in refused.output

    # resume: a partial copy (as left by an interrupted run) continues after its last key
    async def partial() -> str:
        source, dest = open_store(url_a), open_store(f"sqlite:///{tmp_path / 'e.db'}")
        try:
            first = await source.export_records(limit=7)
            await dest.import_records(first)
            return first[-1].key
        finally:
            await source.aclose()
            await dest.aclose()

    last = asyncio.run(partial())
    resumed = invoke("db", "copy", url_a, f"sqlite:///{tmp_path / 'e.db'}", "--after", last)
    assert resumed.exit_code == 0, resumed.output
    assert rows(a) == rows(tmp_path / "e.db")


def test_migrate_state_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    old = app_module(tmp_path, monkeypatch, version=1)
    populate(url, old, ["a", "b", "bad"])
    new = app_module(tmp_path, monkeypatch, version=2)
    dry = invoke("db", "migrate-state", new, "--store", url, "--dry-run")
    assert dry.exit_code == 1
    assert "would upgrade 4, already current 0, failed 2" in dry.stdout
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT count(*) FROM fs_fields WHERE name = 'title'").fetchone() == (
            0,
        )
    run = invoke("db", "migrate-state", new, "--store", url)
    assert run.exit_code == 1
    assert "upgraded 4, already current 0, failed 2" in run.stdout
    assert "failed session/s2/state: " in run.stdout and "bad name" in run.stdout
    assert "failed session/s2/r/doc: " in run.stdout
    again = invoke("db", "migrate-state", new, "--store", url)
    assert "upgraded 0, already current 4, failed 2" in again.stdout


def test_gc_and_sessions_list_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    target = app_module(tmp_path, monkeypatch, version=1, ttl="timedelta(seconds=1)")
    populate(url, target, ["a", "b", "c"])
    listed = invoke("sessions", "list", "--store", url)
    assert listed.exit_code == 0
    table = listed.stdout.splitlines()
    assert table[0].split() == [
        "SESSION",
        "USER",
        "KIND",
        "PROJECT",
        "CREATED",
        "LAST",
        "ACTIVE",
        "TITLE",
        "TAGS",
    ]
    assert [line.split()[0] for line in table[1:]] == ["s0", "s1", "s2"]
    assert "First" in table[1] and "a,b" in table[1]
    mine = invoke("sessions", "list", "--store", url, "--user", "alice", "--kind", "notes")
    assert len(mine.stdout.splitlines()) == 4
    nobody = invoke("sessions", "list", "--store", url, "--user", "bob")
    assert nobody.stdout.splitlines()[1:] == []
    kept = invoke("gc", target, "--store", url)
    assert kept.exit_code == 0 and "removed 0 expired sessions" in kept.stdout
    time.sleep(1.2)
    removed = invoke("gc", target, "--store", url)
    assert removed.exit_code == 0, removed.output
    assert "removed 3 expired sessions and 0 expired collection instances" in removed.stdout
    with sqlite3.connect(tmp_path / "g.db") as conn:
        left = [k for (k,) in conn.execute("SELECT key FROM fs_records")]
    assert left == []


def test_parse_duration() -> None:
    assert parse_duration("5m", "x") == 300
    assert parse_duration("500ms", "x") == 0.5
    assert parse_duration("2", "x") == 2
    assert parse_duration("1.5h", "x") == 5400
    for bad in ("0s", "-1m", "soon", "inf", "nan", ""):
        with pytest.raises(click.BadParameter):
            parse_duration(bad, "--gc-every")
    refused = CliRunner().invoke(main, ["serve", "nowhere:server", "--gc-every", "soon"])
    assert refused.exit_code == 2 and "'soon' is not a positive duration" in refused.output


async def test_background_gc_runs_without_blocking_requests() -> None:
    @handler(name="bump")
    async def bump(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(n=1)
        return ctx.session.state["n"]

    flow = define_flow(
        "chat",
        actions={"bump": bump},
        session=ScopeConfig(ttl=timedelta(milliseconds=300), resources={"r": define_resource()}),
    )
    server = FlowServer([flow], store="memory://", auth={"t": "alice"})
    for i in range(20):
        await server.run("chat", "bump", None, user_id="alice", session_id=f"old{i}")
    app = create_app(server, gc_every=0.1)
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.5)  # expired by now, and gc has run
        assert await server.store.count("_sessions/") == 0
        assert await server.store.count("session/") == 0
        # requests keep being served while gc runs
        for _ in range(5):
            out = await server.run("chat", "bump", None, user_id="alice", session_id="live")
            await asyncio.sleep(0.05)
        assert out.output == 5
    await server.aclose()
    with pytest.raises(ValueError, match="gc_every"):
        create_app(server, gc_every=0)


def test_an_interrupted_copy_says_where_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flowstate.cli._lifecycle as cli_lifecycle
    from flowstate.transfer import copy_records

    target = app_module(tmp_path, monkeypatch, version=1)
    url_a, url_b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    populate(url_a, target, [f"n{i}" for i in range(6)])

    async def interrupted(source: Any, dest: Any, **kw: Any) -> int:
        progress = kw["progress"]
        first = await source.export_records(limit=5)
        await dest.import_records(first)
        progress.advance(len(first), first[-1].key)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_lifecycle, "copy_records", interrupted)
    stopped = invoke("db", "copy", url_a, url_b)
    assert stopped.exit_code == 130
    assert "interrupted: the copy stopped after 5 records" in stopped.stderr
    last = stopped.stderr.rsplit("--after ", 1)[1].strip().strip("'")
    monkeypatch.setattr(cli_lifecycle, "copy_records", copy_records)
    resumed = invoke("db", "copy", url_a, url_b, "--after", last)
    assert resumed.exit_code == 0, resumed.output
    assert "verified: same records, same checksum" in resumed.stdout
    assert rows(tmp_path / "a.db") == rows(tmp_path / "b.db")
