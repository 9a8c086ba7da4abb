"""Every ```python block of the capability pages in docs/ runs, page by page, in order.

The blocks of one page share one namespace (a page reads like one script); top-level
``await`` is allowed. A block that raises fails the test with the page and block number.
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
]

FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer((DOCS / page).read_text())]


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
            code = compile(
                source, f"{page} [python block {number}]", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pages demonstrate warnings on purpose
                result = eval(code, namespace)
                if inspect.isawaitable(result):
                    await result
    finally:
        del sys.modules[name]
