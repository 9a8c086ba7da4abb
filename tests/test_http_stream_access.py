"""Open event streams end once their caller may no longer read them (issue 9): a project left,
a token revoked, a session deleted. No event published after the loss reaches the old member.

Membership is whatever the authenticator says now: each stream authenticates its request again
before every event it passes on and every ``recheck_seconds`` while none comes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from flowstate import FlowServer, Identity
from flowstate.client import StreamingASGITransport
from flowstate.http import create_app

from .http_support import SECRET, Gate, lab_flow

SSE = {"Accept": "text/event-stream"}
BUMP = "/api/flows/lab/actions/bump"


class Members:
    """An auth callable whose memberships and tokens a test changes while streams are open."""

    def __init__(self) -> None:
        self.projects: dict[str, set[str]] = {"alice": {"p"}, "bob": {"p"}}
        self.revoked: set[str] = set()

    def __call__(self, request: Any) -> Identity | None:
        user = request.headers.get("x-user")
        if user is None or user in self.revoked:
            return None
        return Identity(user, frozenset(self.projects.get(user, ())))


@dataclass
class Env:
    http: httpx.AsyncClient
    members: Members
    gate: Gate
    server: FlowServer


def env_fixture(recheck: float) -> Any:
    @pytest.fixture
    async def fixture() -> AsyncIterator[Env]:
        members, gate = Members(), Gate()
        server = FlowServer([lab_flow(gate)], store="memory://", auth=members)
        app = create_app(server, recheck_seconds=recheck)
        transport = StreamingASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield Env(http, members, gate, server)
        gate.open()
        await server.aclose()

    return fixture


# Per-event checks only (the periodic check would come too late to matter here) ...
env = env_fixture(recheck=60.0)
# ... and the periodic check of an idle stream.
idle_env = env_fixture(recheck=0.1)


def as_(user: str) -> dict[str, str]:
    return {"x-user": user}


async def bump(e: Env, user: str, **body: Any) -> dict[str, Any]:
    response = await e.http.post(BUMP, json={"input": {}, **body}, headers=as_(user))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def next_data(lines: AsyncIterator[str], timeout: float = 5.0) -> dict[str, Any] | None:
    """The next event's data, or None when the stream ends first."""

    async def read() -> dict[str, Any] | None:
        async for line in lines:
            if line.startswith("data: "):
                data: dict[str, Any] = json.loads(line[6:])
                return data
        return None

    return await asyncio.wait_for(read(), timeout)


async def rest(lines: AsyncIterator[str], timeout: float = 5.0) -> list[str]:
    """Every line until the stream ends (a stream that stays open fails the test)."""

    async def read() -> list[str]:
        return [line async for line in lines]

    return await asyncio.wait_for(read(), timeout)


async def test_user_stream_ends_when_a_project_is_left(env: Env) -> None:
    path = "/api/flows/users/me/stream"
    async with env.http.stream(
        "GET", path, params={"projectId": "p"}, headers={**as_("alice"), **SSE}
    ) as stream:
        lines = stream.aiter_lines()
        assert await lines.__anext__() == ": subscribed"
        await bump(env, "bob", projectId="p")
        seen = await next_data(lines)
        assert seen is not None and (seen["scope"], seen["values"]) == ("project", {"hits": 1})
        env.members.projects["alice"] = set()  # alice leaves project p
        after = await bump(env, "bob", projectId="p", input={"secret": SECRET})
        left = await rest(lines)
    # The change bob made after alice left never reached her, nor anything of it.
    assert not [line for line in left if line.startswith("data: ")], left
    assert after["requestId"] not in "".join(left) and SECRET not in "".join(left)
    # Reconnecting says why: she is no longer a member.
    again = await env.http.get(path, params={"projectId": "p"}, headers={**as_("alice"), **SSE})
    assert (again.status_code, again.json()["error"]["code"]) == (404, "project_not_found")


async def test_session_stream_ends_when_its_project_is_left(env: Env) -> None:
    session = (await bump(env, "alice", projectId="p"))["sessionId"]
    path = f"/api/flows/sessions/{session}/stream"
    async with env.http.stream("GET", path, headers={**as_("alice"), **SSE}) as stream:
        lines = stream.aiter_lines()
        assert await lines.__anext__() == ": subscribed"
        await bump(env, "bob", projectId="p")  # reaches alice through the project topic
        seen = await next_data(lines)
        assert seen is not None and seen["scope"] == "project"
        env.members.projects["alice"] = set()
        await bump(env, "bob", projectId="p")
        left = await rest(lines)
    assert not [line for line in left if line.startswith("data: ")], left
    again = await env.http.get(path, headers={**as_("alice"), **SSE})
    assert (again.status_code, again.json()["error"]["code"]) == (404, "session_not_found")


