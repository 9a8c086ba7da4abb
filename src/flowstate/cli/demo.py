"""The demo app behind ``flowstate demo``: flow-state.dev's counter, mode switch and artifacts.

One flow, ``demo``, shows each kind of state a client can watch: session counters and a mode
(scope state with ``derived`` client data), a user preference (exposed), an ``artifacts``
resource (state + text content) and a ``files/**`` collection capped at five instances with
LRU eviction. The session also holds ``private_note``, a field no client ever sees.

Serve it with ``flowstate demo`` or ``flowstate serve flowstate.cli.demo:create_server``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from ..access import Identity
from ..blocks import handler, sequencer
from ..flow import ClientConfig, Flow, ScopeConfig, define_flow
from ..http._auth import Authenticator
from ..resources import ResourceClient, define_resource, define_resource_collection
from ..runtime import Context
from ..server import FlowServer
from ..stores import Store

__all__ = ["FILES_CAP", "create_server", "demo_flow"]

FILES_CAP = 5

# ----------------------------------------------------------------------------------- state


class Counter(BaseModel):
    messageCount: int = 0
    private_note: str = ""  # written by "increment", never exposed


class Mode(BaseModel):
    mode: Literal["chat", "agent"] = "chat"


class Preferences(BaseModel):
    theme: Literal["light", "dark"] = "light"


class ArtifactMeta(BaseModel):
    title: str
    tags: list[str] = Field(default_factory=list)
    updatedAt: float = 0.0


class Artifacts(BaseModel):
    byId: dict[str, ArtifactMeta] = Field(default_factory=dict)
    order: list[str] = Field(default_factory=list)


class FileState(BaseModel):
    language: str = "text"
    size: int = 0


def _artifact_list(state: Artifacts) -> list[ArtifactSummary]:
    return [
        {"id": i, "title": state.byId[i].title, "tags": state.byId[i].tags}
        for i in state.order
        if i in state.byId
    ]


artifacts = define_resource(
    Artifacts,
    content="",
    client=ResourceClient(data=_artifact_list, content=True),
)
files = define_resource_collection(
    "files/**",
    FileState,
    max_instances=FILES_CAP,
    eviction="lru",
    client=ResourceClient(expose=["language", "size"], content=True),
)

# ----------------------------------------------------------------------------------- blocks


class IncrementInput(BaseModel):
    amount: int = 1
    note: str = ""


class ModeInput(BaseModel):
    mode: Literal["chat", "agent"]


class ThemeInput(BaseModel):
    theme: Literal["light", "dark"]


# ``examples`` are what the web page prefills an action's form with (they must succeed).
class ArtifactInput(BaseModel):
    id: str = Field(min_length=1, max_length=100, examples=["design-doc"])
    title: str = Field(examples=["Design doc"])
    content: str = Field(default="", examples=["# Design\n\n- keep state typed"])
    tags: list[str] = Field(default_factory=list, examples=[["draft"]])


class FileInput(BaseModel):
    path: str = Field(min_length=1, examples=["notes/todo.md"])
    content: str = Field(default="", examples=["- [ ] try the inspector"])
    language: str = Field(default="text", examples=["markdown"])


class ArtifactSummary(TypedDict):
    id: str
    title: str
    tags: list[str]


@handler(name="counter", input=IncrementInput, session_state=Counter)
async def increment(input: IncrementInput, ctx: Context) -> dict[str, Any]:
    """Add ``amount`` to the session's message count; keep ``note`` privately."""
    await ctx.session.inc_state(messageCount=input.amount)
    if input.note:
        await ctx.session.patch_state(private_note=input.note)
    return {"messageCount": ctx.session.state.messageCount}


@handler(name="mode-switch", input=ModeInput, session_state=Mode)
async def switch_mode(input: ModeInput, ctx: Context) -> dict[str, Any]:
    """Switch the session between chat and agent mode."""
    await ctx.session.patch_state(mode=input.mode)
    return {"mode": input.mode}


@handler(name="set-theme", input=ThemeInput, user_state=Preferences)
async def set_theme(input: ThemeInput, ctx: Context) -> dict[str, Any]:
    """Set the user's theme (user scope: every session of the user sees it)."""
    await ctx.user.patch_state(theme=input.theme)
    return {"theme": input.theme}


@handler(name="save-artifact", input=ArtifactInput, session_resources={"artifacts": artifacts})
async def save_artifact(input: ArtifactInput, ctx: Context) -> dict[str, Any]:
    """Save an artifact's metadata in the resource state and its text in the content."""
    ref = ctx.session.resources.artifacts
    meta = ArtifactMeta(title=input.title, tags=input.tags, updatedAt=time.time())
    order = ref.state.order if input.id in ref.state.order else [*ref.state.order, input.id]
    # State and content of one resource commit together.
    await ref.write_content(
        input.content, byId={**ref.state.model_dump()["byId"], input.id: meta}, order=order
    )
    return {"id": input.id, "artifacts": len(order)}


@handler(name="write-file", input=FileInput, session_resources={"files": files})
async def write_file(input: FileInput, ctx: Context) -> dict[str, Any]:
    """Write a file of the capped ``files/**`` collection (the least recently used goes)."""
    collection = ctx.session.resources.files
    ref = await collection.get_or_create(input.path, {"language": input.language})
    await ref.write_content(input.content, language=input.language, size=len(input.content))
    return {"key": ref.key, "count": await collection.count()}


# ----------------------------------------------------------------------------------- flow


def _file_list(view: Any) -> list[str]:
    return sorted(view.resources.get("files", {}))


# Derived client data with return annotations: `flowstate codegen ts` types them.
def _message_count(view: Any) -> int:
    return int(view.state.messageCount)


def _mode(view: Any) -> Literal["chat", "agent"]:
    mode: Literal["chat", "agent"] = view.state.mode
    return mode


def _artifacts(view: Any) -> list[ArtifactSummary]:
    return _artifact_list(view.resources["artifacts"])


@handler(name="summary")
async def summary(input: Any, ctx: Context) -> dict[str, Any]:
    """The pipeline's last step: report what the count step returned."""
    return {"summary": f"{input['messageCount']} messages so far", **input}


def demo_flow() -> Flow:
    """The ``demo`` flow (built fresh each call)."""
    return define_flow(
        "demo",
        {
            "increment": increment,
            "mode": switch_mode,
            "theme": set_theme,
            "save_artifact": save_artifact,
            "write_file": write_file,
            # A pipeline: its input is its first step's (IncrementInput).
            "count_and_report": sequencer("count-and-report").then(increment).then(summary),
        },
        session=ScopeConfig(
            resources={"artifacts": artifacts, "files": files},
            client=ClientConfig(
                derived={
                    "messageCount": _message_count,
                    "mode": _mode,
                    "artifactsList": _artifacts,
                    "files": _file_list,
                }
            ),
        ),
        user=ScopeConfig(client=ClientConfig(expose=["theme"])),
    )


def create_server(
    store: str | Store | None = None,
    auth: Mapping[str, str | Identity] | Authenticator | None = None,
) -> FlowServer:
    """A :class:`FlowServer` hosting the demo flow (``flowstate serve`` can call this)."""
    return FlowServer([demo_flow()], store=store, auth=auth)
