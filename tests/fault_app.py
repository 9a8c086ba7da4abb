"""The app the fault-injection suite serves with ``flowstate serve tests.fault_app:server``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel

from flowstate import ClientConfig, FlowServer, ScopeConfig, define_flow, handler


class Seen(BaseModel):
    seen: list[int] = []
    secret: str = ""


class Count(BaseModel):
    count: int = 0


class Write(BaseModel):
    n: int


async def write(input: Write, ctx: Any) -> int:
    """One acknowledged write: the value joins the session's list, the user's count grows."""
    await ctx.session.push_state("seen", input.n)
    await ctx.user.inc_state(count=1)
    return input.n


async def read(input: Any, ctx: Any) -> dict[str, Any]:
    return {"seen": list(ctx.session.state.seen), "count": ctx.user.state.count}


async def slow(input: Any, ctx: Any) -> str:
    """Writes, waits (the client deletes the session meanwhile), then writes again."""
    await ctx.session.patch_state(secret="alice-only")
    await asyncio.sleep(float(input or 1.0))
    await ctx.session.push_state("seen", 1)
    return "wrote after the wait"


flow = define_flow(
    "faults",
    actions={
        "write": handler(name="write", execute=write, input=Write),
        "read": handler(name="read", execute=read),
        "slow": handler(name="slow", execute=slow),
    },
    session=ScopeConfig(state=Seen, client=ClientConfig(expose=["seen"])),
    user=ScopeConfig(state=Count),
)

server = FlowServer([flow], store=os.environ.get("FLOWSTATE_STORE") or "memory://")
