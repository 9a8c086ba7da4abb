"""The seeds' pipeline: a counter block and a mode-switch block, each bringing its own state.

Neither block knows the other; ``define_flow`` bubbles their partial session schemas into one
combined schema ``{messageCount, mode}``. The client sees ``mode`` verbatim and a derived
``summary``; raw state stays on the server.

Run: ``python examples/counter_mode.py [STORE_URL]`` (default: a SQLite file in a temp dir).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from flowstate import (
    ClientConfig,
    Context,
    FlowServer,
    ScopeConfig,
    define_flow,
    handler,
    sequencer,
)


class Counter(BaseModel):
    messageCount: int = 0


class Mode(BaseModel):
    mode: Literal["chat", "agent"] = "chat"


@handler(name="counter", session_state=Counter)
async def counter(input: Any, ctx: Context[Counter]) -> Any:
    await ctx.session.inc_state(messageCount=1)
    return input


@handler(name="mode-switch", session_state=Mode)
async def mode_switch(input: Any, ctx: Context[Mode]) -> Any:
    if "/agent" in str(input):
        await ctx.session.patch_state(mode="agent")
    return input


@handler(name="agent")
async def agent(input: Any, ctx: Context) -> Any:
    # This block declares no session state, so it sees the combined model.
    state = ctx.session.state
    return f"[{state.mode} #{state.messageCount}] {input}"


chat_flow = define_flow(
    "my-app",
    actions={"send": sequencer(name="chat").then(counter).then(mode_switch).then(agent)},
    session=ScopeConfig(
        client=ClientConfig(
            expose=["mode"],
            derived={"summary": lambda view: f"{view.state.messageCount} messages"},
        )
    ),
)


async def run(store_url: str) -> dict[str, Any]:
    """Send three messages in one session; return the outputs and the client snapshot."""
    async with FlowServer([chat_flow], store=store_url) as server:
        first = await server.run("my-app", "send", "hello", user_id="alice")
        sid = first.session_id
        second = await server.run("my-app", "send", "/agent plan", user_id="alice", session_id=sid)
        third = await server.run("my-app", "send", "go", user_id="alice", session_id=sid)
        snapshot = await server.snapshot("my-app", sid, user_id="alice")
    return {
        "outputs": [first.output, second.output, third.output],
        "snapshot": snapshot,
        "events": [e.type for e in third.events],
    }


def main(store_url: str | None = None) -> dict[str, Any]:
    """Run the example and print what a client would see."""
    if store_url is None:
        store_url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'counter.db'}"
    result = asyncio.run(run(store_url))
    for line in result["outputs"]:
        print(line)
    print(result["snapshot"]["clientData"])
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
