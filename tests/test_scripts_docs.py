"""docs/scripts.md runs as written; its examples and operator commands do what it says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowstate import scripts
from flowstate.cli import main as cli
from flowstate.scripts import ScriptContext, use_context

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "scripts.md"
EXAMPLES = ROOT / "examples" / "scripts"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'state.db'}"
    scripts.shutdown()


def python_blocks() -> list[str]:
    return [m.group(1) for m in FENCE.finditer(PAGE.read_text(encoding="utf-8"))]


def test_the_page_runs_as_one_script(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 6
    script = tmp_path / "scripts_page.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # the store was closed cleanly at exit, too


def test_the_documented_temperature_script_is_the_example_file() -> None:
    def main_of(source: str) -> str:
        return source[source.index("def main(") :].strip()

    documented = main_of(python_blocks()[0])
    assert documented == main_of((EXAMPLES / "temperature.py").read_text(encoding="utf-8"))


def test_the_temperature_example_through_the_cli(tmp_path: Path, url: str) -> None:
    reading = tmp_path / "paris.txt"
    example = str(EXAMPLES / "temperature.py")
    outputs = []
    for text in ("+12°C", "+14°C", "+9.5°C", "+9.5°C"):
        reading.write_text(text, encoding="utf-8")
        result = CliRunner().invoke(
            cli,
            ["run", example, "--arg", f"source={reading}", "--store", url, "--user", "alice"],
        )
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.stdout))
    assert outputs == [
        "This is the first reading.",
        "The temperature has increased.",
        "The temperature has decreased.",
        "The temperature has remained the same.",
    ]
    reading.write_text("sunny", encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", example, "--arg", f"source={reading}", "--store", url])
    assert result.exit_code == 1
    assert "holds no temperature reading: 'sunny'" in result.stderr


def test_states_are_visible_to_operator_commands(url: str) -> None:
    with use_context(ScriptContext(username="alice", script_path="u/alice/etl", store_url=url)):
        scripts.set_state({"cursor": 7})
        scripts.set_state({"cursor": 8})
    scripts.shutdown()  # the commands open the store themselves
    result = CliRunner().invoke(
        cli, ["state", "inspect", "--scope", "project", "--id", "default", "--store", url]
    )
    assert result.exit_code == 0, result.output
    records = {r["key"]: r for r in json.loads(result.stdout)["records"]}
    record = records["c/_scripts/u/alice/etl/user"]
    assert record["version"] == 2
    assert record["fields"] == ["resourceType", "value"]
    result = CliRunner().invoke(
        cli,
        ["state", "get", "--scope", "project", "--id", "default", "--store", url,
         "--resource", "_scripts", "--key", "u/alice/etl/user"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["version"], shown["state"]) == (
        2,
        {"value": {"cursor": 8}, "resourceType": "state"},
    )
