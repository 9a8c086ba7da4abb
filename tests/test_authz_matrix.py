"""The authorization matrix, generated from the app's route table (issue 9).

Every route the app serves is either listed in ``PUBLIC`` or has a case in ``CASES``; a new
route without either fails ``test_every_route_has_an_authorization_case`` (and its matrix
tests), so it cannot ship unchecked. For every non-public route, three callers attack alice's
objects on a real uvicorn server:

- ``second_user`` (bob, a member of alice's project p1 but not of her project pa): alice's
  session, request stream, project pa, and her ``u/alice/…`` Windmill paths → 404;
- ``non_member`` (eve, a member of no project): project p1 and everything in it → 404;
- ``anonymous`` (no token) → 401.

Each case also has an ``owner`` control (alice gets her answer), so a 404 is never vacuous.
Finally every byte any caller received — bodies, headers, SSE frames, errors — is checked for
the planted unexposed values.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.routing import Mount

from flowstate import FlowServer, Identity
from flowstate.http import create_app

from .http_support import Gate, lab_flow, serve_in_thread

SECRET = "PLANTED-5e3c1a-unexposed"  # in unexposed session/user/project state and resources
WM_SECRET = "PLANTED-wm-9d2f-alice-only"  # in alice's own u/alice/… Windmill resource

TOKENS = {
    "tok-alice": Identity("alice", frozenset({"p1", "pa"})),
    "tok-bob": Identity("bob", frozenset({"p1", "pb"})),
    "tok-eve": Identity("eve"),
}
HEADERS = {
    "owner": {"Authorization": "Bearer tok-alice"},
    "second_user": {"Authorization": "Bearer tok-bob"},
    "non_member": {"Authorization": "Bearer tok-eve"},
    "anonymous": {},
}
ATTACKERS = ("second_user", "non_member", "anonymous")

# Routes anyone may read, token or not: API documentation and the web page's static files.
PUBLIC = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/"),
    ("MOUNT", "/static"),
    ("MOUNT", "/static-offline-docs"),
}


def route_table(app: Any) -> list[tuple[str, str]]:
    """``(method, path)`` of every route the app serves (mounts as ``("MOUNT", path)``)."""

    def walk(routes: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's lazily included routers
                sub = route.include_context.prefix or ""
                yield from walk(route.original_router.routes, prefix + sub)
            elif isinstance(route, Mount):
                yield ("MOUNT", prefix + route.path)
            else:
                for method in sorted(set(route.methods) - {"HEAD"}):
                    yield (method, prefix + route.path)

    return list(walk(app.routes, ""))


# --------------------------------------------------------------------------------- the world


@dataclass
class World:
    """A served app with alice's planted objects."""

    base: str
    session: str  # alice's session in project p1, holding SECRET in unexposed places
    request: str  # a finished run of that session
    received: list[tuple[str, str]] = field(default_factory=list)  # (actor, all bytes got)
    counter: Iterator[int] = field(default_factory=itertools.count)
    client: httpx.Client | None = None

    def call(self, probe: Probe, actor: str) -> Answer:
        headers = {**HEADERS[actor], **probe.headers}
        if self.client is None:
            self.client = httpx.Client(base_url=self.base, timeout=10)
        with self.client.stream(
            probe.method, probe.url, json=probe.body, headers=headers
        ) as response:
            if probe.sse:
                text = _read_sse(response, until_end=probe.sse_to_end)
            else:
                text = response.read().decode()
        answer = Answer(response.status_code, text)
        self.received.append((actor, f"{response.status_code} {dict(response.headers)}\n{text}"))
        return answer

    def fresh_session(self) -> str:
        response = self.call(
            Probe("POST", "/api/flows/lab/sessions", {"projectId": "p1"}, 201), "owner"
        )
        return str(response.json()["sessionId"])


@dataclass
class Answer:
    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def _read_sse(response: httpx.Response, *, until_end: bool) -> str:
    """An SSE answer's text: to its end (a finished run), or its first line (a live stream)."""
    if response.status_code != 200:
        return response.read().decode()
    lines = []
    for line in response.iter_lines():
        lines.append(line)
        if not until_end and line.startswith(":"):
            break
    return "\n".join(lines)


