"""``flowstate serve`` on a real port: slow clients, connection limits, secrets kept out of
logs and argv, startup failures that say what is wrong; read-only CLI commands that never
create a store (issue 9, defects 11 and 12)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from flowstate.cli import main

from .test_cli_server import APP, free_port, running

# No inherited tokens or store: each test says what it configures.
CLEAN = {"FLOWSTATE_TOKENS": "", "FLOWSTATE_STORE": ""}


def run_serve(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``flowstate serve ARGS`` that is expected to fail at startup."""
    return subprocess.run(
        ["flowstate", "serve", APP, *args],
        cwd=cwd,
        env={**os.environ, **CLEAN},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def slow_client(port: int) -> socket.socket:
    """A connection that starts a request head and never finishes it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/flows HTTP/1.1\r\nHost: x\r\n")
    return sock


def closed_by_server(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_slow_connections_are_dropped_and_never_starve_real_requests(tmp_path: Path) -> None:
    port = free_port()
    store = f"sqlite:///{tmp_path / 's.db'}"
    args = ["serve", APP, "--port", str(port), "--store", store]
    limits = ["--header-timeout", "1.5", "--max-connections", "40"]
    with running([*args, *limits], tmp_path, {**CLEAN, "FLOWSTATE_TOKENS": "t:ann"}):
        # Far more slow, unauthenticated connections than the limit allows.
        flood = [slow_client(port) for _ in range(150)]
        try:
            started = time.monotonic()
            for _ in range(5):
                real = httpx.get(
                    f"http://127.0.0.1:{port}/api/flows",
                    headers={"Authorization": "Bearer t"},
                    timeout=10,
                )
                assert real.status_code == 200
            # Served at once: the oldest slow connections made room, no timeout was awaited.
            assert time.monotonic() - started < 1.5
            # The survivors of the flood are closed once their head deadline passes.
            survivors = flood[-20:]
            assert all(closed_by_server(sock, 5) for sock in survivors)
        finally:
            for sock in flood:
                sock.close()


def read_until_closed(sock: socket.socket, wait: float) -> bytes | None:
    """Everything the server sends until it closes the connection (None: still open)."""
    sock.settimeout(wait)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def test_a_slow_body_is_cut_off(tmp_path: Path) -> None:
    port = free_port()
    store = f"sqlite:///{tmp_path / 's.db'}"
    args = ["serve", APP, "--port", str(port), "--store", store, "--body-timeout", "1"]
    with running(args, tmp_path, {**CLEAN, "FLOWSTATE_TOKENS": "t:ann"}) as output:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(
            b"POST /api/flows/demo/actions/increment HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        try:
            received = read_until_closed(sock, 6)
        finally:
            sock.close()
        # Answered 408 (nothing had been answered yet), then closed.
        assert received is not None, "the stalled connection was not closed"
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"connection: close" in head.lower()
        assert json.loads(body) == {
            "error": {
                "code": "request_timeout",
                "message": "the request body did not arrive within 1 s",
            }
        }
        ok = httpx.post(
            f"http://127.0.0.1:{port}/api/flows/demo/actions/increment",
            json={"input": {"amount": 1}},
            headers={"Authorization": "Bearer t"},
        )
        assert ok.status_code == 200
    # Logged as a handled timeout: one line, no traceback, no internal error.
    log = "\n".join(output)
    timeouts = [line for line in output if "request timeout" in line]
    assert len(timeouts) == 1, log
    assert timeouts[0].startswith("WARNING:")
    assert "POST /api/flows/demo/actions/increment from 127.0.0.1:" in timeouts[0]
    assert timeouts[0].endswith("did not arrive within 1 s; answered 408 and closed the connection")
    for unhandled in ("Traceback", "Exception in ASGI application", "internal error"):
        assert unhandled not in log, log


def test_tokens_stay_out_of_argv_and_logs(tmp_path: Path) -> None:
    port = free_port()
    secret = "file-token-4b1d9e"
    tokens = tmp_path / "tokens"
    tokens.write_text("# ops tokens\nfile-token-4b1d9e:ann:p1\n")
    store = f"sqlite:///{tmp_path / 's.db'}"
    args = ["serve", APP, "--port", str(port), "--store", store, "--tokens-file", str(tokens)]
    with running(args, tmp_path, CLEAN) as lines:
        assert lines[2] == f"auth: 1 token(s) from {tokens}"
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {secret}"}
        page = httpx.get(f"{base}/?token={secret}")
        assert page.status_code == 200
        member = httpx.post(
            f"{base}/api/flows/demo/sessions", json={"projectId": "p1"}, headers=auth
        )
        assert member.status_code == 201 and member.json()["userId"] == "ann"
        other = httpx.post(
            f"{base}/api/flows/demo/sessions", json={"projectId": "p2"}, headers=auth
        )
        assert other.status_code == 404
        time.sleep(0.3)  # let the access log lines reach the pipe
    output = "\n".join(lines)
    # running() stops reading at "Uvicorn running": read the rest through a second server.
    assert secret not in output
    port2 = free_port()
    proc = subprocess.Popen(
        ["flowstate", "serve", APP, "--port", str(port2), "--store", store],
        cwd=tmp_path,
        env={**os.environ, **CLEAN, "FLOWSTATE_TOKENS": f"{secret}:ann"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port2}/?token={secret}", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        httpx.get(f"http://127.0.0.1:{port2}/static/app.js?a=1&token={secret}")
    finally:
        proc.terminate()
        log, _ = proc.communicate(timeout=30)
    assert '"GET /?token=[redacted] HTTP/1.1" 200' in log
    assert "a=1&token=[redacted]" in log
    assert secret not in log
    assert secret not in " ".join(proc.args)  # type: ignore[arg-type]


def test_generated_token_is_a_member_of_the_default_project(tmp_path: Path) -> None:
    port = free_port()
    store = f"sqlite:///{tmp_path / 's.db'}"
    with running(["serve", APP, "--port", str(port), "--store", store], tmp_path, CLEAN) as lines:
        assert "member of project default" in lines[2]
        token = lines[2].split("token: ", 1)[1].split(" ", 1)[0]
        assert lines[3] == f"open: http://127.0.0.1:{port}/?token={token}"
        auth = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        run = httpx.post(
            f"{base}/api/flows/demo/actions/increment",
            json={"input": {"amount": 1}, "projectId": "default"},
            headers=auth,
        )
        assert run.status_code == 200
        # The Windmill routes of the default workspace work for the newcomer too.
        made = httpx.post(
            f"{base}/api/w/default/resources/create",
            json={"path": "u/local/db", "value": 1},
            headers=auth,
        )
        assert made.status_code == 201, made.text
        elsewhere = httpx.get(f"{base}/api/w/other/resources/get/u/local/db", headers=auth)
        assert elsewhere.status_code == 404


@pytest.mark.parametrize(
    ("store", "fragment"),
    [
        ("postgresql://flowstate@127.0.0.1:1/nowhere", "cannot use the store postgresql://"),
        ("bogus://x", "unknown store URL"),
        ("sqlite://relative.db", "a SQLite URL looks like sqlite:///"),
    ],
)
def test_a_bad_store_fails_at_startup(tmp_path: Path, store: str, fragment: str) -> None:
    result = run_serve(["--port", str(free_port()), "--store", store], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "serving" not in result.stdout and result.stdout == ""
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and fragment in error[0], result.stderr


def test_a_store_password_is_never_printed(tmp_path: Path) -> None:
    store = "postgresql://flowstate:hunter2-pw@127.0.0.1:1/nowhere"
    result = run_serve(["--port", str(free_port()), "--store", store], tmp_path)
    assert result.returncode == 1
    assert "hunter2-pw" not in result.stdout + result.stderr
    assert "postgresql://flowstate:***@127.0.0.1:1/nowhere" in result.stderr


def test_port_in_use_fails_before_the_banner(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        store = f"sqlite:///{tmp_path / 's.db'}"
        result = run_serve(["--port", str(port), "--store", store], tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""  # no banner, no token
    assert result.stderr.strip() == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_the_token_flag_warns_that_it_is_visible(tmp_path: Path) -> None:
    port = free_port()
    store = f"sqlite:///{tmp_path / 's.db'}"
    with running(
        ["serve", APP, "--port", str(port), "--store", store, "--token", "argv-token"],
        tmp_path,
        CLEAN,
    ) as lines:
        assert any("--token is visible" in line for line in lines)
        assert not any("argv-token" in line for line in lines if "token:" in line)
        ok = httpx.get(
            f"http://127.0.0.1:{port}/api/flows", headers={"Authorization": "Bearer argv-token"}
        )
        assert ok.status_code == 200


# ----------------------------------------------------------------------------- operator CLI


def test_read_only_commands_never_create_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWSTATE_STORE", raising=False)
    runner = CliRunner()
    for command in ("inspect", "get"):
        result = runner.invoke(main, ["state", command, "--scope", "user", "--id", "ann"])
        assert result.exit_code == 1, result.output
        assert "no store at .flowstate/state.db" in result.output
        assert "read-only commands never create one" in result.output
    missing = tmp_path / "typo.db"
    result = runner.invoke(
        main,
        ["state", "inspect", "--scope", "user", "--id", "ann", "--store", f"sqlite:///{missing}"],
    )
    assert result.exit_code == 1 and f"no store at {missing} (from --store)" in result.output
    assert not (tmp_path / ".flowstate").exists() and not missing.exists()


def test_a_wrong_id_is_an_error(tmp_path: Path) -> None:
    from flowstate.cli.demo import create_server

    url = f"sqlite:///{tmp_path / 'ops.db'}"

    async def seed() -> str:
        async with create_server(url) as server:
            return (await server.run("demo", "increment", {"amount": 1}, user_id="ann")).session_id

    sid = asyncio.run(seed())
    runner = CliRunner()
    found = runner.invoke(
        main, ["state", "inspect", "--scope", "session", "--id", sid, "--store", url]
    )
    assert found.exit_code == 0 and json.loads(found.output)["count"] == 1
    for scope, scope_id in (("session", "no-such-session"), ("user", "nobody")):
        wrong = runner.invoke(
            main, ["state", "inspect", "--scope", scope, "--id", scope_id, "--store", url]
        )
        assert wrong.exit_code == 1
        assert f"nothing stored under {scope}/{scope_id}/" in wrong.output


def serve_without_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[Any], Callable[..., Any]]:
    """``flowstate serve|demo`` run in-process up to the point of serving: the apps they
    would serve, and a function invoking the command (memory store, a free port)."""
    serving = importlib.import_module("flowstate.cli._serve")
    apps: list[Any] = []

    def serve_app(app: Any, sock: socket.socket, **_: Any) -> None:  # instead of serving
        apps.append(app)
        sock.close()

    monkeypatch.setattr(serving, "serve_app", serve_app)
    runner = CliRunner()

    def invoke(command: str, *flags: str) -> Any:
        args = [command] + ([APP] if command == "serve" else ["--no-open"])
        args += ["--port", str(free_port()), "--store", "memory://", *flags]
        return runner.invoke(main, args, env=CLEAN)

    return apps, invoke


def test_request_log_bytes_flag_sets_the_replay_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowstate.http._requestlog import DEFAULT_REQUEST_LOG_BYTES

    apps, invoke = serve_without_serving(monkeypatch)

    for text, expected in (
        ("65536", 65536),
        ("500KB", 500_000),
        ("64MiB", 64 * 1024**2),
        ("1.5 KiB", 1536),
        ("1GB", 10**9),
    ):
        result = invoke("serve", "--request-log-bytes", text)
        assert result.exit_code == 0, result.output
        assert apps.pop().state.flowstate.logs.max_bytes == expected
    assert invoke("serve").exit_code == 0
    assert apps.pop().state.flowstate.logs.max_bytes == DEFAULT_REQUEST_LOG_BYTES
    assert invoke("demo", "--request-log-bytes", "8MiB").exit_code == 0
    assert apps.pop().state.flowstate.logs.max_bytes == 8 * 1024**2

    for text, problem in (
        ("0", "must be at least 1 byte"),
        ("-5MB", "must be at least 1 byte"),
        ("1.5", "is not a whole number of bytes"),
        ("lots", "is not a size"),
        ("nan", "is not a size"),
        ("1e30GiB", "must be at most 2**63 - 1 bytes"),
        ("²", "is not a size"),
    ):
        result = invoke("serve", "--request-log-bytes", text)
        assert result.exit_code == 2, result.output
        assert (
            f"Invalid value for --request-log-bytes: {text!r} {problem} "
            "(like 65536, 500KB, 64MiB, 1GB)" in result.output
        ), result.output
    assert apps == []  # a refused value serves nothing


def test_max_record_bytes_flag_limits_what_the_served_store_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flowstate import StateValidationError
    from flowstate.limits import MAX_RECORD_BYTES

    apps, invoke = serve_without_serving(monkeypatch)

    async def note(server: Any, text: str) -> Any:
        try:
            return await server.run("demo", "increment", {"note": text}, user_id="ann")
        finally:
            await server.aclose()

    assert invoke("serve").exit_code == 0
    assert apps.pop().state.flowstate.server.store.max_record_bytes == MAX_RECORD_BYTES
    for command in ("serve", "demo"):
        result = invoke(command, "--max-record-bytes", "1KB")
        assert result.exit_code == 0, result.output
        server = apps.pop().state.flowstate.server
        assert server.store.max_record_bytes == 1000
        with pytest.raises(StateValidationError) as caught:
            asyncio.run(note(server, "x" * 1000))
        assert [e["type"] for e in caught.value.errors] == ["record_size"]
        assert "larger than the limit of 1,000 bytes (max_record_bytes)" in str(caught.value)

    result = invoke("serve", "--max-record-bytes", "0")
    assert result.exit_code == 2
    assert "Invalid value for --max-record-bytes: '0' must be at least 1 byte" in result.output
    assert apps == []
