"""``flowstate state get|set|inspect``, ``flowstate serve`` and ``flowstate demo``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner

from flowstate.cli import main
from flowstate.cli._serve import load_server
from flowstate.cli.demo import FILES_CAP, create_server

APP = "flowstate.cli.demo:create_server"


@pytest.fixture
async def seeded(tmp_path: Path) -> tuple[str, str]:
    """A SQLite store with one demo session (count 3, a private note, an artifact, files)."""
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    async with create_server(url) as server:
        first = await server.run("demo", "increment", {"amount": 3, "note": "psst"}, user_id="ann")
        sid = first.session_id
        await server.run(
            "demo",
            "save_artifact",
            {"id": "a", "title": "A", "content": "text A"},
            user_id="ann",
            session_id=sid,
        )
        await server.run(
            "demo",
            "write_file",
            {"path": "src/x.py", "content": "print()"},
            user_id="ann",
            session_id=sid,
        )
    return url, sid


def cli(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    return result


def ok_json(*args: str) -> Any:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_state_get_prints_records(seeded: tuple[str, str]) -> None:
    url, sid = seeded
    state = ok_json("state", "get", "--scope", "session", "--id", sid, "--store", url)
    assert state == {
        "key": f"session/{sid}/state",
        "exists": True,
        "version": 2,
        "state": {"messageCount": 3, "private_note": "psst"},  # operators see raw state
    }
    artifact = ok_json(
        "state",
        "get",
        "--scope",
        "session",
        "--id",
        sid,
        "--resource",
        "artifacts",
        "--store",
        url,
    )
    assert artifact["content"] == "text A" and artifact["state"]["order"] == ["a"]
    file = ok_json(
        "state",
        "get",
        "--scope",
        "session",
        "--id",
        sid,
        "--resource",
        "files",
        "--key",
        "files/src/x.py",
        "--store",
        url,
    )
    assert file["content"] == "print()" and file["state"] == {"language": "text", "size": 7}
    missing = cli("state", "get", "--scope", "user", "--id", "nobody", "--store", url)
    assert missing.exit_code == 1
    assert "no record user/nobody/state in sqlite:///" in missing.output


def test_state_inspect_lists_a_scope(seeded: tuple[str, str]) -> None:
    url, sid = seeded
    listing = ok_json("state", "inspect", "--scope", "session", "--id", sid, "--store", url)
    assert listing["root"] == f"session/{sid}/" and listing["count"] == 3
    assert [(r["key"], r["kind"], r["hasContent"]) for r in listing["records"]] == [
        ("c/files/files/src/x.py", "collection", True),
        ("r/artifacts", "resource", True),
        ("state", "state", False),
    ]
    assert listing["records"][2]["fields"] == ["messageCount", "private_note"]
    assert listing["session"]["userId"] == "ann"
    assert listing["session"]["flowKind"] == "demo"


def test_state_set_validated_through_the_app(seeded: tuple[str, str]) -> None:
    url, sid = seeded
    base = ["state", "set", "--scope", "session", "--id", sid, "--store", url, "--app", APP]
    assert ok_json(*base, '{"messageCount": 10}') == {
        "key": f"session/{sid}/state",
        "committed": True,
        "version": 3,
    }
    assert ok_json(*base, '{"messageCount": 10}')["committed"] is False  # no-op
    for values, fragment in (
        ('{"messageCount": "ten"}', 'field "messageCount"'),
        ('{"typo": 1}', "typo"),
        ('{"mode": "sleep"}', 'field "mode"'),
    ):
        refused = cli(*base, values)
        assert refused.exit_code == 1
        assert "StateValidationError" in refused.output and fragment in refused.output
    state = ok_json("state", "get", "--scope", "session", "--id", sid, "--store", url)
    assert state["version"] == 3 and state["state"]["messageCount"] == 10  # nothing written

    user = ["state", "set", "--scope", "user", "--id", "ann", "--store", url, "--app", APP]
    assert ok_json(*user, '{"theme": "dark"}')["committed"] is True
    res = [*base, "--resource", "files", "--key", "files/src/x.py"]
    assert ok_json(*res, '{"language": "python"}')["version"] == 3
    missing = cli(*res[:-1], "files/none.py", '{"language": "go"}')
    assert missing.exit_code == 1
    assert 'ResourceNotFoundError: resource "files/none.py" does not exist' in missing.output


def test_validated_writes_show_in_the_snapshot(seeded: tuple[str, str]) -> None:
    url, sid = seeded
    ok_json(
        "state",
        "set",
        "--scope",
        "user",
        "--id",
        "ann",
        "--store",
        url,
        "--app",
        APP,
        '{"theme": "dark"}',
    )

    async def snapshot() -> dict[str, Any]:
        async with create_server(url) as server:
            return await server.snapshot("demo", sid, user_id="ann")

    assert asyncio.run(snapshot())["clientData"]["user"] == {"theme": "dark"}


def test_state_set_raw_and_argument_errors(seeded: tuple[str, str]) -> None:
    url, _ = seeded
    raw = ["state", "set", "--scope", "project", "--id", "p", "--store", url, "--raw"]
    assert ok_json(*raw, '{"anything": [1, 2]}')["version"] == 1
    assert ok_json("state", "get", "--scope", "project", "--id", "p", "--store", url)["state"] == {
        "anything": [1, 2]
    }
    replaced = ok_json(*raw, "--replace", '{"other": true}')
    assert replaced["version"] == 2
    for args, message in (
        (
            ["state", "set", "--scope", "user", "--id", "u", "--store", url, "{}"],
            "choose --app module:server (validated write) or --raw",
        ),
        ([*raw, "--app", APP, "{}"], "choose --app"),
        ([*raw, "[1]"], "VALUES must be a JSON object"),
        ([*raw, "{nope"], "VALUES is not valid JSON"),
        ([*raw, "--key", "k", "{}"], "--key needs --resource"),
    ):
        result = cli(*args)
        assert result.exit_code != 0 and message in result.output, result.output


def test_load_server_targets(tmp_path: Path) -> None:
    server = load_server(APP, f"sqlite:///{tmp_path / 'x.db'}")
    assert list(server.flows) == ["demo"] and server.store.url.endswith("x.db")
    for target, message in (
        ("flowstate.cli.demo", 'expected "module:attribute"'),
        ("flowstate.nope:x", 'cannot import module "flowstate.nope"'),
        ("flowstate.cli.demo:missing", 'has no attribute "missing"'),
        ("flowstate.cli.demo:FILES_CAP", "is not a FlowServer"),
    ):
        with pytest.raises(click.ClickException, match=message):
            load_server(target)
    assert FILES_CAP == 5


# ----------------------------------------------------------------------------------- serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Iterator[list[str]]:
    """Run ``flowstate ARGS``; yield its first output lines once it serves."""
    proc = subprocess.Popen(
        ["flowstate", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError("the server exited:\n" + "".join(lines))
            lines.append(line.rstrip("\n"))
            if "Uvicorn running on" in line:
                break
        yield lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            # What it printed after the banner, for tests that read the log afterwards.
            lines.extend(proc.stdout.read().splitlines())
            proc.stdout.close()
    assert proc.returncode == 0, "\n".join(lines)


def test_serve_prints_url_and_a_generated_token(tmp_path: Path) -> None:
    port = free_port()
    env = {"FLOWSTATE_TOKENS": "", "FLOWSTATE_STORE": ""}
    with running(
        ["serve", APP, "--port", str(port), "--store", f"sqlite:///{tmp_path / 's.db'}"],
        tmp_path,
        env,
    ) as lines:
        assert lines[0].startswith(f"flowstate serving http://127.0.0.1:{port}/")
        assert lines[1] == f"store: sqlite:///{tmp_path / 's.db'}"
        token = lines[2].split("token: ", 1)[1].split(" ", 1)[0]
        assert "generated" in lines[2] and len(token) >= 24
        url = f"http://127.0.0.1:{port}/api/flows"
        assert httpx.get(f"{url}/sessions").status_code == 401
        run = httpx.post(
            f"{url}/demo/actions/increment",
            json={"input": {"amount": 2}},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert run.status_code == 200 and run.json()["output"] == {"messageCount": 2}
    assert (tmp_path / "s.db").exists() and not (tmp_path / ".flowstate").exists()


def test_serve_uses_configured_tokens(tmp_path: Path) -> None:
    port = free_port()
    store = f"sqlite:///{tmp_path / 's.db'}"
    with running(
        ["serve", APP, "--port", str(port), "--store", store],
        tmp_path,
        {"FLOWSTATE_TOKENS": "ops-token:ops"},
    ) as lines:
        assert lines[2] == "auth: 1 token(s) from $FLOWSTATE_TOKENS"
        created = httpx.post(
            f"http://127.0.0.1:{port}/api/flows/demo/sessions",
            headers={"Authorization": "Bearer ops-token"},
        )
        assert created.status_code == 201 and created.json()["userId"] == "ops"


def test_demo_command_serves_the_page_and_the_flow(tmp_path: Path) -> None:
    port = free_port()
    with running(["demo", "--no-open", "--port", str(port)], tmp_path) as lines:
        token = lines[2].split("token: ", 1)[1].split(" ", 1)[0]
        assert lines[3] == f"open: http://127.0.0.1:{port}/?token={token}"
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "flowstate" in page.text
        run = httpx.post(
            f"http://127.0.0.1:{port}/api/flows/demo/actions/write_file",
            json={"input": {"path": "a.txt", "content": "hi"}},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert run.json()["output"] == {"key": "files/a.txt", "count": 1}
    assert (tmp_path / ".flowstate" / "demo.db").exists()