@dataclass
class Probe:
    method: str
    url: str
    body: Any = None
    status: int = 200
    code: str | None = None  # the error code of a refusal
    sse: bool = False
    sse_to_end: bool = False
    absent: str | None = None  # a 200 that must not mention this (a listing)
    headers: dict[str, str] = field(default_factory=dict)


def refused(method: str, url: str, body: Any = None, *, code: str, sse: bool = False) -> Probe:
    return Probe(method, url, body, 404, code, sse=sse)


NO_SESSION = "session_not_found"
NO_PROJECT = "project_not_found"
NO_RESOURCE = "resource_not_found"
NO_REQUEST = "request_not_found"

# ------------------------------------------------------------------------------------- cases
# Each case: (world, actor) → the probes that actor sends and what each must answer.
Case = Callable[[World, str], list[Probe]]

OWNER_INPUTS = {"bump": {"amount": 1}, "{action}": {"amount": 1}}


def action_case(path: str) -> Case:
    kind, action = re.fullmatch(r"/api/flows/([^/]+)/actions/([^/]+)", path).groups()  # type: ignore[union-attr]
    url = f"/api/flows/{'lab' if kind == '{kind}' else kind}/actions/" + (
        "bump" if action == "{action}" else action
    )

    def case(w: World, actor: str) -> list[Probe]:
        mine = {"input": {}, "sessionId": w.session}
        if actor == "owner":
            if action not in OWNER_INPUTS:
                return []  # the other actions' own outcomes are tested in test_http
            return [Probe("POST", url, {"input": OWNER_INPUTS[action], "sessionId": w.session})]
        if actor == "second_user":
            return [
                refused("POST", url, mine, code=NO_SESSION),
                refused("POST", url, {**mine, "projectId": "p1"}, code=NO_SESSION),
                refused("POST", url, {"input": {}, "projectId": "pa"}, code=NO_PROJECT),
            ]
        return [
            refused("POST", url, mine, code=NO_SESSION),
            refused("POST", url, {"input": {}, "projectId": "p1"}, code=NO_PROJECT),
        ]

    return case


def request_stream(w: World, actor: str) -> list[Probe]:
    url = f"/api/flows/lab/requests/{w.request}/stream"
    if actor == "owner":
        return [Probe("GET", url, sse=True, sse_to_end=True)]
    return [refused("GET", url, code=NO_REQUEST)]


def create_session(w: World, actor: str) -> list[Probe]:
    url = "/api/flows/lab/sessions"
    if actor == "owner":
        return [Probe("POST", url, {"sessionId": w.session})]
    probes = [refused("POST", url, {"sessionId": w.session}, code=NO_SESSION)]
    project = "pa" if actor == "second_user" else "p1"
    return [*probes, refused("POST", url, {"projectId": project}, code=NO_PROJECT)]


def list_sessions(w: World, actor: str) -> list[Probe]:
    if actor == "owner":
        return [Probe("GET", "/api/flows/sessions")]
    return [Probe("GET", "/api/flows/sessions", absent=w.session)]


def session_route(suffix: str, method: str = "GET") -> Case:
    def case(w: World, actor: str) -> list[Probe]:
        if actor == "owner":
            target = w.fresh_session() if method == "DELETE" else w.session
            return [Probe(method, f"/api/flows/sessions/{target}{suffix}")]
        return [refused(method, f"/api/flows/sessions/{w.session}{suffix}", code=NO_SESSION)]

    return case


def session_metadata(w: World, actor: str) -> list[Probe]:
    url = f"/api/flows/sessions/{w.session}/metadata"
    if actor == "owner":
        return [Probe("PATCH", url, {"title": "mine"})]
    return [refused("PATCH", url, {"title": "taken"}, code=NO_SESSION)]


def session_stream(w: World, actor: str) -> list[Probe]:
    url = f"/api/flows/sessions/{w.session}/stream"
    if actor == "owner":
        return [Probe("GET", url, sse=True)]
    return [refused("GET", url, code=NO_SESSION, sse=True)]


