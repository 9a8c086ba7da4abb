"""``GET /sessions/{id}/stream`` (live changes of one session, its user and project scopes, for
the TypeScript client's live sessions) and the client-data names in ``GET /api/flows``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from flowstate import FlowServer
from flowstate.client import StreamingASGITransport
from flowstate.http import create_app

from .http_support import ALICE, BOB, SECRET, TOKENS, lab_flow

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
async def app() -> AsyncIterator[Any]:
    server = FlowServer([lab_flow()], store="memory://", auth=TOKENS)
    yield create_app(server)
    await server.aclose()


async def frames(lines: AsyncIterator[str], n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for line in lines:
        if line.startswith("data: "):
            out.append(json.loads(line[6:]))
            if len(out) == n:
                break
    return out


async def test_flow_list_names_client_data_without_values(app: Any) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        flows = (await c.get("/api/flows", headers=ALICE)).json()["flows"]
    assert flows[0]["clientData"] == {
        "session": {"expose": ["count"], "derived": []},
        "user": {"expose": ["visits"], "derived": []},
        "project": {"expose": ["hits"], "derived": []},
    }


async def test_session_stream_carries_this_sessions_changes_only(app: Any) -> None:
    transport = StreamingASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        mine = (
            await c.post(
                "/api/flows/lab/actions/bump",
                json={"input": {"amount": 1}, "projectId": "p1"},
                headers=ALICE,
            )
        ).json()["sessionId"]
        other = (
            await c.post("/api/flows/lab/actions/bump", json={"input": {}}, headers=ALICE)
        ).json()["sessionId"]
        path = f"/api/flows/sessions/{mine}/stream"
        assert (await c.get(path, headers={**BOB, **SSE})).status_code == 404
        async with c.stream("GET", path, headers={**ALICE, **SSE}) as stream:
            lines = stream.aiter_lines()
            assert (await lines.__anext__()) == ": subscribed"
            # another session of alice: only its user-scope change reaches this stream
            await c.post(
                "/api/flows/lab/actions/bump",
                json={"input": {"amount": 5, "secret": SECRET}, "sessionId": other},
                headers=ALICE,
            )
            await c.post(
                "/api/flows/lab/actions/bump",
                json={"input": {"amount": 2}, "sessionId": mine},
                headers=ALICE,
            )
            got = await frames(lines, 5)
    assert SECRET not in json.dumps(got)
    by_session = [(f["sessionId"], f["scope"], f.get("values")) for f in got]
    # other session: user visits (+ secret field, no value); mine: session, user, project
    assert by_session[0] == (other, "user", {"visits": 3})
    assert by_session[1] == (other, "user", None)
    assert by_session[2:] == [
        (mine, "session", {"count": 3}),
        (mine, "user", {"visits": 4}),
        (mine, "project", {"hits": 2}),
    ]
