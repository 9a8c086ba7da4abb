"""The HTTP API in-process: routes, SSE format and resume, auth, errors, limits, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from flowstate import AuthError, FlowServer
from flowstate.client import StreamingASGITransport
from flowstate.errors import FlowStateError
from flowstate.http import create_app, status_for

from .http_support import ALICE, BOB, SECRET, TOKENS, Gate, lab_flow, parse_sse

SSE = {"Accept": "text/event-stream"}


@dataclass
class Lab:
    server: FlowServer
    app: Any
    http: httpx.AsyncClient
    gate: Gate

    async def run(
        self, action: str, input: Any = None, *, as_: dict[str, str] = ALICE, **body: Any
    ) -> httpx.Response:
        return await self.http.post(
            f"/api/flows/lab/actions/{action}", json={"input": input, **body}, headers=as_
        )


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    gate = Gate()
    server = FlowServer([lab_flow(gate)], store="memory://", auth=TOKENS)
    app = create_app(server, max_body_bytes=2000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield Lab(server, app, http, gate)
    gate.open()
    await server.aclose()


def streaming(lab: Lab, headers: dict[str, str] = ALICE) -> httpx.AsyncClient:
    """A client whose responses stream (for live SSE), on the same app."""
    return httpx.AsyncClient(
        transport=StreamingASGITransport(lab.app), base_url="http://test", headers=headers
    )


# ----------------------------------------------------------------------------------- actions


async def test_action_answers_json_result(store_url: str) -> None:
    server = FlowServer([lab_flow()], store=store_url, auth=TOKENS)
    transport = httpx.ASGITransport(app=create_app(server))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        first = await http.post(
            "/api/flows/lab/actions/bump", json={"input": {"amount": 2}}, headers=ALICE
        )
        assert first.status_code == 200
        body = first.json()
        assert set(body) == {"requestId", "sessionId", "status", "output"}
        assert body["status"] == "completed"
        assert body["output"] == {"count": 2}
        again = await http.post(
            "/api/flows/lab/actions/bump",
            json={"input": {"amount": 3}, "sessionId": body["sessionId"]},
            headers=ALICE,
        )
        assert again.json()["output"] == {"count": 5}
        assert again.json()["sessionId"] == body["sessionId"]
        assert again.json()["requestId"] != body["requestId"]
    await server.aclose()


async def test_action_streams_sse_frames_in_the_pinned_format(lab: Lab) -> None:
    response = await lab.http.post(
        "/api/flows/lab/actions/bump",
        json={"input": {"amount": 1}},
        headers={**ALICE, **SSE},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = parse_sse(response.text)
    types = [f["event"] for f in frames]
    assert types[0] == "request.created" and types[-1] == "request.completed"
    assert "state_change" in types
    request_id = frames[0]["data"]["requestId"]
    for seq, frame in enumerate(frames, start=1):
        data = frame["data"]
        assert frame["lines"] == [
            f"id: {request_id}:{seq}",
            f"event: {data['type']}",
            "data: " + json.dumps(data, separators=(",", ":")),
        ]
        assert (data["type"], data["seq"], data["requestId"]) == (frame["event"], seq, request_id)
    assert frames[-1]["data"]["output"] == {"count": 1}
    session_change = next(f["data"] for f in frames if f["data"].get("scope") == "session")
    assert session_change["fields"] == ["count"] and session_change["values"] == {"count": 1}


async def test_request_stream_replays_after_last_event_id(lab: Lab) -> None:
    response = await lab.http.post(
        "/api/flows/lab/actions/bump", json={"input": {}}, headers={**ALICE, **SSE}
    )
    frames = parse_sse(response.text)
    request_id = frames[0]["data"]["requestId"]
    url = f"/api/flows/lab/requests/{request_id}/stream"

    whole = await lab.http.get(url, headers=ALICE)
    assert [f["id"] for f in parse_sse(whole.text)] == [f["id"] for f in frames]

    for last in (f"{request_id}:2", "2"):
        resumed = await lab.http.get(url, headers={**ALICE, "Last-Event-ID": last})
        assert [f["data"]["seq"] for f in parse_sse(resumed.text)] == list(
            range(3, len(frames) + 1)
        )

    done = await lab.http.get(url, headers={**ALICE, "Last-Event-ID": f"{request_id}:99"})
    assert parse_sse(done.text) == []

    for bad in ("other-request:2", f"{request_id}:x"):
        refused = await lab.http.get(url, headers={**ALICE, "Last-Event-ID": bad})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid_last_event_id"


async def test_request_stream_follows_a_running_request_live(lab: Lab) -> None:
    async with streaming(lab) as http:
        async with http.stream(
            "POST", "/api/flows/lab/actions/slow", json={"input": None}, headers=SSE
        ) as running:
            lines = running.aiter_lines()
            seen: list[str] = []
            async for line in lines:  # read until the first write's event, then stop
                seen.append(line)
                if line.startswith("event: state_change"):
                    break
            request_id = seen[0].split(": ", 1)[1].split(":")[0]
            url = f"/api/flows/lab/requests/{request_id}/stream"
            async with http.stream(
                "GET", url, headers={"Last-Event-ID": f"{request_id}:1"}
            ) as late:
                late_lines = late.aiter_lines()
                first = [await late_lines.__anext__() for _ in range(3)]
                assert first[0] == f"id: {request_id}:2"  # the buffered event after seq 1
                lab.gate.open()  # the run finishes only now: the rest arrives live
                rest = "\n".join(first) + "\n" + "\n".join([line async for line in late_lines])
            original_rest = "\n".join([line async for line in lines])
    late_frames = parse_sse(rest)
    assert [f["data"]["seq"] for f in late_frames] == [2, 3, 4]
    assert late_frames[-1]["data"] == {
        "type": "request.completed",
        "seq": 4,
        "requestId": request_id,
        "output": "done",
    }
    assert parse_sse(original_rest)[-1]["event"] == "request.completed"


async def test_request_stream_is_private_to_its_user_and_kind(lab: Lab) -> None:
    run = await lab.run("bump", {})
    request_id = run.json()["requestId"]
    for path, headers in (
        (f"/api/flows/lab/requests/{request_id}/stream", BOB),
        (f"/api/flows/other/requests/{request_id}/stream", ALICE),
        ("/api/flows/lab/requests/no-such-request/stream", ALICE),
    ):
        response = await lab.http.get(path, headers=headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "request_not_found"


# ----------------------------------------------------------------------------------- auth

ROUTES = [
    ("GET", "/api/flows"),
    ("POST", "/api/flows/lab/actions/bump"),
    ("POST", "/api/flows/lab/actions/unknown"),
    ("POST", "/api/flows/lab/sessions"),
    ("GET", "/api/flows/sessions"),
    ("GET", "/api/flows/sessions/s1"),
    ("DELETE", "/api/flows/sessions/s1"),
    ("GET", "/api/flows/sessions/s1/state"),
    ("GET", "/api/flows/sessions/s1/resources/doc"),
    ("GET", "/api/flows/sessions/s1/resources/doc/content"),
    ("GET", "/api/flows/lab/requests/r1/stream"),
    ("GET", "/api/flows/users/me/stream"),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dG9rLWFsaWNl"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "unknown-token", "basic", "empty-bearer"],
)
async def test_every_route_needs_a_valid_token(lab: Lab, headers: dict[str, str]) -> None:
    for method, path in ROUTES:
        response = await lab.http.request(method, path, headers=headers, json={"input": {}})
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "auth_error"
        assert "bearer token" in response.json()["error"]["message"]


async def test_another_users_session_is_not_found_never_forbidden(lab: Lab) -> None:
    alice = (await lab.run("bump", {"amount": 4})).json()["sessionId"]
    await lab.run("write_doc", {"title": "t", "content": "c"}, sessionId=alice)
    base = f"/api/flows/sessions/{alice}"
    attempts = [
        await lab.http.get(base, headers=BOB),
        await lab.http.get(f"{base}/state", headers=BOB),
        await lab.http.get(f"{base}/resources/notes", headers=BOB),
        await lab.http.get(f"{base}/resources/doc/content", headers=BOB),
        await lab.http.delete(base, headers=BOB),
        await lab.run("bump", {}, as_=BOB, sessionId=alice),
        await lab.http.post("/api/flows/lab/sessions", json={"sessionId": alice}, headers=BOB),
    ]
    for response in attempts:
        assert response.status_code == 404, response.request.url
        assert response.json()["error"] == {
            "code": "session_not_found",
            "message": f'session "{alice}" not found',
        }
    listed = await lab.http.get("/api/flows/sessions", headers=BOB)
    assert listed.json() == {"sessions": [], "next": None}
    mine = await lab.http.get(f"{base}/state", headers=ALICE)
    assert mine.json()["clientData"]["session"] == {"count": 4}


async def test_auth_callable_sync_or_async(lab: Lab) -> None:
    def by_header(request: Request) -> str | None:
        return request.headers.get("x-user")

    async def by_header_async(request: Request) -> str | None:
        await asyncio.sleep(0)
        if request.headers.get("x-user") == "mallory":
            raise AuthError("banned")
        return request.headers.get("x-user")

    for auth in (by_header, by_header_async):
        server = FlowServer([lab_flow()], store="memory://", auth=auth)
        transport = httpx.ASGITransport(app=create_app(server))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            ok = await http.post(
                "/api/flows/lab/actions/bump", json={"input": {}}, headers={"x-user": "carol"}
            )
            assert ok.status_code == 200
            info = await http.get(
                f"/api/flows/sessions/{ok.json()['sessionId']}", headers={"x-user": "carol"}
            )
            assert info.json()["userId"] == "carol"
            assert (await http.get("/api/flows/sessions")).status_code == 401
            banned = await http.get("/api/flows/sessions", headers={"x-user": "mallory"})
            assert banned.status_code == (401 if auth is by_header_async else 200)
        await server.aclose()


async def test_default_tokens_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWSTATE_TOKENS", " env-a:alice , env-b:bob ")
    server = FlowServer([lab_flow()], store="memory://")
    transport = httpx.ASGITransport(app=create_app(server))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        created = await http.post(
            "/api/flows/lab/sessions", headers={"Authorization": "Bearer env-b"}
        )
        assert created.status_code == 201 and created.json()["userId"] == "bob"
        refused = await http.get("/api/flows/sessions", headers=ALICE)
        assert refused.status_code == 401
    await server.aclose()

    monkeypatch.setenv("FLOWSTATE_TOKENS", "good:alice,secret-without-user")
    with pytest.raises(ValueError, match="FLOWSTATE_TOKENS entry 2 must look like") as info:
        create_app(FlowServer([lab_flow()], store="memory://"))
    assert "secret-without-user" not in str(info.value)


# ----------------------------------------------------------------------------------- errors


def test_every_error_code_has_its_status() -> None:
    codes = {
        cls.code: status_for(cls.code)
        for cls in _all_errors(FlowStateError)
        if cls.__module__ == "flowstate.errors"  # the public hierarchy (SPEC §11)
    }
    assert codes == {
        "flowstate_error": 500,
        "validation_error": 422,
        "concurrent_modification": 409,
        "schema_conflict": 500,
        "resource_not_found": 404,
        "flow_not_found": 404,
        "action_not_found": 404,
        "resource_already_exists": 409,
        "resource_read_only": 403,
        "invalid_key": 422,
        "collection_full": 409,
        "session_not_found": 404,
        "project_not_found": 404,
        "definition_error": 500,
        "auth_error": 401,
        "store_unavailable": 503,
        "request_failed": 400,  # PublicError's default; a block picks its own 4xx
        "migration_error": 500,  # stored data the code cannot upgrade: the operator's problem
        "schema_version_error": 500,  # stored data newer than the code (a rollback)
    }
    assert status_for("request_not_found") == 404 and status_for("anything_else") == 500


def _all_errors(cls: type[FlowStateError]) -> list[type[FlowStateError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _all_errors(child))]


@pytest.mark.parametrize(
    ("action", "input", "status", "code", "message"),
    [
        ("bump", {"amount": "x"}, 422, "validation_error", 'field "input.amount"'),
        ("touch_locked", None, 403, "resource_read_only", "doc"),
        ("conflict", None, 409, "concurrent_modification", "gave up after 3 attempts"),
        ("boom", None, 500, "internal_error", "internal error (id "),
        ("add_note", {"key": "../escape"}, 422, "invalid_key", '".." segments'),
    ],
)
async def test_failed_run_maps_error_code_to_status(
    lab: Lab, action: str, input: Any, status: int, code: str, message: str
) -> None:
    response = await lab.run(action, input)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error", "requestId", "sessionId"}
    assert body["error"]["code"] == code
    if code != "resource_read_only":
        assert message in body["error"]["message"]
    assert "kaboom" not in response.text  # a block's own exception text stays in the log
    # The failed run is recorded: its stream ends with the same error.
    stream = await lab.http.get(
        f"/api/flows/lab/requests/{body['requestId']}/stream", headers=ALICE
    )
    last = parse_sse(stream.text)[-1]["data"]
    assert last["type"] == "request.failed"
    assert last["error"] == {"code": code, "message": body["error"]["message"]}


async def test_validation_error_details_name_every_field(lab: Lab) -> None:
    response = await lab.run("bump", {"amount": "x", "address": {"city": 5}})
    error = response.json()["error"]
    assert response.status_code == 422
    assert [(d["loc"], d["type"]) for d in error["details"]] == [
        (["input", "amount"], "int_parsing"),
        (["input", "address", "city"], "string_type"),
        (["input", "address", "zip"], "missing"),
    ]
    assert all(d["msg"] for d in error["details"])


async def test_conflicting_create_is_409_and_partial_writes_stay(lab: Lab) -> None:
    first = await lab.run("add_note", {"key": "a.md", "title": "A"})
    session = first.json()["sessionId"]
    again = await lab.run("add_note", {"key": "a.md"}, sessionId=session)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "resource_already_exists"
    assert 'resource "notes/a.md" already exists' in again.json()["error"]["message"]
    boom = await lab.run("boom", None, sessionId=session)
    assert boom.status_code == 500 and boom.json()["sessionId"] == session
    state = await lab.http.get(f"/api/flows/sessions/{session}/state", headers=ALICE)
    assert state.json()["clientData"]["session"] == {"count": 1}  # boom's write committed


async def test_refused_before_the_run_starts_has_no_request_id(lab: Lab) -> None:
    bob_session = (await lab.run("bump", {}, as_=BOB)).json()["sessionId"]
    for path, body, code in (
        ("/api/flows/lab/actions/nope", {"input": {}}, "action_not_found"),
        ("/api/flows/nope/actions/bump", {"input": {}}, "flow_not_found"),
        (
            "/api/flows/lab/actions/bump",
            {"input": {}, "sessionId": bob_session},
            "session_not_found",
        ),
    ):
        response = await lab.http.post(path, json=body, headers=ALICE)
        assert response.status_code == 404
        assert list(response.json()) == ["error"]
        assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("content", "status", "code", "loc"),
    [
        (b'{"input": ', 400, "invalid_json", None),
        (b"\xff\xfe", 400, "invalid_json", None),
        (b"[1, 2]", 422, "validation_error", ["body"]),
        (b'{"inputs": {}}', 422, "validation_error", ["body", "inputs"]),
        (b'{"input": {}, "sessionId": ""}', 422, "validation_error", ["body", "sessionId"]),
        (
            b'{"input": {}, "sessionId": "a\\u0000b"}',
            422,
            "validation_error",
            ["body", "sessionId"],
        ),
        (b'{"input": {}, "projectId": 7}', 422, "validation_error", ["body", "projectId"]),
    ],
)
async def test_bad_request_bodies(
    lab: Lab, content: bytes, status: int, code: str, loc: list[str] | None
) -> None:
    response = await lab.http.post(
        "/api/flows/lab/actions/bump",
        content=content,
        headers={**ALICE, "Content-Type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    if loc is not None:
        assert error["details"][0]["loc"] == loc
    listed = await lab.http.get("/api/flows/sessions", headers=ALICE)
    assert listed.json() == {"sessions": [], "next": None}


async def test_body_size_limit(lab: Lab) -> None:
    def body_of(size: int) -> bytes:
        padding = size - len(b'{"input": {"secret": ""}}')
        return b'{"input": {"secret": "' + b"x" * padding + b'"}}'

    at_limit = await lab.http.post(
        "/api/flows/lab/actions/bump", content=body_of(2000), headers=ALICE
    )
    assert at_limit.status_code == 200

    declared = await lab.http.post(
        "/api/flows/lab/actions/bump", content=body_of(2001), headers=ALICE
    )
    assert declared.status_code == 413
    assert declared.json()["error"] == {
        "code": "payload_too_large",
        "message": "the request body is larger than the limit of 2000 bytes",
    }

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        data = body_of(5000)
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    streamed = await lab.http.post("/api/flows/lab/actions/bump", content=chunks(), headers=ALICE)
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "payload_too_large"
    sessions = (await lab.http.get("/api/flows/sessions", headers=ALICE)).json()["sessions"]
    assert len(sessions) == 1  # only the run at the limit happened


async def test_query_and_route_errors_use_the_error_shape(lab: Lab) -> None:
    session = (await lab.run("add_note", {"key": "a"})).json()["sessionId"]
    bad_limit = await lab.http.get(
        f"/api/flows/sessions/{session}/resources/notes?limit=0", headers=ALICE
    )
    assert bad_limit.status_code == 422
    assert bad_limit.json()["error"]["details"][0]["loc"] == ["query", "limit"]
    missing = await lab.http.get("/api/nothing-here", headers=ALICE)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = await lab.http.put("/api/flows/sessions", headers=ALICE)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


# ----------------------------------------------------------------------------------- sessions


async def test_sessions_create_list_get_delete(lab: Lab) -> None:
    created = await lab.http.post(
        "/api/flows/lab/sessions", json={"sessionId": "s-1", "projectId": "p1"}, headers=ALICE
    )
    assert created.status_code == 201
    info = created.json()
    assert {k: info[k] for k in ("sessionId", "userId", "flowKind", "projectId")} == {
        "sessionId": "s-1",
        "userId": "alice",
        "flowKind": "lab",
        "projectId": "p1",
    }
    again = await lab.http.post("/api/flows/lab/sessions", json={"sessionId": "s-1"}, headers=ALICE)
    assert again.status_code == 200 and again.json() == info
    other_project = await lab.http.post(
        "/api/flows/lab/sessions", json={"sessionId": "s-1", "projectId": "p2"}, headers=ALICE
    )
    assert other_project.status_code == 404
    fresh = await lab.http.post("/api/flows/lab/sessions", headers=ALICE)
    assert fresh.status_code == 201 and fresh.json()["projectId"] is None
    unknown_kind = await lab.http.post("/api/flows/nope/sessions", headers=ALICE)
    assert unknown_kind.status_code == 404

    listed = (await lab.http.get("/api/flows/sessions", headers=ALICE)).json()["sessions"]
    assert {s["sessionId"] for s in listed} == {"s-1", fresh.json()["sessionId"]}
    by_kind = await lab.http.get("/api/flows/sessions?kind=other", headers=ALICE)
    assert by_kind.json() == {"sessions": [], "next": None}
    assert (await lab.http.get("/api/flows/sessions/s-1", headers=ALICE)).json() == info

    run = await lab.run("bump", {"amount": 2}, sessionId="s-1")
    assert run.status_code == 200
    deleted = await lab.http.delete("/api/flows/sessions/s-1", headers=ALICE)
    assert deleted.json() == {"sessionId": "s-1", "deleted": True}
    gone = await lab.http.get("/api/flows/sessions/s-1/state", headers=ALICE)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
    assert (await lab.http.delete("/api/flows/sessions/s-1", headers=ALICE)).status_code == 404


# ----------------------------------------------------------------------------------- resources


async def test_resource_content_endpoint(lab: Lab) -> None:
    session = (await lab.run("bump", {})).json()["sessionId"]
    base = f"/api/flows/sessions/{session}/resources"
    initial = await lab.http.get(f"{base}/doc/content", headers=ALICE)
    assert initial.json() == {"name": "doc", "content": "initial text"}
    await lab.run("write_doc", {"title": "T", "content": "# Body"}, sessionId=session)
    assert (await lab.http.get(f"{base}/doc/content", headers=ALICE)).json() == {
        "name": "doc",
        "content": "# Body",
    }
    await lab.run("add_note", {"key": "x/a.md", "body": "note a"}, sessionId=session)
    note = await lab.http.get(f"{base}/notes/content?key=notes/x/a.md", headers=ALICE)
    assert note.json() == {"name": "notes", "key": "notes/x/a.md", "content": "note a"}
    relative = await lab.http.get(f"{base}/notes/content?key=x/a.md", headers=ALICE)
    assert relative.json()["key"] == "notes/x/a.md"

    for path, status, code in (
        (f"{base}/plain/content", 404, "resource_not_found"),  # client without content=True
        (f"{base}/hidden/content", 404, "resource_not_found"),  # no client: invisible
        (f"{base}/nope/content", 404, "resource_not_found"),
        (f"{base}/notes/content", 422, "invalid_key"),  # a collection needs ?key=
        (f"{base}/notes/content?key=missing.md", 404, "resource_not_found"),
        (f"{base}/notes/content?key=../../state", 422, "invalid_key"),
        (f"{base}/doc/content?scope=user", 404, "resource_not_found"),
        (f"{base}/doc/content?scope=team", 422, "validation_error"),
    ):
        response = await lab.http.get(path, headers=ALICE)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), path
    hidden = await lab.http.get(f"{base}/hidden/content", headers=ALICE)
    unknown = await lab.http.get(f"{base}/nope/content", headers=ALICE)
    assert (
        hidden.json()["error"]["message"].replace("hidden", "nope")
        == (unknown.json()["error"]["message"])
    )  # an invisible resource answers exactly like a missing one


async def test_collection_listing_is_paged_and_projected(lab: Lab) -> None:
    session = (await lab.run("bump", {})).json()["sessionId"]
    for key in ("b.md", "a.md", "sub/c.md"):
        await lab.run("add_note", {"key": key, "title": key, "secret": SECRET}, sessionId=session)
    base = f"/api/flows/sessions/{session}/resources/notes"
    page1 = (await lab.http.get(f"{base}?limit=2", headers=ALICE)).json()
    assert page1 == {
        "name": "notes",
        "scope": "session",
        "count": 3,
        "items": [
            {"key": "notes/a.md", "clientData": {"title": "a.md"}},
            {"key": "notes/b.md", "clientData": {"title": "b.md"}},
        ],
        "next": "notes/b.md",
    }
    page2 = (await lab.http.get(f"{base}?limit=2&after=notes/b.md", headers=ALICE)).json()
    assert [i["key"] for i in page2["items"]] == ["notes/sub/c.md"] and page2["next"] is None
    sub = (await lab.http.get(f"{base}?prefix=sub/", headers=ALICE)).json()
    assert [i["key"] for i in sub["items"]] == ["notes/sub/c.md"]
    static = (
        await lab.http.get(f"/api/flows/sessions/{session}/resources/doc", headers=ALICE)
    ).json()
    assert static == {"name": "doc", "scope": "session", "clientData": {"title": ""}}
    invisible = await lab.http.get(f"/api/flows/sessions/{session}/resources/hidden", headers=ALICE)
    assert invisible.status_code == 404


# ----------------------------------------------------------------------------------- privacy


async def test_secret_fields_never_leave_the_server(lab: Lab) -> None:
    seen: list[str] = []
    session = (await lab.run("bump", {"amount": 1}, projectId="p1")).json()["sessionId"]
    async with streaming(lab) as live:
        async with live.stream(
            "GET", "/api/flows/users/me/stream", params={"projectId": "p1"}
        ) as user_stream:
            lines = user_stream.aiter_lines()
            assert (await lines.__anext__()) == ": subscribed"
            for action, input in (
                ("bump", {"amount": 2, "secret": SECRET}),
                ("write_doc", {"title": "visible", "hidden": SECRET, "content": "text"}),
                ("add_note", {"key": "n.md", "title": "note", "secret": SECRET}),
            ):
                seen.append((await lab.run(action, input, sessionId=session)).text)
                # A second, different value: the SSE run commits (and reports) the write too.
                if action == "add_note":
                    input = {**input, "key": "m.md"}
                elif action == "bump":
                    input = {**input, "secret": SECRET + "-again"}
                else:
                    input = {**input, "hidden": SECRET + "-again"}
                streamed = await lab.http.post(
                    f"/api/flows/lab/actions/{action}",
                    json={"input": input, "sessionId": session},
                    headers={**ALICE, **SSE},
                )
                seen.append(streamed.text)
                rid = parse_sse(streamed.text)[0]["data"]["requestId"]
                replay = f"/api/flows/lab/requests/{rid}/stream"
                seen.append((await lab.http.get(replay, headers=ALICE)).text)
            # Both bumps changed user and project state: 2 x 4 events.
            user_lines: list[str] = []
            while sum(line.startswith("data: ") for line in user_lines) < 8:
                user_lines.append(await asyncio.wait_for(lines.__anext__(), 5))
            seen.append("\n".join(user_lines))
    base = f"/api/flows/sessions/{session}"
    for path in (
        f"{base}/state",
        base,
        "/api/flows/sessions",
        f"{base}/resources/notes",
        f"{base}/resources/doc",
        f"{base}/resources/plain",
        f"{base}/resources/doc/content",
        f"{base}/resources/notes/content?key=n.md",
    ):
        response = await lab.http.get(path, headers=ALICE)
        assert response.status_code == 200, path
        seen.append(response.text)
    everything = "\n".join(seen)
    assert SECRET not in everything
    # Not vacuous: the exposed data, the projections and the change events did arrive.
    assert json.loads(seen[-8])["clientData"] == {
        "session": {"count": 5},
        "user": {"visits": 3},
        "project": {"hits": 3},
    }
    assert '{"title":"visible"}' in everything and '"title":"note"' in everything
    for field in ("secret", "user_secret", "project_secret"):
        assert f'"fields":["{field}"]' in everything  # the field's name, never its value


# ----------------------------------------------------------------------------------- live


async def test_user_stream_receives_changes_from_another_session(lab: Lab) -> None:
    async with streaming(lab) as live:
        async with live.stream("GET", "/api/flows/users/me/stream", headers=SSE) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert (await lines.__anext__()) == ": subscribed"
            await lab.run("bump", {}, as_=BOB)  # bob's change must not reach alice
            other = (await lab.run("bump", {"amount": 2})).json()
            block: list[str] = []
            while len(block) < 3:
                line = await asyncio.wait_for(lines.__anext__(), 5)
                if line and not line.startswith(":"):
                    block.append(line)
    frame = parse_sse("\n".join(block) + "\n\n")[0]
    assert frame["event"] == "state_change"
    assert frame["id"] == f"{other['requestId']}:3"
    assert frame["data"] == {
        "type": "state_change",
        "seq": 3,
        "requestId": other["requestId"],
        "scope": "user",
        "operation": "inc",
        "fields": ["visits"],
        "version": 1,
        "values": {"visits": 1},
        "sessionId": other["sessionId"],
        "flowKind": "lab",
    }


async def test_user_stream_project_scopes(lab: Lab) -> None:
    await lab.run("bump", {}, projectId="p1")
    bob_session = (await lab.run("bump", {}, as_=BOB, projectId="p1")).json()["sessionId"]
    refused = await lab.http.get(
        "/api/flows/users/me/stream", params={"projectId": "p2"}, headers=ALICE
    )
    assert refused.status_code == 404
    assert refused.json()["error"] == {
        "code": "project_not_found",
        "message": 'project "p2" not found',
    }
    async with streaming(lab) as live:
        async with live.stream(
            "GET", "/api/flows/users/me/stream", params={"projectId": "p1"}
        ) as stream:
            lines = stream.aiter_lines()
            assert (await lines.__anext__()) == ": subscribed"
            await lab.run("bump", {}, as_=BOB, sessionId=bob_session)
            data: list[dict[str, Any]] = []
            while not data:
                line = await asyncio.wait_for(lines.__anext__(), 5)
                if line.startswith("data: "):
                    data.append(json.loads(line[6:]))
    assert data[0]["scope"] == "project" and data[0]["sessionId"] == bob_session
    assert data[0]["values"] == {"hits": 3}


# ----------------------------------------------------------------------------------- docs


async def test_openapi_documents_each_action_input(lab: Lab) -> None:
    doc = (await lab.http.get("/openapi.json")).json()
    operation = doc["paths"]["/api/flows/lab/actions/bump"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["input"]
    assert set(body["properties"]) == {"input", "sessionId", "projectId"}
    schemas = doc["components"]["schemas"]
    bump_input = schemas[body["properties"]["input"]["$ref"].rsplit("/", 1)[1]]
    assert set(bump_input["properties"]) == {"amount", "secret", "address"}
    note_body = doc["paths"]["/api/flows/lab/actions/add_note"]["post"]["requestBody"]
    note_ref = note_body["content"]["application/json"]["schema"]["properties"]["input"]["$ref"]
    assert schemas[note_ref.rsplit("/", 1)[1]]["required"] == ["key"]
    responses = operation["responses"]
    assert "text/event-stream" in responses["200"]["content"]
    for route in (
        "/api/flows/sessions",
        "/api/flows/sessions/{session_id}/state",
        "/api/flows/users/me/stream",
        "/api/flows/{kind}/requests/{request_id}/stream",
    ):
        assert route in doc["paths"]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(doc):  # every reference resolves (nested models included)
        assert ref.rsplit("/", 1)[1] in schemas, ref


async def test_flow_list_and_web_page(lab: Lab) -> None:
    flows = (await lab.http.get("/api/flows", headers=ALICE)).json()["flows"]
    assert [f["kind"] for f in flows] == ["lab"]
    actions = {a["name"]: a["input"] for a in flows[0]["actions"]}
    assert actions["bump"]["properties"]["amount"]["default"] == 1
    assert actions["boom"] is None
    page = await lab.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in page.text
    script = await lab.http.get("/static/app.js")
    assert script.status_code == 200 and "users/me/stream" in script.text


async def _raw_post(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], messages: list[dict[str, Any]]
) -> tuple[int, dict[str, Any]]:
    """POST through the ASGI interface itself: ``messages`` are what ``receive`` returns in
    turn (body chunks, a disconnect). Returns the status and the JSON body sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # pragma: no cover - the app must not wait for more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


