"""The runnable examples in examples/: each ``main()`` on a temporary SQLite store."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flowstate import FlowStateWarning

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"flowstate_example_{name}", EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves postponed annotations through it
    spec.loader.exec_module(module)
    return module


def run_main(name: str, tmp_path: Path) -> Any:
    db = tmp_path / "example.db"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlowStateWarning)
        result = load(name).main(f"sqlite:///{db}")
    assert db.exists()
    return result


def test_counter_and_mode_switch_pipeline(tmp_path: Path) -> None:
    result = run_main("counter_mode.py", tmp_path)
    assert result["outputs"] == ["[chat #1] hello", "[agent #2] /agent plan", "[agent #3] go"]
    snapshot = result["snapshot"]
    assert snapshot["flowKind"] == "my-app"
    assert snapshot["clientData"] == {"session": {"mode": "agent", "summary": "3 messages"}}
    assert "resources" not in snapshot
    assert result["events"] == [
        "request.created",
        "state_change",
        "request.completed",
    ]  # the third message leaves mode as it was: a no-op, no event


def test_artifacts_resource(tmp_path: Path) -> None:
    result = run_main("artifacts.py", tmp_path)
    assert result["saved"] == ["design-doc", "plan", "notes"]
    assert result["doc"] == {
        "title": "Design Doc v2",
        "content": "# Architecture\n\nThe system is composed of...",
    }
    listed = result["snapshot"]["clientData"]["session"]["artifactsList"]
    assert sorted(listed, key=lambda a: a["id"]) == [
        {"id": "design-doc", "title": "Design Doc v2"},
        {"id": "notes", "title": "Notes"},
        {"id": "plan", "title": "Plan"},
    ]
    assert result["snapshot"]["resources"] == {
        "session": {"artifacts": {"clientData": {"count": 3}}}
    }
    assert "# Architecture" not in repr(result["snapshot"])


def test_files_collection_with_lru_cap(tmp_path: Path) -> None:
    result = run_main("files_lru.py", tmp_path)
    assert result["read"] == "print('a')"
    assert result["files"] == ["files/README.md", "files/src/a.py", "files/src/deep/c.py"]
    assert result["evicted"] == ["files/src/b.py"]
    assert result["snapshot"]["resources"]["session"]["files"] == {
        "count": 3,
        "items": [
            {"key": "files/README.md", "clientData": {"size": 6}},
            {"key": "files/src/a.py", "clientData": {"size": 10}},
            {"key": "files/src/deep/c.py", "clientData": {"size": 10}},
        ],
    }


def test_shared_preferences_and_isolated_maintenance(tmp_path: Path) -> None:
    result = run_main("shared_preferences.py", tmp_path)
    prefs = {"theme": "light", "preferredModel": "gpt-5-mini"}
    assert result["admin_sees"] == prefs
    assert result["admin_after_maintenance"] == prefs
    assert [m["runs"] for m in result["maintenance"]] == [1, 2]
    assert result["maintenance"][0]["sees"] == ["lastRunAt", "runs"]
    assert result["other_user"] == {"theme": "dark", "preferredModel": "gpt-5-mini"}


@pytest.mark.parametrize(
    "name", ["counter_mode.py", "artifacts.py", "files_lru.py", "shared_preferences.py"]
)
def test_examples_run_as_scripts(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