def resource_route(w: World, actor: str) -> list[Probe]:
    probes = []
    for name in ("notes", "doc", "plain"):
        url = f"/api/flows/sessions/{w.session}/resources/{name}"
        probes.append(
            Probe("GET", url) if actor == "owner" else refused("GET", url, code=NO_SESSION)
        )
    if actor == "owner":  # an invisible resource is missing, for its owner too
        url = f"/api/flows/sessions/{w.session}/resources/hidden"
        probes.append(refused("GET", url, code=NO_RESOURCE))
    return probes


def content_route(w: World, actor: str) -> list[Probe]:
    base = f"/api/flows/sessions/{w.session}/resources"
    urls = [f"{base}/doc/content", f"{base}/notes/content?key=n.md"]
    if actor == "owner":
        return [Probe("GET", url) for url in urls] + [
            refused("GET", f"{base}/hidden/content", code=NO_RESOURCE)
        ]
    return [refused("GET", url, code=NO_SESSION) for url in urls]


def user_stream(w: World, actor: str) -> list[Probe]:
    url = "/api/flows/users/me/stream"
    if actor == "owner":
        return [Probe("GET", f"{url}?projectId=p1&projectId=pa", sse=True)]
    project = "pa" if actor == "second_user" else "p1"
    return [refused("GET", f"{url}?projectId={project}", code=NO_PROJECT, sse=True)]


def list_flows(w: World, actor: str) -> list[Probe]:
    return [Probe("GET", "/api/flows")]  # owns nothing: every authenticated caller may


def wmill_path_route(verb: str, method: str = "GET") -> Case:
    def case(w: World, actor: str) -> list[Probe]:
        def url(ws: str, path: str) -> str:
            return f"/api/w/{ws}/resources/{verb}/{path}"

        body = {"value": {"v": 2, "note": WM_SECRET}} if method == "POST" else None
        if actor == "owner":
            return [Probe(method, url("p1", "u/alice/secret"), body)]
        if actor == "second_user":  # a member of p1: not alice's own paths, not pa at all
            return [
                refused(method, url("p1", "u/alice/secret"), body, code=NO_RESOURCE),
                refused(method, url("pa", "f/team/shared"), body, code=NO_PROJECT),
            ]
        return [refused(method, url("p1", "f/team/shared"), body, code=NO_PROJECT)]

    return case


def wmill_create(w: World, actor: str) -> list[Probe]:
    def body(path: str) -> dict[str, Any]:
        return {"path": path, "value": WM_SECRET, "resource_type": "any"}

    url = "/api/w/{}/resources/create"
    if actor == "owner":
        return [Probe("POST", url.format("p1"), body(f"u/alice/new-{next(w.counter)}"), 201)]
    if actor == "second_user":
        return [
            refused("POST", url.format("p1"), body("u/alice/planted"), code=NO_RESOURCE),
            refused("POST", url.format("pa"), body("f/team/planted"), code=NO_PROJECT),
        ]
    return [refused("POST", url.format("p1"), body("f/team/planted"), code=NO_PROJECT)]


def wmill_workspace_route(suffix: str, method: str = "GET") -> Case:
    """Routes with no path: workspace members only (any member, as in Windmill)."""

    def case(w: World, actor: str) -> list[Probe]:
        body = {"any": "value"} if method == "POST" else None
        if actor == "owner":
            return [Probe(method, f"/api/w/p1/{suffix}", body)]
        ws = "pa" if actor == "second_user" else "p1"
        return [refused(method, f"/api/w/{ws}/{suffix}", body, code=NO_PROJECT)]

    return case


