"""A ``files/**`` collection managed by one block, capped at three files with LRU eviction.

The ``workspace`` block owns the collection (declared on the block, so it bubbles into any
flow that uses it). Writing a fourth file evicts the least recently *accessed* one; reading a
file counts as an access, across requests. Clients see each file's size, never its text.

Run: ``python examples/files_lru.py [STORE_URL]`` (default: a SQLite file in a temp dir).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from flowstate import (
    Context,
    FlowServer,
    HookContext,
    ResourceClient,
    define_flow,
    define_resource_collection,
    handler,
)

evicted: list[str] = []


def on_deleted(key: str, hook_ctx: HookContext) -> None:
    """Called after a delete (or an eviction) commits."""
    evicted.append(key)
    hook_ctx.log(f"removed {key}")


class FileMeta(BaseModel):
    size: int = 0
    language: str = "text"


files = define_resource_collection(
    "files/**",
    FileMeta,
    max_instances=3,
    eviction="lru",
    on_instance_deleted=on_deleted,
    client=ResourceClient(expose=["size"]),
)


class FileOp(BaseModel):
    op: Literal["write", "read", "list"]
    path: str = ""
    text: str = ""


@handler(name="workspace", input=FileOp, session_resources={"files": files})
async def workspace(cmd: FileOp, ctx: Context) -> Any:
    coll = ctx.session.resources.files
    if cmd.op == "write":
        language = "python" if cmd.path.endswith(".py") else "text"
        ref = await coll.upsert(cmd.path, {"size": len(cmd.text), "language": language})
        await ref.write_content(cmd.text)
        return ref.key
    if cmd.op == "read":
        ref = await coll.get(cmd.path)  # an access: this file is now the most recent
        return await ref.read_content()
    return await coll.list()


flow = define_flow("workspace", actions={"fs": workspace})


async def run(store_url: str) -> dict[str, Any]:
    """Write three files, read the first, write a fourth: the second is evicted."""
    evicted.clear()
    async with FlowServer([flow], store=store_url) as server:
        sid = (await server.create_session("workspace", user_id="dev")).session_id

        async def fs(**cmd: Any) -> Any:
            result = await server.run("workspace", "fs", cmd, user_id="dev", session_id=sid)
            return result.output

        await fs(op="write", path="src/a.py", text="print('a')")
        await fs(op="write", path="src/b.py", text="print('b')")
        await fs(op="write", path="README.md", text="# demo")
        first = await fs(op="read", path="src/a.py")
        await fs(op="write", path="src/deep/c.py", text="print('c')")
        listing = await fs(op="list")
        snapshot = await server.snapshot("workspace", sid, user_id="dev")
    return {"read": first, "files": listing, "evicted": list(evicted), "snapshot": snapshot}


def main(store_url: str | None = None) -> dict[str, Any]:
    """Run the example and print the surviving files."""
    if store_url is None:
        store_url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'files.db'}"
    result = asyncio.run(run(store_url))
    print("files:", result["files"], "evicted:", result["evicted"])
    print(result["snapshot"]["resources"])
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
