"""Checked by mypy from tests/test_typing.py: declared state models type ``ctx``."""

from __future__ import annotations

from typing import Any, reveal_type

from pydantic import BaseModel

from flowstate import Context, handler, sequencer


class Counter(BaseModel):
    messageCount: int = 0


class Prefs(BaseModel):
    theme: str = "dark"


class Scratch(BaseModel):
    notes: list[str] = []


class Progress(BaseModel):
    progress: int = 0


@handler(name="counter", session_state=Counter)
async def counter(input: Any, ctx: Context[Counter]) -> Any:
    reveal_type(ctx.session.state)  # R1
    await ctx.session.inc_state(messageCount=1)
    return ctx.session.state.messageCount + 1


async def prefs_execute(input: Any, ctx: Context[Any, Prefs]) -> str:
    reveal_type(ctx.user.state)  # R2
    return ctx.user.state.theme


prefs = handler(name="prefs", user_state=Prefs, execute=prefs_execute)


@handler(name="own", state=Scratch)
async def own(input: Any, ctx: Context[Any, Any, Any, Any, Scratch]) -> Any:
    me = ctx.self
    if me is not None:
        reveal_type(me.state)  # R3
    target = ctx.get_target("research", Progress)
    if target is not None:
        reveal_type(target.state)  # R4
    return None


@handler(name="untyped")
async def untyped(input: Any, ctx: Context) -> Any:
    reveal_type(ctx.session.state)  # R5
    return ctx.project is None


pipeline = sequencer(name="chat").then(counter).then(prefs).then(own).then(untyped)
