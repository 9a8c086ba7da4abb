"""The seeds' artifacts resource: documents with content and metadata in one typed container.

A ``save`` block writes each artifact with atomic record operations, so saving several in
parallel loses none. Clients see a derived ``artifactsList`` (ids and titles, no content) and
the resource's own client projection (a count); the document text never leaves the server
except through the action output.

Run: ``python examples/artifacts.py [STORE_URL]`` (default: a SQLite file in a temp dir).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flowstate import (
    ClientConfig,
    Context,
    FlowServer,
    ResourceClient,
    ScopeConfig,
    define_flow,
    define_resource,
    handler,
    sequencer,
)


class Artifact(BaseModel):
    title: str
    content: str  # the "file": document text
    tags: list[str] = Field(default_factory=list)
    updatedAt: float = 0


class Artifacts(BaseModel):
    byId: dict[str, Artifact] = Field(default_factory=dict)
    order: list[str] = Field(default_factory=list)


artifacts = define_resource(
    Artifacts, client=ResourceClient(data=lambda state: {"count": len(state.order)})
)


class Draft(BaseModel):
    id: str
    title: str
    content: str
    tags: list[str] = Field(default_factory=list)


@handler(name="save-artifact", input=Draft, session_resources={"artifacts": artifacts})
async def save(draft: Draft, ctx: Context) -> str:
    ref = ctx.session.resources.artifacts
    record = Artifact(
        title=draft.title, content=draft.content, tags=draft.tags, updatedAt=time.time()
    )
    # One atomic operation per field: concurrent saves of other ids never overwrite this one.
    await ref.set_state_record("byId", draft.id, record.model_dump())
    # Read-modify-write with compare-and-swap: re-run if another save changed the order.
    await ref.update_state(
        lambda current: {} if draft.id in current.order else {"order": [*current.order, draft.id]}
    )
    return draft.id


@handler(name="read-artifact", session_resources={"artifacts": artifacts})
async def read(artifact_id: str, ctx: Context) -> dict[str, Any] | None:
    doc = ctx.session.resources.artifacts.state.byId.get(artifact_id)
    return None if doc is None else {"title": doc.title, "content": doc.content}


def artifacts_list(view: Any) -> list[dict[str, str]]:
    state = view.resources["artifacts"]
    return [{"id": i, "title": state.byId[i].title} for i in state.order if i in state.byId]


flow = define_flow(
    "docs",
    actions={
        "save-many": sequencer(name="save-many").for_each(lambda drafts, ctx: drafts, save),
        "read": read,
    },
    session=ScopeConfig(client=ClientConfig(derived={"artifactsList": artifacts_list})),
)


async def run(store_url: str) -> dict[str, Any]:
    """Save three artifacts in parallel, update one, read it back; return what clients see."""
    drafts = [
        {"id": "design-doc", "title": "Design Doc", "content": "# Architecture", "tags": ["v1"]},
        {"id": "plan", "title": "Plan", "content": "1. build 2. test"},
        {"id": "notes", "title": "Notes", "content": "misc"},
    ]
    async with FlowServer([flow], store=store_url) as server:
        saved = await server.run("docs", "save-many", drafts, user_id="alice")
        sid = saved.session_id
        update = [
            {
                "id": "design-doc",
                "title": "Design Doc v2",
                "content": "# Architecture\n\nThe system is composed of...",
                "tags": ["architecture", "v2"],
            }
        ]
        await server.run("docs", "save-many", update, user_id="alice", session_id=sid)
        doc = await server.run("docs", "read", "design-doc", user_id="alice", session_id=sid)
        snapshot = await server.snapshot("docs", sid, user_id="alice")
    return {"saved": saved.output, "doc": doc.output, "snapshot": snapshot}


def main(store_url: str | None = None) -> dict[str, Any]:
    """Run the example and print what a client would see."""
    if store_url is None:
        store_url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'artifacts.db'}"
    result = asyncio.run(run(store_url))
    print(result["doc"])
    print(result["snapshot"]["clientData"], result["snapshot"]["resources"])
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
