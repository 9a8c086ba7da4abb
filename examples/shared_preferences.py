"""Two flows sharing a user's preferences, and a maintenance flow with isolated user state.

``chat`` and ``admin`` both declare the user schema ``Preferences`` (one model both import,
so the two declarations cannot drift apart), so they read and write the same user record: a theme set in chat
is what admin sees. ``maintenance`` sets ``isolate_user_state=True``: its ``lastRunAt`` lives
in its own record, invisible to the others, and its schema cannot clash with theirs.

Run: ``python examples/shared_preferences.py [STORE_URL]`` (default: a SQLite file in a temp
dir).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from flowstate import Context, FlowServer, define_flow, handler


class Preferences(BaseModel):
    theme: Literal["light", "dark"] = "dark"
    preferredModel: str = "gpt-5-mini"


class MaintenanceState(BaseModel):
    lastRunAt: float = 0
    runs: int = 0


@handler(name="set-theme", user_state=Preferences)
async def set_theme(theme: str, ctx: Context[Any, Preferences]) -> str:
    await ctx.user.patch_state(theme=theme)
    return ctx.user.state.theme


@handler(name="show-preferences", user_state=Preferences)
async def show_preferences(_input: Any, ctx: Context[Any, Preferences]) -> dict[str, Any]:
    return ctx.user.state.model_dump()


@handler(name="maintain", user_state=MaintenanceState)
async def maintain(_input: Any, ctx: Context[Any, MaintenanceState]) -> dict[str, Any]:
    await ctx.user.patch_state(lastRunAt=time.time())
    await ctx.user.inc_state(runs=1)
    return {"runs": ctx.user.state.runs, "sees": sorted(ctx.user.state.model_dump())}


chat = define_flow(
    "chat",
    actions={"set-theme": set_theme},
    user={"state": Preferences, "client": {"expose": ["theme"]}},
)
admin = define_flow("admin", actions={"show": show_preferences})
maintenance = define_flow("maintenance", actions={"run": maintain}, isolate_user_state=True)


async def run(store_url: str) -> dict[str, Any]:
    """Chat sets the theme, admin reads it, maintenance keeps its own user record."""
    async with FlowServer([chat, admin, maintenance], store=store_url) as server:
        await server.run("chat", "set-theme", "light", user_id="alice")
        seen_by_admin = (await server.run("admin", "show", None, user_id="alice")).output
        first = (await server.run("maintenance", "run", None, user_id="alice")).output
        second = (await server.run("maintenance", "run", None, user_id="alice")).output
        after = (await server.run("admin", "show", None, user_id="alice")).output
        bob = (await server.run("admin", "show", None, user_id="bob")).output
    return {
        "admin_sees": seen_by_admin,
        "maintenance": [first, second],
        "admin_after_maintenance": after,
        "other_user": bob,
    }


def main(store_url: str | None = None) -> dict[str, Any]:
    """Run the example and print what each flow saw."""
    if store_url is None:
        store_url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'shared.db'}"
    result = asyncio.run(run(store_url))
    for name, value in result.items():
        print(f"{name}: {value}")
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
