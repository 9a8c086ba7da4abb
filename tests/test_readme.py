"""The README's Python blocks run in order, in one namespace, and print what they claim."""

from __future__ import annotations

import contextlib
import io
import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_readme_commands_are_the_ones_ci_runs() -> None:
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[server,postgres,test]" && python -m pytest'
    assert test_command in text
    assert test_command in ci
    assert 'pip install -e ".[server]" && flowstate demo' in text


def test_readme_tour_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("flowstate_readme")
    sys.modules["flowstate_readme"] = module  # pydantic resolves annotations through it
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            for number, block in enumerate(FENCE.findall(README.read_text()), start=1):
                exec(compile(block, f"README.md [python block {number}]", "exec"), module.__dict__)
    finally:
        del sys.modules["flowstate_readme"]
    printed = out.getvalue().splitlines()
    assert printed[0] == "{'mode': 'agent'}"
    assert printed[1] == (
        "['request.created', 'state_change', 'state_change', 'request.completed']"
    )
    assert printed[2] == "{'session': {'messageCount': 2}}"
    assert printed[3] == "('session', ['mode'], 0)"
    assert printed[4] == "['files/docs/readme.md']"
