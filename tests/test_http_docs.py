"""docs/http.md runs as written: its python blocks, in order, as one script."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

from tests.test_docs import compile_flags

PAGE = Path(__file__).resolve().parent.parent / "docs" / "http.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


async def test_http_page_examples_run() -> None:
    blocks = [m.group(1) for m in FENCE.finditer(PAGE.read_text(encoding="utf-8"))]
    assert len(blocks) >= 4
    module = types.ModuleType("flowstate_docs_http")
    sys.modules[module.__name__] = module  # pydantic resolves annotations through it
    try:
        for number, source in enumerate(blocks, start=1):
            where = f"http.md [python block {number}]"
            code = compile(source, where, "exec", compile_flags(PAGE.name))
            result = eval(code, module.__dict__)
            if inspect.isawaitable(result):
                await result
        await module.__dict__["server"].aclose()
    finally:
        del sys.modules[module.__name__]