async def test_session_stream_ends_when_the_session_is_deleted(env: Env) -> None:
    session = (await bump(env, "alice"))["sessionId"]
    other = (await bump(env, "alice"))["sessionId"]
    path = f"/api/flows/sessions/{session}/stream"
    async with env.http.stream("GET", path, headers={**as_("alice"), **SSE}) as stream:
        lines = stream.aiter_lines()
        assert await lines.__anext__() == ": subscribed"
        await bump(env, "alice", sessionId=other)  # a user-scope change: reaches this stream
        seen = await next_data(lines)
        assert seen is not None and (seen["scope"], seen["sessionId"]) == ("user", other)
        deleted = await env.http.delete(f"/api/flows/sessions/{session}", headers=as_("alice"))
        assert deleted.status_code == 200
        later = await bump(env, "alice", sessionId=other)  # published after the deletion
        left = await rest(lines)
    assert not [line for line in left if line.startswith("data: ")], left
    assert later["requestId"] not in "".join(left)


async def test_a_revoked_token_ends_every_stream(env: Env) -> None:
    async with env.http.stream(
        "GET", "/api/flows/users/me/stream", headers={**as_("alice"), **SSE}
    ) as stream:
        lines = stream.aiter_lines()
        assert await lines.__anext__() == ": subscribed"
        env.members.revoked.add("alice")
        # Her own user scope changes (an in-process run: her token no longer works).
        await env.server.run("lab", "bump", {}, user_id="alice")
        left = await rest(lines)
    assert not [line for line in left if line.startswith("data: ")], left


async def test_a_runs_stream_ends_when_its_project_is_left(env: Env) -> None:
    """The run goes on (it was allowed when it started); its events stop reaching alice."""
    async with env.http.stream(
        "POST",
        "/api/flows/lab/actions/slow",
        json={"input": None, "projectId": "p"},
        headers={**as_("alice"), **SSE},
    ) as stream:
        lines = stream.aiter_lines()
        created = await next_data(lines)
        assert created is not None and created["type"] == "request.created"
        assert created["projectId"] == "p"
        first = await next_data(lines)
        assert first is not None and first["type"] == "state_change"
        env.members.projects["alice"] = set()
        env.gate.open()  # the run writes again and completes
        left = await rest(lines)
    assert not [line for line in left if line.startswith("data: ")], left
    # The run itself completed; its stream, resumed, is not hers any more.
    resumed = await env.http.get(
        f"/api/flows/lab/requests/{created['requestId']}/stream", headers=as_("alice")
    )
    assert (resumed.status_code, resumed.json()["error"]["code"]) == (404, "request_not_found")
    env.members.projects["alice"] = {"p"}
    back = await env.http.get(
        f"/api/flows/lab/requests/{created['requestId']}/stream", headers=as_("alice")
    )
    types = [
        json.loads(line[6:])["type"] for line in back.text.splitlines() if line[:6] == "data: "
    ]
    assert types == ["request.created", "state_change", "state_change", "request.completed"]


async def test_an_idle_stream_ends_within_the_recheck_interval(idle_env: Env) -> None:
    """No event needs to come: the periodic check ends a stream nobody writes to."""
    session = (await bump(idle_env, "alice", projectId="p"))["sessionId"]
    streams = [
        ("/api/flows/users/me/stream", {"projectId": "p"}),
        (f"/api/flows/sessions/{session}/stream", {}),
    ]
    for path, params in streams:
        idle_env.members.projects["alice"] = {"p"}
        async with idle_env.http.stream(
            "GET", path, params=params, headers={**as_("alice"), **SSE}
        ) as stream:
            lines = stream.aiter_lines()
            assert await lines.__anext__() == ": subscribed"
            await asyncio.sleep(0.3)  # several checks pass while she is a member
            idle_env.members.projects["alice"] = set()
            started = asyncio.get_running_loop().time()
            assert not [line for line in await rest(lines, 5) if line.startswith("data: ")]
            assert asyncio.get_running_loop().time() - started < 3


def test_recheck_seconds_must_be_positive() -> None:
    server = FlowServer([lab_flow()], store="memory://", auth={"t": "u"})
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="recheck_seconds must be > 0"):
            create_app(server, recheck_seconds=bad)
