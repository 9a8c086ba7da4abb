"""Every ```python block of the capability pages in docs/ runs, page by page, in order.

The blocks of one page share one namespace (a page reads like one script). A page whose
examples use top-level ``await`` must say where they run (the asyncio REPL, ``python -m
asyncio``); only such pages are compiled with top-level ``await`` allowed, so a page that
forgets to say so fails here. A block that raises fails the test with the page and block number.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import types
import warnings
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = [
    "state.md",
    "resources.md",
    "collections.md",
    "flows.md",
    "targets.md",
    "sharing.md",
    "client-data.md",
    "storage.md",
    "security.md",
    "lifecycle.md",
]

FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


REPL_NOTE = "(`python -m asyncio`)"


def python_blocks(page: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer((DOCS / page).read_text())]


def compile_flags(page: str) -> int:
    """Top-level ``await`` only for pages that tell the reader to use the asyncio REPL."""
    return ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if REPL_NOTE in (DOCS / page).read_text() else 0


def test_pages_with_top_level_await_say_where_they_run() -> None:
    for page in sorted(p.name for p in DOCS.glob("*.md")):
        for number, source in enumerate(python_blocks(page), start=1):
            try:
                compile(source, f"{page} [python block {number}]", "exec")
            except SyntaxError as exc:
                if "outside" not in str(exc) or not compile_flags(page):
                    raise AssertionError(
                        f"{page} block {number} does not run as a script ({exc.msg}) and the "
                        f"page does not say it runs in the asyncio REPL {REPL_NOTE}"
                    ) from exc


def test_every_page_exists_and_has_examples() -> None:
    for page in PAGES:
        assert (DOCS / page).exists(), page
        assert python_blocks(page), f"{page} has no python examples"


@pytest.mark.parametrize("page", PAGES)
async def test_page_examples_run(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a sample that uses a relative SQLite path writes here
    name = f"flowstate_docs_{page.replace('.md', '').replace('-', '_')}"
    module = types.ModuleType(name)
    sys.modules[name] = module  # pydantic resolves annotations through the module
    namespace = module.__dict__
    try:
        for number, source in enumerate(python_blocks(page), start=1):
            code = compile(source, f"{page} [python block {number}]", "exec", compile_flags(page))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pages demonstrate warnings on purpose
                result = eval(code, namespace)
                if inspect.isawaitable(result):
                    await result
    finally:
        del sys.modules[name]
