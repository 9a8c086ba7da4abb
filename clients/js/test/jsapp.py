"""The server the JS client's tests run against (`flowstate serve jsapp:server`).

``counter`` exposes its fields (state_change events carry their values: the client merges
them), ``stats`` only has derived client data (the client must refetch), and both share the
user scope's ``theme``. ``doc`` is a resource with content, ``files/**`` a collection.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, Field

from flowstate import (
    ClientConfig,
    Context,
    FlowServer,
    ResourceClient,
    ScopeConfig,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
)


class Count(BaseModel):
    count: int = 0
    label: str = ""
    draft: str = ""  # never exposed


class Prefs(BaseModel):
    theme: Literal["light", "dark"] = "light"


class Doc(BaseModel):
    title: str = ""


class FileMeta(BaseModel):
    size: int = 0


class AddInput(BaseModel):
    amount: int = 1
    draft: str = ""


class AddOutput(BaseModel):
    count: int


class LabelInput(BaseModel):
    label: str = Field(min_length=1)


class SlowInput(BaseModel):
    steps: int = Field(default=3, ge=1, le=50)
    ms: int = Field(default=100, ge=0, le=2000)


class ThemeInput(BaseModel):
    theme: Literal["light", "dark"]


class DocInput(BaseModel):
    title: str
    text: str = ""


class FileInput(BaseModel):
    path: str
    text: str = ""


doc = define_resource(Doc, content="", client=ResourceClient(expose=["title"], content=True))
files = define_resource_collection(
    "files/**", FileMeta, client=ResourceClient(expose=["size"], content=True)
)


@handler(name="add", input=AddInput, output=AddOutput, session_state=Count)
async def add(input: AddInput, ctx: Context) -> AddOutput:
    """Add ``amount`` to the count (and keep a private draft)."""
    await ctx.session.inc_state(count=input.amount)
    if input.draft:
        await ctx.session.patch_state(draft=input.draft)
    return AddOutput(count=ctx.session.state.count)


@handler(name="label", input=LabelInput, session_state=Count)
async def label(input: LabelInput, ctx: Context) -> dict[str, Any]:
    await ctx.session.patch_state(label=input.label)
    return {"label": input.label}


@handler(name="slow", input=SlowInput, session_state=Count)
async def slow(input: SlowInput, ctx: Context) -> dict[str, Any]:
    """Count up one step at a time, ``ms`` apart (for streams that drop mid-run)."""
    for _ in range(input.steps):
        await asyncio.sleep(input.ms / 1000)
        await ctx.session.inc_state(count=1)
    return {"count": ctx.session.state.count}


@handler(name="theme", input=ThemeInput, user_state=Prefs)
async def theme(input: ThemeInput, ctx: Context) -> dict[str, Any]:
    await ctx.user.patch_state(theme=input.theme)
    return {"theme": input.theme}


@handler(name="doc", input=DocInput, session_resources={"doc": doc})
async def write_doc(input: DocInput, ctx: Context) -> None:
    await ctx.session.resources.doc.write_content(input.text, title=input.title)


@handler(name="file", input=FileInput, session_resources={"files": files})
async def write_file(input: FileInput, ctx: Context) -> dict[str, Any]:
    ref = await ctx.session.resources.files.get_or_create(input.path)
    await ref.write_content(input.text, size=len(input.text))
    return {"key": ref.key}


@handler(name="boom")
async def boom(input: Any, ctx: Context) -> None:
    raise RuntimeError("internal detail that must not reach clients")


counter = define_flow(
    "counter",
    {
        "add": add,
        "label": label,
        "slow": slow,
        "theme": theme,
        "doc": write_doc,
        "file": write_file,
        "boom": boom,
    },
    session=ScopeConfig(
        resources={"doc": doc, "files": files},
        client=ClientConfig(expose=["count", "label"]),
    ),
    user=ScopeConfig(client=ClientConfig(expose=["theme"])),
)

def _doubled(view: Any) -> int:
    return int(view.state.count) * 2


stats = define_flow(
    "stats",
    {"add": add, "theme": theme},
    session=ScopeConfig(
        client=ClientConfig(derived={"doubled": _doubled})
    ),
    user=ScopeConfig(client=ClientConfig(expose=["theme"])),
)

server = FlowServer([counter, stats], store="memory://")  # `serve --store` replaces it