CASES: dict[tuple[str, str], Case] = {
    ("POST", "/api/flows/{kind}/actions/{action}"): action_case(
        "/api/flows/{kind}/actions/{action}"
    ),
    ("GET", "/api/flows"): list_flows,
    ("GET", "/api/flows/{kind}/requests/{request_id}/stream"): request_stream,
    ("POST", "/api/flows/{kind}/sessions"): create_session,
    ("GET", "/api/flows/sessions"): list_sessions,
    ("GET", "/api/flows/sessions/{session_id}"): session_route(""),
    ("DELETE", "/api/flows/sessions/{session_id}"): session_route("", "DELETE"),
    ("GET", "/api/flows/sessions/{session_id}/state"): session_route("/state"),
    ("GET", "/api/flows/sessions/{session_id}/stream"): session_stream,
    ("PATCH", "/api/flows/sessions/{session_id}/metadata"): session_metadata,
    ("GET", "/api/flows/sessions/{session_id}/resources/{name}"): resource_route,
    ("GET", "/api/flows/sessions/{session_id}/resources/{name}/content"): content_route,
    ("GET", "/api/flows/users/me/stream"): user_stream,
    ("GET", "/api/w/{workspace}/resources/get_value_interpolated/{path:path}"): wmill_path_route(
        "get_value_interpolated"
    ),
    ("GET", "/api/w/{workspace}/resources/get_value/{path:path}"): wmill_path_route("get_value"),
    ("GET", "/api/w/{workspace}/resources/get/{path:path}"): wmill_path_route("get"),
    ("GET", "/api/w/{workspace}/resources/exists/{path:path}"): wmill_path_route("exists"),
    ("POST", "/api/w/{workspace}/resources/create"): wmill_create,
    ("POST", "/api/w/{workspace}/resources/update_value/{path:path}"): wmill_path_route(
        "update_value", "POST"
    ),
    ("GET", "/api/w/{workspace}/jobs_u/get_root_job_id/{job_id}"): wmill_workspace_route(
        "jobs_u/get_root_job_id/j1"
    ),
    ("GET", "/api/w/{workspace}/jobs/flow/user_states/{flow_run_id}/{key:path}"): (
        wmill_workspace_route("jobs/flow/user_states/r1/k")
    ),
    ("POST", "/api/w/{workspace}/jobs/flow/user_states/{flow_run_id}/{key:path}"): (
        wmill_workspace_route("jobs/flow/user_states/r1/k", "POST")
    ),
}


def case_for(method: str, path: str) -> Case | None:
    if method == "POST" and re.fullmatch(r"/api/flows/[^/{]+/actions/[^/{]+", path):
        return action_case(path)  # the documented route of one action
    return CASES.get((method, path))


# The route table of the app under test, read at collection time.
_ROUTES = route_table(create_app(FlowServer([lab_flow()], store="memory://", auth=TOKENS)))
_GUARDED = [r for r in _ROUTES if r not in PUBLIC]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    gate = Gate()
    gate.open()  # the slow action never waits here
    store = f"sqlite:///{tmp_path_factory.mktemp('authz') / 'authz.db'}"
    server = FlowServer([lab_flow(gate)], store=store, auth=TOKENS)
    with serve_in_thread(create_app(server)) as base:
        alice = httpx.Client(base_url=base, headers=HEADERS["owner"], timeout=10)
        first = alice.post(
            "/api/flows/lab/actions/bump",
            json={"input": {"amount": 1, "secret": SECRET}, "projectId": "p1"},
        ).json()
        sid = first["sessionId"]
        for action, input in (
            ("write_doc", {"title": "visible", "hidden": SECRET, "content": "text"}),
            ("add_note", {"key": "n.md", "title": "note", "secret": SECRET, "body": "b"}),
        ):
            ran = alice.post(
                f"/api/flows/lab/actions/{action}", json={"input": input, "sessionId": sid}
            )
            assert ran.status_code == 200, ran.text
        made = alice.post(
            "/api/w/p1/resources/create",
            json={"path": "u/alice/secret", "value": {"token": WM_SECRET}},
        )
        assert made.status_code == 201, made.text
        shared = alice.post(
            "/api/w/p1/resources/create", json={"path": "f/team/shared", "value": 1}
        )
        assert shared.status_code == 201
        alice.close()
        world = World(base, sid, first["requestId"])
        yield world
        if world.client is not None:
            world.client.close()
        # Nothing an attacker sent changed alice's objects.
        with httpx.Client(base_url=base, headers=HEADERS["owner"], timeout=10) as check:
            snap = check.get(f"/api/flows/sessions/{sid}/state").json()
            assert snap["clientData"]["session"]["count"] >= 1
            value = check.get("/api/w/p1/resources/get_value/u/alice/secret")
            assert value.status_code == 200


