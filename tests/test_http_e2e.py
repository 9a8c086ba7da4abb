"""The HTTP API over a real loopback socket (uvicorn in a background thread)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flowstate import AuthError, FlowServer, SessionNotFoundError
from flowstate.client import AsyncClient, Client
from flowstate.http import create_app

from .http_support import ALICE, SECRET, TOKENS, Gate, lab_flow, parse_sse, serve_in_thread


class Served:
    def __init__(self, url: str, gate: Gate) -> None:
        self.url = url
        self.gate = gate


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    gate = Gate()
    server = FlowServer([lab_flow(gate)], store=f"sqlite:///{tmp_path / 'e2e.db'}", auth=TOKENS)
    app = create_app(server, max_body_bytes=4096, close_server=True)
    with serve_in_thread(app) as url:
        yield Served(url, gate)
        gate.open()


def test_client_over_a_socket(served: Served) -> None:
    with Client(served.url, token="tok-alice") as client:
        result = client.run("lab", "bump", {"amount": 2, "secret": SECRET})
        assert result.output == {"count": 2}
        events = list(client.stream("lab", "bump", {"amount": 1}, session_id=result.session_id))
        assert events[0].type == "request.created"
        assert events[-1].type == "request.completed" and events[-1].data["output"] == {"count": 3}
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        snapshot = client.snapshot(result.session_id)
        assert snapshot["clientData"]["session"] == {"count": 3}
        assert SECRET not in repr(snapshot)
    with Client(served.url, token="tok-bob") as bob:
        with pytest.raises(SessionNotFoundError) as not_found:
            bob.snapshot(result.session_id)
        assert getattr(not_found.value, "status_code", None) == 404
    with Client(served.url, token="wrong") as stranger:
        with pytest.raises(AuthError, match="bearer token") as refused:
            stranger.list_sessions()
        assert getattr(refused.value, "status_code", None) == 401


def test_sse_bytes_on_the_wire(served: Served) -> None:
    response = httpx.post(
        f"{served.url}/api/flows/lab/actions/bump",
        json={"input": {"amount": 1}},
        headers={**ALICE, "Accept": "text/event-stream"},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = parse_sse(response.text)
    request_id = frames[0]["data"]["requestId"]
    first = response.text.replace("\r\n", "\n").split("\n\n")[0]
    assert first.startswith(f"id: {request_id}:1\nevent: request.created\ndata: {{")
    assert [f["event"] for f in frames][-1] == "request.completed"


def test_run_survives_a_dropped_connection_and_the_stream_resumes(served: Served) -> None:
    with httpx.Client(base_url=served.url, headers=ALICE) as http:
        with http.stream(
            "POST",
            "/api/flows/lab/actions/slow",
            json={"input": None},
            headers={"Accept": "text/event-stream"},
        ) as response:
            lines: list[str] = []
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith("event: state_change"):
                    break
        # The connection is closed here, mid-run.
        request_id = lines[0].split(": ", 1)[1].rsplit(":", 1)[0]
        served.gate.open()
        resumed = http.get(
            f"/api/flows/lab/requests/{request_id}/stream",
            headers={"Last-Event-ID": f"{request_id}:2"},
        )
        frames = parse_sse(resumed.text)
        assert [f["data"]["seq"] for f in frames] == [3, 4]
        assert frames[-1]["data"]["output"] == "done"
        session = http.get("/api/flows/sessions").json()["sessions"][0]["sessionId"]
        state = http.get(f"/api/flows/sessions/{session}/state").json()
        assert state["clientData"]["session"] == {"count": 2}  # the run finished anyway


async def test_user_stream_over_a_socket(served: Served) -> None:
    async with (
        AsyncClient(served.url, token="tok-alice") as alice,
        AsyncClient(served.url, token="tok-bob") as bob,
    ):
        first = await alice.run("lab", "bump", {})
        async with alice.user_events() as events:
            await bob.run("lab", "bump", {})
            other = await alice.run("lab", "bump", {"amount": 5})
            event = await asyncio.wait_for(anext(events), 5)
        assert other.session_id != first.session_id
        assert event.type == "state_change"
        assert event.request_id == other.request_id
        assert event.data["scope"] == "user"
        assert event.data["sessionId"] == other.session_id
        assert event.data["values"] == {"visits": 2}  # alice's second visit; bob's is not here


def test_body_limit_over_a_socket(served: Served) -> None:
    big = {"input": {"secret": "x" * 5000}}
    response = httpx.post(f"{served.url}/api/flows/lab/actions/bump", json=big, headers=ALICE)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"input": {"secret": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}}'

    streamed = httpx.post(
        f"{served.url}/api/flows/lab/actions/bump", content=chunks(), headers=ALICE
    )
    assert streamed.status_code == 413
    with Client(served.url, token="tok-alice") as client:
        assert client.list_sessions() == []


@pytest.mark.postgres
async def test_user_stream_reaches_across_servers_on_postgres(postgres_store_url: str) -> None:
    """Two servers (two stores, as two processes would have) on one PostgreSQL database."""
    watcher = FlowServer([lab_flow()], store=postgres_store_url, auth=TOKENS)
    writer = FlowServer([lab_flow()], store=postgres_store_url, auth=TOKENS)
    try:
        async with (
            AsyncClient(app=create_app(watcher), token="tok-alice") as on_a,
            AsyncClient(app=create_app(writer), token="tok-alice") as on_b,
        ):
            async with on_a.user_events() as events:
                result = await on_b.run("lab", "bump", {"amount": 1})
                event = await asyncio.wait_for(anext(events), 10)
            assert (event.type, event.request_id) == ("state_change", result.request_id)
            assert event.data["scope"] == "user" and event.data["values"] == {"visits": 1}
            # The session written through B is readable through A: one database.
            assert (await on_a.snapshot(result.session_id))["clientData"]["session"] == {"count": 1}
    finally:
        await watcher.aclose()
        await writer.aclose()
