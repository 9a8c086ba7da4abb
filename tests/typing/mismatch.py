"""Checked by mypy from tests/test_typing.py: ``ctx`` must match the declared state model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from flowstate import Context, handler


class Counter(BaseModel):
    messageCount: int = 0


class Mode(BaseModel):
    mode: str = "chat"


@handler(name="counter", session_state=Counter)  # E2
async def counter(input: Any, ctx: Context[Mode]) -> Any:
    return ctx.session.state.mode


async def execute(input: Any, ctx: Context[Mode]) -> Any:
    return None


typed = handler(name="fn", session_state=Counter, execute=execute)  # E3
