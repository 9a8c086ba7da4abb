"""Unmodified Windmill scripts using the official `wmill` client against a real flowstate server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowstate import scripts
from flowstate.scripts import ScriptContext, use_context

pytest.importorskip("wmill")

TOKEN = "wmill-test-token"


@dataclass
class Served:
    base_url: str
    store_url: str
    env: dict[str, str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`flowstate serve` on a free loopback port, on a SQLite file the tests read too."""
    tmp = tmp_path_factory.mktemp("wmill")
    store_url = f"sqlite:///{tmp / 'state.db'}"
    (tmp / "wmill_server.py").write_text(
        textwrap.dedent(
            """
            from flowstate import FlowServer

            def make(store=None):
                return FlowServer([], store=store)  # no flows: scripts only
            """
        )
    )
    port = free_port()
    log = tmp / "server.log"
    log_file = log.open("w")
    proc = subprocess.Popen(
        ["flowstate", "serve", "wmill_server:make", "--store", store_url, "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=tmp,
        stdout=log_file,  # a file, not a pipe: a full pipe would block the server
        stderr=subprocess.STDOUT,
        # The token comes from the environment, never from the command line.
        env={**os.environ, "FLOWSTATE_TOKENS": f"{TOKEN}:alice:default+acme"},
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base_url}/openapi.json", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                log_file.close()
                pytest.fail(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)
    env = {
        **os.environ,
        "WM_BASE_URL": base_url,
        "WM_TOKEN": TOKEN,
        "FLOWSTATE_STORE": store_url,
        "USER": "alice",
    }
    try:
        yield Served(base_url, store_url, env)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log_file.close()
        scripts.shutdown()


def flowstate(served: Served, *args: str) -> Any:
    """Run a `flowstate` command with the wmill variables set; return the printed result."""
    out = subprocess.run(
        ["flowstate", *args], env=served.env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


WINDMILL_SCRIPT = """
    import wmill


    def main(x: int = 1):
        last = wmill.get_state()
        wmill.set_state({"runs": (last or {}).get("runs", 0) + 1, "x": x})
        if wmill.get_resource("u/alice/config", none_if_undefined=True) is None:
            wmill.set_resource("u/alice/config", {"threshold": 10}, "config")
        else:
            wmill.set_resource("u/alice/config", {"threshold": 20})
        wmill.set_flow_user_state("seen", [x])
        return {
            "last": last,
            "now": wmill.get_state(),
            "config": wmill.get_resource("u/alice/config"),
            "flow_state": wmill.get_flow_user_state("seen"),
            "state_path": wmill.get_state_path(),
        }
"""


def test_an_unmodified_windmill_script_runs_against_flowstate(
    served: Served, tmp_path: Path
) -> None:
    script = write(tmp_path, "wm_counter.py", WINDMILL_SCRIPT)
    first = flowstate(served, "run", str(script), "--project", "acme", "--arg", "x=5")
    assert first == {
        "last": None,
        "now": {"runs": 1, "x": 5},
        "config": {"threshold": 10},
        "flow_state": [5],
        "state_path": "u/alice/wm_counter/user",
    }
    second = flowstate(served, "run", str(script), "--project", "acme", "--arg", "x=6")
    assert second["last"] == {"runs": 1, "x": 5}
    assert second["now"] == {"runs": 2, "x": 6}
    assert second["config"] == {"threshold": 20}
    scheduled = flowstate(
        served, "run", str(script), "--project", "acme", "--schedule", "u/alice/hourly"
    )
    assert scheduled["last"] is None and scheduled["state_path"] == "u/alice/wm_counter/alice"
    # What wmill wrote is flowstate state: versioned records in the project scope.
    with use_context(ScriptContext(store_url=served.store_url, project="acme"), export_env=False):
        state = scripts.get_resource_info("u/alice/wm_counter/user")
        config = scripts.get_resource_info("u/alice/config")
    assert (state.value, state.version, state.resource_type) == ({"runs": 2, "x": 6}, 2, "state")
    assert (config.value, config.version, config.resource_type) == ({"threshold": 20}, 2, "config")


def test_the_seeds_flow_user_state_example_shares_state_across_steps(
    served: Served, tmp_path: Path
) -> None:
    # Windmill's documentation example, verbatim, as step a.
    step_a = write(
        tmp_path,
        "set_foobar.py",
        """
        import wmill
        #extra_requirements:
        #wmill==1.297.0

        def main(x: str):
            # Set flow user state
            wmill.set_flow_user_state("foobar", 43)

            # Get flow user state
            return wmill.get_flow_user_state("foobar")
        """,
    )
    step_b = write(
        tmp_path,
        "read_foobar.py",
        """
        import wmill

        def main(previous_result=None):
            return {"previous": previous_result, "foobar": wmill.get_flow_user_state("foobar"),
                    "path": wmill.get_state_path()}
        """,
    )
    result = flowstate(
        served, "run-flow", "--path", "f/team/etl", str(step_a), str(step_b), '{"x": "go"}'
    )
    assert result == {"previous": 43, "foobar": 43, "path": "f/team/etl/b_user"}
    # A second run of the flow starts with an empty flow user state.
    alone = flowstate(served, "run-flow", "--path", "f/team/etl", str(step_b))
    assert alone["foobar"] is None


def test_wmill_and_flowstate_scripts_see_each_others_writes(served: Served, tmp_path: Path) -> None:
    native = write(
        tmp_path,
        "native.py",
        """
        from flowstate import scripts

        def main():
            before = scripts.get_state()
            scripts.update_state(lambda s: (s or []) + ["native"])
            return before
        """,
    )
    windmill = write(
        tmp_path,
        "windmill.py",
        """
        import wmill

        def main():
            before = wmill.get_state()
            wmill.set_state(before + ["wmill"])
            return before
        """,
    )
    path = ["--path", "u/alice/mixed"]
    assert flowstate(served, "run", str(native), *path) is None
    assert flowstate(served, "run", str(windmill), *path) == ["native"]
    assert flowstate(served, "run", str(native), *path) == ["native", "wmill"]
    with use_context(ScriptContext(store_url=served.store_url), export_env=False):
        info = scripts.get_resource_info("u/alice/mixed/user")
    assert (info.value, info.version) == (["native", "wmill", "native"], 3)


def test_a_wrong_token_is_refused(served: Served, tmp_path: Path) -> None:
    script = write(tmp_path, "wm.py", WINDMILL_SCRIPT)
    env = {**served.env, "WM_TOKEN": "not-a-token"}
    out = subprocess.run(
        ["flowstate", "run", str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1
    assert "401" in out.stderr and "auth_error" in out.stderr
