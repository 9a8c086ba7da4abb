"""Checked by mypy from tests/test_typing.py: a typo in a state field name is an error."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from flowstate import Context, handler


class Counter(BaseModel):
    messageCount: int = 0


@handler(name="counter", session_state=Counter)
async def counter(input: Any, ctx: Context[Counter]) -> Any:
    return ctx.session.state.mesageCount  # E1
