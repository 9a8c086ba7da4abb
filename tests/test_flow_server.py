"""FlowServer without HTTP: run, stream, snapshot, and sessions bound to user, kind and project."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel

from flowstate import (
    DefinitionError,
    Event,
    FlowServer,
    KeyPatternError,
    RunResult,
    SessionNotFoundError,
    StateValidationError,
    define_flow,
    handler,
    open_store,
)


class Count(BaseModel):
    n: int = 0


async def bump(input: Any, ctx: Any) -> Any:
    await ctx.session.inc_state(n=1)
    if input == "fail":
        raise RuntimeError("block failed")
    return {"n": ctx.session.state.n, "project": ctx.project_id, "user": ctx.user_id}


def counter_flow(kind: str = "chat") -> Any:
    return define_flow(
        kind,
        actions={"bump": handler(name="bump", session_state=Count, execute=bump)},
        session={"state": Count, "client": {"expose": ["n"]}},
    )


@pytest.fixture
async def server(store_url: str) -> Any:
    async with FlowServer([counter_flow("chat"), counter_flow("admin")], store=store_url) as srv:
        yield srv


async def test_run_without_session_id_creates_a_session(server: FlowServer) -> None:
    result = await server.run("chat", "bump", None, user_id="alice")
    assert isinstance(result, RunResult)
    assert result.output == {"n": 1, "project": None, "user": "alice"}
    assert result.session_id and result.request_id
    assert all(e.request_id == result.request_id for e in result.events)
    info = await server.get_session(result.session_id, user_id="alice")
    assert (info.user_id, info.flow_kind, info.project_id) == ("alice", "chat", None)
    again = await server.run("chat", "bump", None, user_id="alice", session_id=result.session_id)
    assert again.output["n"] == 2
    assert again.request_id != result.request_id
    fresh = await server.run("chat", "bump", None, user_id="alice")
    assert fresh.session_id != result.session_id and fresh.output["n"] == 1


async def test_a_session_belongs_to_one_user_one_kind_and_one_project(server: FlowServer) -> None:
    first = await server.run("chat", "bump", None, user_id="alice", project_id="p1")
    sid = first.session_id
    with pytest.raises(SessionNotFoundError, match=f'session "{sid}" not found'):
        await server.run("chat", "bump", None, user_id="bob", session_id=sid)
    with pytest.raises(SessionNotFoundError):
        await server.run("admin", "bump", None, user_id="alice", session_id=sid)
    with pytest.raises(SessionNotFoundError):
        await server.run("chat", "bump", None, user_id="alice", session_id=sid, project_id="p2")
    # later runs without a project id use the session's binding
    later = await server.run("chat", "bump", None, user_id="alice", session_id=sid)
    assert later.output == {"n": 2, "project": "p1", "user": "alice"}
    with pytest.raises(SessionNotFoundError):
        await server.snapshot("chat", sid, user_id="bob")
    with pytest.raises(SessionNotFoundError):
        await server.snapshot("admin", sid, user_id="alice")
    with pytest.raises(SessionNotFoundError):
        await server.get_session(sid, user_id="bob")
    # nothing was written for the rejected runs
    snap = await server.snapshot("chat", sid, user_id="alice")
    assert snap["clientData"] == {"session": {"n": 2}}


async def test_a_given_unknown_session_id_is_created_and_bound(server: FlowServer) -> None:
    result = await server.run("chat", "bump", None, user_id="alice", session_id="my-session")
    assert result.session_id == "my-session"
    with pytest.raises(SessionNotFoundError):
        await server.run("chat", "bump", None, user_id="bob", session_id="my-session")


async def test_session_management(server: FlowServer) -> None:
    info = await server.create_session("chat", user_id="alice", project_id="p")
    assert info.flow_kind == "chat" and info.project_id == "p"
    assert info.to_wire()["sessionId"] == info.session_id
    other = await server.create_session("admin", user_id="alice")
    await server.create_session("chat", user_id="bob")
    listed = await server.list_sessions(user_id="alice")
    assert {s.session_id for s in listed} == {info.session_id, other.session_id}
    chats = await server.list_sessions(user_id="alice", kind="chat")
    assert [s.session_id for s in chats] == [info.session_id]
    run = await server.run("chat", "bump", None, user_id="alice", session_id=info.session_id)
    assert run.output["project"] == "p"
    with pytest.raises(SessionNotFoundError):
        await server.delete_session(info.session_id, user_id="bob")
    assert await server.delete_session(info.session_id, user_id="alice") is True
    with pytest.raises(SessionNotFoundError):
        await server.get_session(info.session_id, user_id="alice")
    assert await server.store.read(f"session/{info.session_id}/state") is None
    assert [s.session_id for s in await server.list_sessions(user_id="alice")] == [other.session_id]


async def test_bad_ids_are_rejected(server: FlowServer) -> None:
    with pytest.raises(KeyPatternError, match="user_id must be a non-empty string"):
        await server.run("chat", "bump", None, user_id="")
    with pytest.raises(KeyPatternError, match="control characters"):
        await server.run("chat", "bump", None, user_id="a\nb")


async def test_stream_yields_the_same_events_live(server: FlowServer) -> None:
    streamed: list[Event] = [e async for e in server.stream("chat", "bump", None, user_id="al")]
    assert [e.type for e in streamed] == ["request.created", "state_change", "request.completed"]
    assert [e.seq for e in streamed] == [1, 2, 3]
    assert streamed[-1].data == {"output": {"n": 1, "project": None, "user": "al"}}
    sid = streamed[0].data["sessionId"]
    ran = await server.run("chat", "bump", None, user_id="al", session_id=sid)
    assert [e.type for e in ran.events] == [e.type for e in streamed]


async def test_stream_of_a_failing_run_ends_with_request_failed(server: FlowServer) -> None:
    events = [e async for e in server.stream("chat", "bump", "fail", user_id="al")]
    assert [e.type for e in events] == ["request.created", "state_change", "request.failed"]
    # In-process code is trusted: it reads the detail after the error id clients get.
    error = events[-1].data["error"]
    assert error["code"] == "internal_error"
    assert re.fullmatch(r"internal error \(id [0-9a-f]{6}\): block failed", error["message"])
    public = events[-1].to_wire()["error"]
    assert public == {"code": "internal_error", "message": error["message"].split(":")[0]}


async def test_run_reraises_after_recording_the_failure(server: FlowServer) -> None:
    seen: list[Event] = []

    async def collect(event: Event) -> None:
        seen.append(event)

    with pytest.raises(RuntimeError, match="block failed"):
        await server.run("chat", "bump", "fail", user_id="al", on_event=collect)
    assert seen[-1].type == "request.failed"


async def test_validation_failure_is_reported_with_its_code(server: FlowServer) -> None:
    async def bad(input: Any, ctx: Any) -> Any:
        await ctx.session.patch_state(n="many")

    flow = define_flow("bad", actions={"go": handler(name="b", session_state=Count, execute=bad)})
    async with FlowServer([flow], store="memory://") as srv:
        events = [e async for e in srv.stream("bad", "go", None, user_id="u")]
    assert events[-1].type == "request.failed"
    assert events[-1].data["error"]["code"] == "validation_error"
    assert 'field "n"' in events[-1].data["error"]["message"]
    with pytest.raises(StateValidationError):
        async with FlowServer([flow], store="memory://") as srv:
            await srv.run("bad", "go", None, user_id="u")


async def test_server_keeps_a_store_it_was_given_open(store_url: str) -> None:
    store = open_store(store_url)
    async with FlowServer([counter_flow()], store=store) as server:
        result = await server.run("chat", "bump", None, user_id="u", session_id="s")
    async with FlowServer([counter_flow()], store=store) as server:
        result = await server.run("chat", "bump", None, user_id="u", session_id="s")
    assert result.output["n"] == 2
    await store.aclose()


def test_server_definition_errors() -> None:
    with pytest.raises(DefinitionError, match='two flows have the kind "chat"'):
        FlowServer([counter_flow(), counter_flow()], store="memory://")
    with pytest.raises(DefinitionError, match="takes flows built by define_flow"):
        FlowServer(["chat"], store="memory://")  # type: ignore[list-item]