@pytest.mark.parametrize("declared", [True, False])
async def test_a_client_gone_before_its_body_arrived_is_a_quiet_408(
    lab: Lab, caplog: pytest.LogCaptureFixture, declared: bool
) -> None:
    """A stalled client cut off by the server's body timeout (or one that hangs up) reads
    as a disconnect: a 408, logged nowhere as an internal error, and nothing runs."""
    auth = [(b"authorization", ALICE["Authorization"].encode())]
    length = [(b"content-length", b"100")] if declared else []
    caplog.set_level("DEBUG")
    status, body = await _raw_post(
        lab.app,
        "/api/flows/lab/actions/bump",
        [*auth, *length],
        [
            {"type": "http.request", "body": b'{"input": {', "more_body": True},
            {"type": "http.disconnect"},
        ],
    )
    assert status == 408
    assert body == {
        "error": {
            "code": "request_timeout",
            "message": "the client disconnected (or was cut off) before its request body arrived",
        }
    }
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text
    sessions = (await lab.http.get("/api/flows/sessions", headers=ALICE)).json()["sessions"]
    assert sessions == []


async def test_a_declared_length_of_thousands_of_digits_is_413(lab: Lab) -> None:
    auth = [(b"authorization", ALICE["Authorization"].encode())]
    status, body = await _raw_post(
        lab.app,
        "/api/flows/lab/actions/bump",
        [*auth, (b"content-length", b"9" * 5000)],
        [{"type": "http.request", "body": b"{}", "more_body": False}],
    )
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
