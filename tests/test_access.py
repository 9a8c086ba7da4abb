"""Project membership, session reachability and Windmill path ownership (SPEC §13)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import flowstate
from flowstate import FlowServer, Identity, KeyPatternError, ProjectNotFoundError
from flowstate.access import can_reach_path, path_owner
from flowstate.http import create_app, parse_tokens

from .http_support import lab_flow

NOT_FOUND_P = {"code": "project_not_found", "message": 'project "p" not found'}


class Members:
    """An auth callable whose memberships a test can change between requests."""

    def __init__(self) -> None:
        self.projects: dict[str, set[str]] = {"alice": {"p"}, "bob": {"p"}, "carol": set()}

    def __call__(self, request: Any) -> Identity | str | None:
        user = request.headers.get("x-user")
        if user is None:
            return None
        if user == "dave":
            return "dave"  # a bare user id: a member of no project
        return Identity(user, frozenset(self.projects.get(user, ())))


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, Members, FlowServer]]:
    members = Members()
    server = FlowServer([lab_flow()], store="memory://", auth=members)
    transport = httpx.ASGITransport(app=create_app(server))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http, members, server
    await server.aclose()


def as_(user: str) -> dict[str, str]:
    return {"x-user": user}


def test_identity_is_public_and_checked() -> None:
    assert flowstate.Identity is Identity and "Identity" in flowstate.__all__
    assert "ProjectNotFoundError" in flowstate.__all__
    assert Identity("alice").projects == frozenset()
    assert Identity("alice", frozenset({"p"})).is_member("p")
    assert Identity("alice", {"p", "q"}).projects == frozenset({"p", "q"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="set of project id strings"):
        Identity("alice", "proj")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty string"):
        Identity("")


def test_token_specs_carry_projects() -> None:
    assert parse_tokens("t1:alice, t2:bob:p1+p2 ,t3:carol:") == {
        "t1": Identity("alice"),
        "t2": Identity("bob", frozenset({"p1", "p2"})),
        "t3": Identity("carol"),
    }
    assert parse_tokens("# a comment\nt1:alice:p\n\nt2:bob\n") == {
        "t1": Identity("alice", frozenset({"p"})),
        "t2": Identity("bob"),
    }


def test_path_rules() -> None:
    alice = Identity("alice", frozenset({"ws"}))
    assert path_owner("u/alice/etl") == "alice" and path_owner("f/team/x") is None
    assert path_owner("u") is None and path_owner("user/alice") is None
    assert can_reach_path(alice, "ws", "u/alice/etl/user")
    assert can_reach_path(alice, "ws", "f/team/etl")
    assert not can_reach_path(alice, "ws", "u/bob/etl")
    assert not can_reach_path(alice, "ws", "u/alice2/etl")
    assert not can_reach_path(alice, "other", "u/alice/etl")  # membership comes first


async def test_a_non_member_cannot_name_a_project(api: Any) -> None:
    http, _, server = api
    for user in ("carol", "dave"):
        run = await http.post(
            "/api/flows/lab/actions/bump", json={"input": {}, "projectId": "p"}, headers=as_(user)
        )
        assert (run.status_code, run.json()) == (404, {"error": NOT_FOUND_P})
        created = await http.post(
            "/api/flows/lab/sessions", json={"projectId": "p"}, headers=as_(user)
        )
        assert (created.status_code, created.json()) == (404, {"error": NOT_FOUND_P})
        stream = await http.get(
            "/api/flows/users/me/stream", params={"projectId": "p"}, headers=as_(user)
        )
        assert (stream.status_code, stream.json()) == (404, {"error": NOT_FOUND_P})
    # A project nobody uses answers exactly the same: a refusal confirms nothing.
    nobody = await http.post(
        "/api/flows/lab/sessions", json={"projectId": "nobody"}, headers=as_("carol")
    )
    assert nobody.json()["error"]["code"] == "project_not_found"
    assert (await server.store.scan("project/")) == []  # nothing was written for any of them
    # A member may; and in-process code is trusted, member or not.
    ok = await http.post(
        "/api/flows/lab/actions/bump", json={"input": {}, "projectId": "p"}, headers=as_("bob")
    )
    assert ok.status_code == 200
    trusted = await server.run("lab", "bump", {}, user_id="carol", project_id="p")
    assert trusted.output == {"count": 1}


async def test_a_session_in_a_project_needs_membership_on_every_route(api: Any) -> None:
    http, members, _ = api
    run = await http.post(
        "/api/flows/lab/actions/bump",
        json={"input": {}, "projectId": "p"},
        headers=as_("alice"),
    )
    sid, rid = run.json()["sessionId"], run.json()["requestId"]
    base = f"/api/flows/sessions/{sid}"
    routes = [
        ("GET", base),
        ("GET", f"{base}/state"),
        ("GET", f"{base}/resources/doc"),
        ("GET", f"{base}/resources/doc/content"),
        ("GET", f"/api/flows/lab/requests/{rid}/stream"),
    ]
    for method, path in routes:
        assert (await http.request(method, path, headers=as_("alice"))).status_code == 200, path
    members.projects["alice"] = set()  # alice leaves project p
    for method, path in [*routes, ("DELETE", base)]:
        response = await http.request(method, path, headers=as_("alice"))
        assert response.status_code == 404, path
    again = await http.post(
        "/api/flows/lab/actions/bump", json={"input": {}, "sessionId": sid}, headers=as_("alice")
    )
    assert again.status_code == 404
    assert again.json()["error"] == {
        "code": "session_not_found",
        "message": f'session "{sid}" not found',
    }
    reopen = await http.post(
        "/api/flows/lab/sessions", json={"sessionId": sid}, headers=as_("alice")
    )
    assert reopen.status_code == 404
    listed = (await http.get("/api/flows/sessions", headers=as_("alice"))).json()
    assert sid not in [s["sessionId"] for s in listed["sessions"]]
    members.projects["alice"] = {"p"}  # back in: the session is there, untouched
    snapshot = (await http.get(f"{base}/state", headers=as_("alice"))).json()
    assert snapshot["clientData"]["session"] == {"count": 1}


async def test_session_ids_with_a_slash_are_refused(api: Any) -> None:
    http, _, server = api
    for route, body in (
        ("/api/flows/lab/sessions", {"sessionId": "a/b"}),
        ("/api/flows/lab/actions/bump", {"input": {}, "sessionId": "a/b"}),
        ("/api/flows/lab/sessions", {"projectId": "p/q"}),
    ):
        response = await http.post(route, json=body, headers=as_("alice"))
        assert response.status_code == 422, response.text
        assert 'must not contain "/"' in response.json()["error"]["message"]
    with pytest.raises(KeyPatternError, match=r"session_id .a/b. must be a single segment"):
        await server.run("lab", "bump", {}, user_id="alice", session_id="a/b")
    assert await server.store.scan("_sessions/") == []


@pytest.fixture
async def wmill() -> AsyncIterator[httpx.AsyncClient]:
    tokens: dict[str, str | Identity] = {
        "t-alice": Identity("alice", frozenset({"ws"})),
        "t-bob": Identity("bob", frozenset({"ws"})),
        "t-carol": "carol",
    }
    async with FlowServer([], store="memory://") as server:
        transport = httpx.ASGITransport(app=create_app(server, auth=tokens))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_windmill_paths_belong_to_their_user_and_workspace(
    wmill: httpx.AsyncClient,
) -> None:
    base = "/api/w/ws/resources"
    for path in ("u/alice/db", "f/team/db"):
        made = await wmill.post(
            f"{base}/create", json={"path": path, "value": {"pw": "s3"}}, headers=bearer("t-alice")
        )
        assert made.status_code == 201, made.text
    # bob, a member: the shared path yes, alice's own path never (read, write, create, exists).
    shared = await wmill.get(f"{base}/get_value/f/team/db", headers=bearer("t-bob"))
    assert (shared.status_code, shared.json()) == (200, {"pw": "s3"})
    refused = {
        "code": "resource_not_found",
        "message": 'resource "u/alice/db" does not exist in workspace "ws"',
    }
    for method, path, body in (
        ("GET", f"{base}/get_value/u/alice/db", None),
        ("GET", f"{base}/get_value_interpolated/u/alice/db", None),
        ("GET", f"{base}/get/u/alice/db", None),
        ("GET", f"{base}/exists/u/alice/db", None),
        ("POST", f"{base}/update_value/u/alice/db", {"value": 1}),
        ("POST", f"{base}/create", {"path": "u/alice/db", "value": 1}),
    ):
        response = await wmill.request(method, path, json=body, headers=bearer("t-bob"))
        assert (response.status_code, response.json()) == (404, {"error": refused}), path
    # carol, not a member: the whole workspace is missing for her, even the shared path.
    for path in ("/api/w/ws/resources/get/f/team/db", "/api/w/ws/jobs_u/get_root_job_id/j"):
        response = await wmill.get(path, headers=bearer("t-carol"))
        assert response.status_code == 404
        assert response.json()["error"] == {
            "code": "project_not_found",
            "message": 'project "ws" not found',
        }
    # Nothing bob or carol sent changed alice's value.
    mine = await wmill.get(f"{base}/get_value/u/alice/db", headers=bearer("t-alice"))
    assert (mine.json(), mine.headers["x-flowstate-version"]) == ({"pw": "s3"}, "1")


async def test_auth_accepts_identities_in_mappings_and_refuses_other_values() -> None:
    with pytest.raises(TypeError, match=r"flowstate\.Identity"):
        create_app(FlowServer([lab_flow()], store="memory://", auth={"t": 7}))  # type: ignore[dict-item]

    def bad(request: Any) -> Any:
        return 42

    async with FlowServer([lab_flow()], store="memory://", auth=bad) as server:
        transport = httpx.ASGITransport(app=create_app(server), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/api/flows/sessions")
            assert response.status_code == 500
            body = response.json()
            message = body["error"]["message"]
            assert re.fullmatch(r"internal error \(id [0-9a-f]{6}\)", message), message
            # The error id is random hex and may itself contain "42": check the rest.
            assert "42" not in response.text.replace(message, "")


def test_project_not_found_error_is_in_the_hierarchy() -> None:
    assert issubclass(ProjectNotFoundError, flowstate.FlowStateError)
    assert ProjectNotFoundError.code == "project_not_found"


async def test_a_run_for_a_caller_checks_the_session_it_reads() -> None:
    """``FlowServer.run(caller=...)``: the check the HTTP layer relies on, on the binding the
    run reads anyway — a session or project the caller may not reach is not found, and
    nothing is written."""
    async with FlowServer([lab_flow()], store="memory://") as server:
        alice = Identity("alice", frozenset({"p"}))
        first = await server.run("lab", "bump", {}, user_id="alice", project_id="p", caller=alice)
        assert first.events[0].type == "request.created"
        assert first.events[0].data["projectId"] == "p"  # the run names its project
        sid = first.session_id
        left = Identity("alice")  # alice left project p
        with pytest.raises(flowstate.SessionNotFoundError, match=f'^session "{sid}" not found$'):
            await server.run("lab", "bump", {}, user_id="alice", session_id=sid, caller=left)
        with pytest.raises(ProjectNotFoundError, match=r'^project "p" not found$'):
            await server.run("lab", "bump", {}, user_id="alice", project_id="p", caller=left)
        bob = Identity("bob", frozenset({"p"}))  # a member, but not the owner
        with pytest.raises(flowstate.SessionNotFoundError, match=f'^session "{sid}" not found$'):
            await server.run("lab", "bump", {}, user_id="bob", session_id=sid, caller=bob)
        snapshot = await server.snapshot("lab", sid, user_id="alice")
        assert snapshot["clientData"]["session"] == {"count": 1}  # the refused runs wrote nothing
        sessions = await server.list_sessions_page(user_id="alice", kind=None, limit=10, after=None)
        assert [s.session_id for s in sessions[0]] == [sid]  # and created no session
        # The same caller, back in the project, runs again; without a caller nothing is checked.
        again = await server.run("lab", "bump", {}, user_id="alice", session_id=sid, caller=alice)
        assert again.output == {"count": 2}
        trusted = await server.run("lab", "bump", {}, user_id="alice", session_id=sid)
        assert trusted.output == {"count": 3}
