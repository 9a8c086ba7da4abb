"""The script runner: `flowstate run`, `flowstate run-flow` and their Python equivalents."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flowstate import scripts
from flowstate.cli import main as cli
from flowstate.scripts import ScriptContext, engine, use_context
from flowstate.scripts.runner import ScriptError, run_flow, run_script
from flowstate.stores import Store


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'state.db'}"
    scripts.shutdown()


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


COUNTER = """
    from flowstate import scripts

    def main(step: int = 1):
        n = (scripts.get_state() or 0) + step
        scripts.set_state(n)
        return {"path": scripts.get_state_path(), "n": n}
"""


def state_at(url: str, path: str, project: str = "default") -> Any:
    with use_context(ScriptContext(store_url=url, project=project), export_env=False):
        return scripts.get_resource(path, none_if_undefined=True)


def test_run_script_defaults_and_persistent_state(tmp_path: Path, url: str) -> None:
    script = write(tmp_path, "counter.py", COUNTER)
    assert run_script(script, store=url, user="alice") == {"path": "u/alice/counter/user", "n": 1}
    assert run_script(script, {"step": 5}, store=url, user="alice")["n"] == 6
    # A scheduled run has its own state: the trigger is the user name.
    scheduled = run_script(script, store=url, user="alice", schedule="u/alice/hourly")
    assert scheduled == {"path": "u/alice/counter/alice", "n": 1}
    assert run_script(script, store=url, user="bob", path="f/team/count") == {
        "path": "f/team/count/user",
        "n": 1,
    }
    assert state_at(url, "u/alice/counter/user") == 6


def test_the_runner_exports_windmills_environment_during_the_run(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WM_STATE_PATH", raising=False)
    script = write(
        tmp_path,
        "env.py",
        """
        import os

        def main():
            return {k: v for k, v in os.environ.items() if k.startswith("WM_")}
        """,
    )
    env = run_script(script, store=url, user="alice", project="acme", job_id="job1")
    assert env["WM_WORKSPACE"] == "acme"
    assert env["WM_STATE_PATH"] == env["WM_STATE_PATH_NEW"] == "u/alice/env/user"
    assert env["WM_JOB_ID"] == "job1"
    assert env["WM_ROOT_FLOW_JOB_ID"] == "job1"  # a standalone run is its own root
    assert env["WM_JOB_PATH"] == "u/alice/env"
    assert env["WM_USERNAME"] == "alice"
    assert "WM_FLOW_PATH" not in env
    assert "WM_STATE_PATH" not in os.environ  # restored afterwards


def test_threads_and_subprocesses_of_a_script_see_its_context(tmp_path: Path, url: str) -> None:
    script = write(
        tmp_path,
        "child.py",
        """
        import subprocess, sys, threading
        from flowstate import scripts

        def main():
            box = {}
            t = threading.Thread(target=lambda: box.update(path=scripts.get_state_path()))
            t.start(); t.join()
            code = "from flowstate import scripts; scripts.set_state('from child')"
            subprocess.run([sys.executable, "-c", code], check=True)
            return [box["path"], scripts.get_state()]
        """,
    )
    assert run_script(script, store=url, user="alice") == ["u/alice/child/user", "from child"]


async def test_async_main_runs_even_inside_a_running_loop(tmp_path: Path, url: str) -> None:
    script = write(
        tmp_path,
        "aio.py",
        """
        import asyncio
        from flowstate import scripts

        async def main(x: int):
            await asyncio.sleep(0)
            scripts.set_state(x)
            return scripts.get_state() * 2
        """,
    )
    assert run_script(script, {"x": 21}, store=url) == 42


def test_scripts_can_import_modules_beside_them(tmp_path: Path, url: str) -> None:
    write(tmp_path, "helper_mod_xyz.py", "VALUE = 7\n")
    script = write(
        tmp_path, "uses.py", "import helper_mod_xyz\ndef main():\n    return helper_mod_xyz.VALUE\n"
    )
    assert run_script(script, store=url) == 7


def test_script_problems_are_reported_clearly(tmp_path: Path, url: str) -> None:
    with pytest.raises(ScriptError, match="does not exist or is not a file"):
        run_script(tmp_path / "missing.py", store=url)
    nomain = write(tmp_path, "nomain.py", "x = 1\n")
    with pytest.raises(ScriptError, match="defines no main\\(\\) function"):
        run_script(nomain, store=url)
    counter = write(tmp_path, "counter.py", COUNTER)
    with pytest.raises(ScriptError, match=r"counter\.py: main\(\) arguments do not fit: .*'nope'"):
        run_script(counter, {"nope": 1}, store=url)


def test_run_flow_runs_steps_a_b_c_sharing_flow_user_state(tmp_path: Path, url: str) -> None:
    a = write(
        tmp_path,
        "a.py",
        """
        from flowstate import scripts

        def main(n: int):
            scripts.set_flow_user_state("seen", ["a"])
            scripts.set_state(scripts.get_state_path())
            return n + 1
        """,
    )
    b = write(
        tmp_path,
        "b.py",
        """
        from flowstate import scripts

        def main(previous_result: int, results: dict):
            seen = scripts.get_flow_user_state("seen") + ["b"]
            scripts.set_flow_user_state("seen", seen)
            return {"prev": previous_result, "results": results, "path": scripts.get_state_path()}
        """,
    )
    c = write(
        tmp_path,
        "c.py",
        """
        from flowstate import scripts

        def main(n, **rest):
            return {"n": n, "rest": sorted(rest), "seen": scripts.get_flow_user_state("seen")}
        """,
    )
    run = run_flow([a, b, c], {"n": 1}, path="f/team/etl", store=url, user="alice")
    assert list(run.results) == ["a", "b", "c"]
    assert run.results["b"] == {"prev": 2, "results": {"a": 2}, "path": "f/team/etl/b_user"}
    assert run.result == {"n": 1, "rest": ["previous_result", "results"], "seen": ["a", "b"]}
    assert state_at(url, "f/team/etl/a_user") == "f/team/etl/a_user"
    # Another run of the flow starts with an empty flow user state.
    reader = write(
        tmp_path,
        "reader.py",
        "from flowstate import scripts\n"
        "def main():\n    return scripts.get_flow_user_state('seen')\n",
    )
    assert run_flow([reader], path="f/team/etl", store=url).result is None


def test_a_scheduled_flow_keys_step_states_by_the_user(tmp_path: Path, url: str) -> None:
    counter = write(tmp_path, "counter.py", COUNTER)
    for n in (1, 2):
        run = run_flow(
            [counter, counter], path="f/team/etl", store=url, user="bob", schedule="f/team/nightly"
        )
        assert run.results == {
            "a": {"path": "f/team/etl/a_bob", "n": n},
            "b": {"path": "f/team/etl/b_bob", "n": n},
        }


def test_flow_steps_are_recorded_only_while_the_flow_runs(tmp_path: Path, url: str) -> None:
    script = write(
        tmp_path,
        "root.py",
        """
        import os
        from flowstate.scripts import engine, current_context
        from flowstate.scripts.storage import root_job_of

        def main():
            ctx = current_context()
            job = os.environ["WM_JOB_ID"]
            root = engine.call(ctx.store_url, lambda st: root_job_of(st, ctx.project, job))
            return [job, root, os.environ["WM_ROOT_FLOW_JOB_ID"], os.environ["WM_FLOW_STEP_ID"]]
        """,
    )
    run = run_flow([script], path="f/x", store=url, flow_run_id="run-42")
    job, root, env_root, step = run.result
    assert (root, env_root, step) == ("run-42", "run-42", "a")

    async def leftover(store: Store) -> list[str]:
        return await store.scan("project/default/c/_jobs/")

    assert engine.call(url, leftover) == []
    assert job != "run-42"


def test_a_failing_step_stops_the_flow(tmp_path: Path, url: str) -> None:
    bad = write(tmp_path, "bad.py", "def main():\n    raise RuntimeError('step broke')\n")
    after = write(
        tmp_path,
        "after.py",
        "from flowstate import scripts\ndef main():\n    scripts.set_state('ran')\n",
    )
    with pytest.raises(RuntimeError, match="step broke"):
        run_flow([bad, after], path="f/x", store=url)
    assert state_at(url, "f/x/b_user") is None
    with pytest.raises(ScriptError, match="at least one step"):
        run_flow([], path="f/x", store=url)


# ------------------------------------------------------------------ CLI


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_cli_run_prints_the_result_as_json(tmp_path: Path, url: str) -> None:
    script = write(tmp_path, "counter.py", COUNTER)
    result = invoke("run", str(script), "--store", url, "--user", "alice")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"path": "u/alice/counter/user", "n": 1}
    result = invoke("run", str(script), '{"step": 3}', "--store", url, "--user", "alice")
    assert json.loads(result.stdout)["n"] == 4
    result = invoke(
        "run",
        str(script),
        "--arg",
        "step=10",
        "--store",
        url,
        "--user",
        "alice",
        "--schedule",
        "u/alice/s",
        "--path",
        "u/alice/c2",
    )
    assert json.loads(result.stdout) == {"path": "u/alice/c2/alice", "n": 10}


def test_cli_run_argument_parsing(tmp_path: Path, url: str) -> None:
    echo = write(tmp_path, "echo.py", "def main(**kw):\n    return kw\n")
    result = invoke(
        "run",
        str(echo),
        '{"a": 1, "b": "x"}',
        "--arg",
        "b=true",
        "--arg",
        "name=alice",
        "--arg",
        "eq=a=b",
        "--store",
        url,
    )
    assert json.loads(result.stdout) == {"a": 1, "b": True, "name": "alice", "eq": "a=b"}
    for args, fragment in [
        (["{bad"], "not valid JSON"),
        (["[1]"], "must be a JSON object of arguments"),
        (["--arg", "novalue"], "'novalue' is not key=value"),
        (["--user", "a/b"], "must be a single segment"),
        (["--path", "u/../x"], '".." segments'),
    ]:
        result = CliRunner().invoke(cli, ["run", str(echo), "--store", url, *args])
        assert result.exit_code == 2, (args, result.output)
        assert fragment in result.output, (args, result.output)


def test_cli_run_failures_exit_1(tmp_path: Path, url: str) -> None:
    nomain = write(tmp_path, "nomain.py", "x = 1\n")
    result = invoke("run", str(nomain), "--store", url)
    assert result.exit_code == 1
    assert "defines no main() function" in result.stderr
    boom = write(tmp_path, "boom.py", "def main():\n    raise ValueError('kaput')\n")
    result = invoke("run", str(boom), "--store", url)
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "ValueError: kaput" in result.stderr
    result = invoke("run", str(boom), "--store", "bogus://x")
    assert result.exit_code == 1
    assert "cannot open the store 'bogus://x': unknown store URL" in result.stderr
    assert "Traceback" not in result.stderr  # reported before the script ran
    odd = write(tmp_path, "odd.py", "def main():\n    return object()\n")
    result = invoke("run", str(odd), "--store", url)
    assert result.exit_code == 1
    assert "not JSON-serialisable" in result.stderr


def test_cli_run_flow(tmp_path: Path, url: str) -> None:
    a = write(tmp_path, "a.py", "def main(x):\n    return x * 2\n")
    b = write(tmp_path, "b.py", "def main(previous_result):\n    return previous_result + 1\n")
    result = invoke("run-flow", "--path", "f/team/etl", str(a), str(b), '{"x": 5}', "--store", url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == 11
    result = CliRunner().invoke(cli, ["run-flow", str(a), "--store", url])
    assert result.exit_code == 2 and "Missing option '--path'" in result.output
    result = CliRunner().invoke(cli, ["run-flow", "--path", "f/x", "nope.py", "--store", url])
    assert result.exit_code == 2 and "'nope.py' is not a file" in result.output


def test_cli_defaults_come_from_the_environment(tmp_path: Path, url: str) -> None:
    script = write(tmp_path, "who.py", COUNTER)
    env = {**os.environ, "USER": "zoe", "FLOWSTATE_PROJECT": "proj-z", "FLOWSTATE_STORE": url}
    out = subprocess.run(
        ["flowstate", "run", str(script)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"path": "u/zoe/who/user", "n": 1}
    assert state_at(url, "u/zoe/who/user", project="proj-z") == 1
    assert state_at(url, "u/zoe/who/user") is None