def test_every_route_has_an_authorization_case() -> None:
    missing = [r for r in _GUARDED if case_for(*r) is None]
    assert not missing, (
        f"routes without an authorization case: {missing}; add each to CASES (or, if it "
        "serves nothing user-specific and needs no token, to PUBLIC)"
    )
    stale = [key for key in CASES if key not in _ROUTES]
    assert not stale, f"CASES lists routes the app no longer serves: {stale}"
    assert len(_GUARDED) >= 27  # the route table was read (not an empty walk)


def _check(w: World, probe: Probe, actor: str) -> None:
    response = w.call(probe, actor)
    where = f"{actor}: {probe.method} {probe.url} {probe.body!r} → {response.text[:300]}"
    if actor == "anonymous":
        assert response.status_code == 401, where
        assert response.json()["error"]["code"] == "auth_error", where
        return
    assert response.status_code == probe.status, where
    if probe.code is not None:
        assert response.json()["error"]["code"] == probe.code, where
    if probe.absent is not None:
        assert probe.absent not in response.text, where


@pytest.mark.parametrize("actor", ATTACKERS)
@pytest.mark.parametrize(("method", "path"), _GUARDED, ids=[f"{m} {p}" for m, p in _GUARDED])
def test_matrix(world: World, method: str, path: str, actor: str) -> None:
    case = case_for(method, path)
    assert case is not None, f"{method} {path} has no authorization case"
    probes = case(world, "second_user" if actor == "anonymous" else actor)
    assert probes, f"{method} {path}: no probe for {actor}"
    for probe in probes:
        _check(world, probe, actor)


@pytest.mark.parametrize(("method", "path"), _GUARDED, ids=[f"{m} {p}" for m, p in _GUARDED])
def test_owner_control(world: World, method: str, path: str) -> None:
    """The owner does get in: the attackers' 404s are refusals, not broken probes."""
    case = case_for(method, path)
    assert case is not None
    for probe in case(world, "owner"):
        _check(world, probe, "owner")


def test_public_routes_need_no_token(world: World) -> None:
    pages = world.call(Probe("GET", "/"), "anonymous").text
    pages += world.call(Probe("GET", "/docs"), "anonymous").text
    for method, path in sorted(PUBLIC):
        url = path
        if method == "MOUNT":  # a file of the mount that the page or the API docs load
            found = re.search(re.escape(path) + r"/[^\"'?#\s]+", pages)
            assert found, f"no page references a file under {path}"
            url = found.group(0)
        response = world.call(Probe("GET", url), "anonymous")
        assert response.status_code == 200, url


def test_no_planted_value_in_any_byte_sent(world: World) -> None:
    """Runs last in this module: every answer of every test above, plus live SSE of a run
    that writes the secrets, never carries them (WM_SECRET only ever to alice)."""
    live = world.call(
        Probe(
            "POST",
            "/api/flows/lab/actions/bump",
            {"input": {"amount": 1, "secret": f"{SECRET}-again"}, "sessionId": world.session},
            sse=True,
            sse_to_end=True,
            headers={"Accept": "text/event-stream"},
        ),
        "owner",
    )
    assert '"type":"request.completed"' in live.text and '"fields":["secret"]' in live.text
    assert len(world.received) > 100  # the matrix ran before this test
    for actor, text in world.received:
        assert SECRET not in text, (actor, text[:500])
        if actor != "owner":
            assert WM_SECRET not in text, (actor, text[:500])
    # Not vacuous: exposed client data and alice's own Windmill value did arrive.
    everything = "\n".join(text for _, text in world.received)
    assert '"title":"visible"' in everything and '"hits":' in everything
    assert any(WM_SECRET in text for actor, text in world.received if actor == "owner")
