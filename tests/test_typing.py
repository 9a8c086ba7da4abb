"""Static typing: mypy checks the files under tests/typing/ and must see the declared models.

Each file marks lines with ``# R<n>`` (a ``reveal_type`` whose result is asserted) or
``# E<n>`` (a line mypy must report as an error).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from mypy import api as mypy_api

from flowstate import FlowServer, define_flow

ROOT = Path(__file__).resolve().parent.parent
TYPING = Path(__file__).resolve().parent / "typing"
FILES = ["context_types.py", "typo.py", "mismatch.py"]


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], list[str]]:
    """Run mypy --strict once over every typing file; messages keyed by (file, line)."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    stdout, stderr, status = mypy_api.run(
        [
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(cache),
            "--no-error-summary",
            "--show-absolute-path",
            *(str(TYPING / f) for f in FILES),
        ]
    )
    assert status in (0, 1), stderr  # 2 = mypy itself failed
    out: dict[tuple[str, int], list[str]] = {}
    for line in stdout.splitlines():
        match = re.match(r"(.+?):(\d+): (error|note): (.*)", line)
        if match:
            key = (Path(match.group(1)).name, int(match.group(2)))
            out.setdefault(key, []).append(f"{match.group(3)}: {match.group(4)}")
    return out


def marker_line(file: str, marker: str) -> int:
    for number, text in enumerate((TYPING / file).read_text().splitlines(), start=1):
        if text.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(f"no # {marker} in {file}")


def revealed(output: dict[tuple[str, int], list[str]], file: str, marker: str) -> str:
    messages = output.get((file, marker_line(file, marker)), [])
    notes = [m for m in messages if m.startswith("note: Revealed type is")]
    assert len(notes) == 1, messages
    return notes[0].split('"')[1]


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("R1", "Counter"),  # ctx: Context[Counter] with session_state=Counter (decorator)
        ("R2", "Prefs"),  # ctx: Context[Any, Prefs] with user_state=Prefs (function form)
        ("R3", "Scratch"),  # ctx.self of a block with state=Scratch
        ("R4", "Progress"),  # ctx.get_target(name, Progress)
        ("R5", "Any"),  # a bare Context: untyped, nothing inferred wrongly
    ],
)
def test_declared_models_type_ctx(
    mypy_output: dict[tuple[str, int], list[str]], marker: str, expected: str
) -> None:
    assert revealed(mypy_output, "context_types.py", marker).split(".")[-1] == expected


def test_the_well_typed_example_has_no_errors(
    mypy_output: dict[tuple[str, int], list[str]],
) -> None:
    errors = [
        (line, m)
        for (file, line), messages in mypy_output.items()
        if file == "context_types.py"
        for m in messages
        if m.startswith("error")
    ]
    assert errors == []


def test_a_typo_in_a_state_field_is_a_mypy_error(
    mypy_output: dict[tuple[str, int], list[str]],
) -> None:
    messages = mypy_output.get(("typo.py", marker_line("typo.py", "E1")), [])
    assert any('"Counter" has no attribute "mesageCount"' in m for m in messages), messages


@pytest.mark.parametrize("marker", ["E2", "E3"])
def test_a_ctx_annotation_that_disagrees_with_the_declared_model_is_an_error(
    mypy_output: dict[tuple[str, int], list[str]], marker: str
) -> None:
    messages = mypy_output.get(("mismatch.py", marker_line("mismatch.py", marker)), [])
    assert any("[arg-type]" in m and "Context[Counter" in m for m in messages), messages
    assert any("Context[Mode" in m for m in messages), messages


def test_no_unexpected_errors_anywhere(mypy_output: dict[tuple[str, int], list[str]]) -> None:
    expected = {
        ("typo.py", marker_line("typo.py", "E1")),
        ("mismatch.py", marker_line("mismatch.py", "E2")),
        ("mismatch.py", marker_line("mismatch.py", "E3")),
    }
    with_errors = {
        key for key, messages in mypy_output.items() if any(m.startswith("error") for m in messages)
    }
    assert with_errors == expected


async def test_the_same_example_runs_and_the_state_is_a_counter_at_run_time() -> None:
    from .typing import context_types as example

    seen: list[Any] = []

    original = example.counter.execute

    async def spy(input: Any, ctx: Any) -> Any:
        result = await original(input, ctx)
        seen.append(ctx.session.state)
        return result

    example.counter.execute = spy
    try:
        flow = define_flow("typed", actions={"go": example.pipeline})
        async with FlowServer([flow], store="memory://") as server:
            result = await server.run("typed", "go", None, user_id="u")
    finally:
        example.counter.execute = original
    assert type(seen[0]) is example.Counter and seen[0].messageCount == 1
    assert result.output is True  # the last block: no project in this run
