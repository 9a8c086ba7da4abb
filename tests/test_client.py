"""The Python clients in-process (AsyncClient(app=...), Client(app=...)): calls, errors,
streams, resume, and the live snapshot helper."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from flowstate import (
    ActionNotFoundError,
    AuthError,
    ConcurrentModificationError,
    Event,
    FlowServer,
    ProjectNotFoundError,
    ResourceAlreadyExistsError,
    ResourceReadOnlyError,
    SessionNotFoundError,
    StateValidationError,
)
from flowstate.client import (
    AsyncClient,
    Client,
    RemoteError,
    SSEDecoder,
    StreamingASGITransport,
    error_from_wire,
)
from flowstate.http import create_app

from .http_support import TOKENS, Gate, lab_flow


@pytest.fixture
async def server() -> AsyncIterator[FlowServer]:
    server = FlowServer([lab_flow()], store="memory://", auth=TOKENS)
    yield server
    await server.aclose()


@pytest.fixture
async def alice(server: FlowServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(app=create_app(server, max_body_bytes=500), token="tok-alice") as c:
        yield c


async def test_run_sessions_snapshot_and_resources(alice: AsyncClient) -> None:
    result = await alice.run("lab", "bump", {"amount": 2}, project_id="p1")
    assert result.output == {"count": 2} and result.events == []
    info = await alice.get_session(result.session_id)
    assert (info.user_id, info.flow_kind, info.project_id) == ("alice", "lab", "p1")
    snapshot = await alice.snapshot(result.session_id)
    assert snapshot["clientData"] == {
        "session": {"count": 2},
        "user": {"visits": 1},
        "project": {"hits": 1},
    }
    created = await alice.create_session("lab", session_id="mine")
    assert created.session_id == "mine" and created.project_id is None
    assert {s.session_id for s in await alice.list_sessions("lab")} == {
        result.session_id,
        "mine",
    }
    await alice.run("lab", "write_doc", {"title": "T", "content": "body"}, session_id="mine")
    await alice.run("lab", "add_note", {"key": "a.md", "body": "A"}, session_id="mine")
    assert await alice.resource_content("mine", "doc") == "body"
    assert await alice.resource_content("mine", "notes", key="a.md") == "A"
    page = await alice.resource_items("mine", "notes", limit=1)
    assert page["count"] == 1 and page["items"][0]["key"] == "notes/a.md"
    assert page["next"] is None
    flows = await alice.flows()
    assert [f["kind"] for f in flows] == ["lab"]
    assert await alice.delete_session("mine") is True
    with pytest.raises(SessionNotFoundError):
        await alice.get_session("mine")


@pytest.mark.parametrize(
    ("action", "input", "error", "status"),
    [
        ("bump", {"amount": "x"}, StateValidationError, 422),
        ("touch_locked", None, ResourceReadOnlyError, 403),
        ("conflict", None, ConcurrentModificationError, 409),
        ("nope", None, ActionNotFoundError, 404),
    ],
)
async def test_errors_come_back_as_flowstate_exceptions(
    alice: AsyncClient, action: str, input: Any, error: type[Exception], status: int
) -> None:
    with pytest.raises(error) as raised:
        await alice.run("lab", action, input)
    exc = raised.value
    assert type(exc) is error
    assert getattr(exc, "status_code", None) == status
    if action != "nope":
        assert isinstance(getattr(exc, "request_id", None), str)
        assert isinstance(getattr(exc, "session_id", None), str)
    if error is StateValidationError:
        assert isinstance(exc, StateValidationError)
        assert exc.errors[0]["loc"] == ["input", "amount"]
        assert 'field "input.amount"' in str(exc)


async def test_other_errors(alice: AsyncClient, server: FlowServer) -> None:
    session = (await alice.run("lab", "add_note", {"key": "a.md"})).session_id
    with pytest.raises(ResourceAlreadyExistsError, match=r"\"notes/a\.md\" already exists"):
        await alice.run("lab", "add_note", {"key": "a.md"}, session_id=session)
    with pytest.raises(RemoteError) as boom:
        await alice.run("lab", "boom", None)
    assert (boom.value.code, getattr(boom.value, "status_code", None)) == ("internal_error", 500)
    assert re.fullmatch(r"internal error \(id [0-9a-f]{6}\)", boom.value.message)
    assert "kaboom" not in str(boom.value)
    with pytest.raises(RemoteError) as too_big:
        await alice.run("lab", "bump", {"secret": "x" * 1000})
    assert too_big.value.code == "payload_too_large"
    async with AsyncClient(app=create_app(server), token="nope") as stranger:
        with pytest.raises(AuthError):
            await stranger.snapshot(session)


def test_error_from_wire_keeps_code_and_details() -> None:
    exc = error_from_wire(
        {"code": "validation_error", "message": "bad", "details": [{"loc": ["x"]}]},
        status_code=422,
        request_id="r",
    )
    assert isinstance(exc, StateValidationError) and exc.errors == [{"loc": ["x"]}]
    assert (exc.code, getattr(exc, "request_id", None)) == ("validation_error", "r")
    unknown = error_from_wire({"code": "teapot", "message": "short and stout"})
    assert isinstance(unknown, RemoteError) and unknown.code == "teapot"
    assert str(unknown) == "short and stout"


def test_sse_decoder() -> None:
    decoder = SSEDecoder()
    lines = [": ping", "id: r:1", "event: a", "data: {", "data: }", "", "", "data: x", ""]
    frames = [f for f in map(decoder.feed, lines) if f is not None]
    assert frames == [
        {"event": "a", "data": "{\n}", "id": "r:1"},
        {"event": "message", "data": "x", "id": "r:1"},  # the last id carries over
    ]


async def test_stream_yields_events_and_ends_with_the_failure(
    alice: AsyncClient, server: FlowServer
) -> None:
    events = [e async for e in alice.stream("lab", "bump", {"amount": 3})]
    assert [e.type for e in events] == [
        "request.created",
        "state_change",
        "state_change",
        "request.completed",
    ]
    assert isinstance(events[0], Event) and events[0].data["flowKind"] == "lab"
    assert events[-1].data == {"output": {"count": 3}}
    failed = [e async for e in alice.stream("lab", "boom", None)]
    assert failed[-1].type == "request.failed"
    assert failed[-1].data["error"]["code"] == "internal_error"
    assert re.fullmatch(r"internal error \(id [0-9a-f]{6}\)", failed[-1].data["error"]["message"])
    await server.create_session("lab", user_id="bob", session_id="bobs")
    with pytest.raises(SessionNotFoundError):  # refused before the run: raised, not streamed
        async for _ in alice.stream("lab", "bump", {}, session_id="bobs"):
            pass
    with pytest.raises(StateValidationError, match='must not contain "/"'):
        async for _ in alice.stream("lab", "bump", {}, session_id="a/b"):
            pass


async def test_follow_replays_from_an_event_id(alice: AsyncClient) -> None:
    events = [e async for e in alice.stream("lab", "bump", {})]
    rid = events[0].request_id
    replay = [e async for e in alice.follow("lab", rid, last_event_id=f"{rid}:2")]
    assert [e.seq for e in replay] == [3, 4]
    assert replay == events[2:]


class CutStream(httpx.AsyncBaseTransport):
    """Drops the connection of action streams after their first chunk."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.cuts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "POST" or request.headers.get("accept") != "text/event-stream":
            return response
        outer = self

        class Cut(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in response.stream:  # type: ignore[union-attr]
                    yield chunk
                    outer.cuts += 1
                    raise httpx.ReadError("connection lost")

            async def aclose(self) -> None:
                await response.aclose()

        return httpx.Response(response.status_code, headers=response.headers, stream=Cut())


async def test_stream_resumes_after_a_lost_connection() -> None:
    gate = Gate()
    gate.open()
    server = FlowServer([lab_flow(gate)], store="memory://", auth=TOKENS)
    transport = CutStream(StreamingASGITransport(create_app(server)))
    async with AsyncClient(token="tok-alice", transport=transport) as client:
        events = [e async for e in client.stream("lab", "slow", None)]
    assert transport.cuts == 1
    assert [e.seq for e in events] == [1, 2, 3, 4]  # nothing lost, nothing repeated
    assert events[-1].data == {"output": "done"}
    await server.aclose()


async def test_live_session_refetches_on_request_completed(
    alice: AsyncClient, server: FlowServer
) -> None:
    live = alice.live("lab")
    seen: list[str] = []

    async def on_event(event: Event) -> None:
        await asyncio.sleep(0)
        seen.append(event.type)

    assert await live.run("bump", {"amount": 2}, on_event=on_event) == {"count": 2}
    assert live.session_id is not None and not live.stale
    assert live.client_data["session"] == {"count": 2}
    assert seen == [e.type for e in live.events] and seen[-1] == "request.completed"
    await live.run("bump", {"amount": 1}, on_event=lambda e: seen.append(e.type))
    assert live.client_data["session"] == {"count": 3}
    assert live.snapshot == await server.snapshot("lab", live.session_id, user_id="alice")
    with pytest.raises(RemoteError, match=r"internal error \(id "):
        await live.run("boom")
    assert live.client_data["session"] == {"count": 4}  # boom's committed write shows
    with pytest.raises(ValueError, match="no session yet"):
        await alice.live("lab").refresh()


async def test_user_events_in_process(alice: AsyncClient) -> None:
    async with alice.user_events() as events:
        result = await alice.run("lab", "bump", {})
        event = await asyncio.wait_for(anext(events), 5)
    assert (event.type, event.request_id, event.data["scope"]) == (
        "state_change",
        result.request_id,
        "user",
    )
    await alice.run("lab", "bump", {}, project_id="p1")
    async with alice.user_events(["p1"]) as events:
        await alice.run("lab", "bump", {}, project_id="p1")
        scopes = {(await asyncio.wait_for(anext(events), 5)).data["scope"] for _ in range(2)}
    assert scopes == {"user", "project"}
    with pytest.raises(ProjectNotFoundError) as refused:
        async with alice.user_events(["elsewhere"]):
            pass
    assert refused.value.code == "project_not_found"


def test_sync_client_in_process() -> None:
    server = FlowServer([lab_flow()], store="memory://", auth=TOKENS)
    with Client(app=create_app(server), token="tok-alice") as client:
        result = client.run("lab", "bump", {"amount": 4})
        assert result.output == {"count": 4}
        events = list(client.stream("lab", "bump", {}, session_id=result.session_id))
        assert events[-1].data["output"] == {"count": 5}
        replay = list(client.follow("lab", events[0].request_id))
        assert replay == events
        with client.user_events() as live_events:
            client.run("lab", "bump", {})
            assert next(live_events).data["scope"] == "user"
        live = client.live("lab", result.session_id)
        live.run("bump", {"amount": 10})
        assert live.client_data["session"] == {"count": 15}
        assert live.refresh()["sessionId"] == result.session_id
        sessions = [s.session_id for s in client.list_sessions()]
        assert len(sessions) == 2 and result.session_id in sessions
        with pytest.raises(StateValidationError):
            client.run("lab", "bump", {"amount": "many"})
    client.close()  # idempotent
