"""Shared by the HTTP, client, CLI and browser tests: a flow that exercises every HTTP path,
SSE parsing, and a uvicorn server on a free loopback port in a background thread."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from pydantic import BaseModel

from flowstate import (
    ClientConfig,
    ConcurrentModificationError,
    Context,
    Flow,
    Identity,
    ResourceClient,
    ScopeConfig,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
)

SECRET = "TOPSECRET-7f3a9c"
# alice and bob are members of project p1 (and of nothing else).
TOKENS = {
    "tok-alice": Identity("alice", frozenset({"p1"})),
    "tok-bob": Identity("bob", frozenset({"p1"})),
}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


class Gate:
    """Holds the ``slow`` action between its two writes until :meth:`open` (any thread)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def open(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        while not self._event.is_set():
            await asyncio.sleep(0.005)


class SessionState(BaseModel):
    count: int = 0
    secret: str = ""


class UserState(BaseModel):
    visits: int = 0
    user_secret: str = ""


class ProjectState(BaseModel):
    hits: int = 0
    project_secret: str = ""


class DocState(BaseModel):
    title: str = ""
    hidden: str = ""


class NoteState(BaseModel):
    title: str = ""
    secret: str = ""


class Address(BaseModel):
    city: str
    zip: str


class BumpInput(BaseModel):
    amount: int = 1
    secret: str = ""
    address: Address | None = None


class DocInput(BaseModel):
    title: str
    hidden: str = ""
    content: str = ""


class NoteInput(BaseModel):
    key: str
    title: str = ""
    body: str = ""
    secret: str = ""


doc = define_resource(
    DocState, content="initial text", client=ResourceClient(expose=["title"], content=True)
)
hidden = define_resource(DocState)
plain = define_resource(DocState, client=ResourceClient(expose=["title"]))
locked = define_resource(DocState, writable=False, client=ResourceClient(expose=["title"]))
notes = define_resource_collection(
    "notes/**", NoteState, client=ResourceClient(exclude=["secret"], content=True)
)


def lab_flow(gate: Gate | None = None) -> Flow:
    """The ``lab`` flow: counters, secrets in every scope, resources, and failing actions."""
    gate = gate or Gate()

    @handler(
        name="bump",
        input=BumpInput,
        session_state=SessionState,
        user_state=UserState,
        project_state=ProjectState,
    )
    async def bump(input: BumpInput, ctx: Context) -> dict[str, Any]:
        await ctx.session.inc_state(count=input.amount)
        await ctx.user.inc_state(visits=1)
        if ctx.project is not None:
            await ctx.project.inc_state(hits=1)
        if input.secret:
            await ctx.session.patch_state(secret=input.secret)
            await ctx.user.patch_state(user_secret=input.secret)
            if ctx.project is not None:
                await ctx.project.patch_state(project_secret=input.secret)
        return {"count": ctx.session.state.count}

    @handler(name="write-doc", input=DocInput)
    async def write_doc(input: DocInput, ctx: Context) -> dict[str, Any]:
        await ctx.session.resources.doc.write_content(
            input.content, title=input.title, hidden=input.hidden
        )
        await ctx.session.resources.hidden.patch_state(title=input.title, hidden=input.hidden)
        await ctx.session.resources.plain.patch_state(title=input.title, hidden=input.hidden)
        return {"title": input.title}

    @handler(name="add-note", input=NoteInput)
    async def add_note(input: NoteInput, ctx: Context) -> dict[str, Any]:
        ref = await ctx.session.resources.notes.create(
            input.key, {"title": input.title, "secret": input.secret}
        )
        await ref.write_content(input.body)
        return {"key": ref.key}

    @handler(name="touch-locked")
    async def touch_locked(input: Any, ctx: Context) -> None:
        await ctx.session.resources.locked.patch_state(title="nope")

    @handler(name="conflict")
    async def conflict(input: Any, ctx: Context) -> None:
        raise ConcurrentModificationError("session state: gave up after 3 attempts", attempts=3)

    @handler(name="boom", session_state=SessionState)
    async def boom(input: Any, ctx: Context) -> None:
        await ctx.session.inc_state(count=1)
        raise RuntimeError("kaboom")

    @handler(name="slow", session_state=SessionState)
    async def slow(input: Any, ctx: Context) -> str:
        await ctx.session.inc_state(count=1)
        await gate.wait()
        await ctx.session.inc_state(count=1)
        return "done"

    return define_flow(
        "lab",
        {
            "bump": bump,
            "write_doc": write_doc,
            "add_note": add_note,
            "touch_locked": touch_locked,
            "conflict": conflict,
            "boom": boom,
            "slow": slow,
        },
        session=ScopeConfig(
            resources={
                "doc": doc,
                "hidden": hidden,
                "plain": plain,
                "locked": locked,
                "notes": notes,
            },
            client=ClientConfig(expose=["count"]),
        ),
        user=ScopeConfig(client=ClientConfig(expose=["visits"])),
        project=ScopeConfig(client=ClientConfig(expose=["hits"])),
    )


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Raw SSE text → frames ``{"lines": [...], "id", "event", "data"}`` (comments dropped)."""
    frames = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        frames.append(
            {
                "lines": lines,
                "id": fields.get("id"),
                "event": fields.get("event"),
                "data": json.loads(fields["data"]),
            }
        )
    return frames


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
