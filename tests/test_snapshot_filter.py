"""The snapshot's ``clientData`` filter: only the selected client-data names come
back, a bare name means session, unselected derived functions are not computed, and a typo is a
422 naming the name (never an empty answer that looks like missing data)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from flowstate import (
    ClientConfig,
    Context,
    FlowServer,
    Identity,
    ResourceClient,
    ScopeConfig,
    StateValidationError,
    define_flow,
    define_resource,
    handler,
)
from flowstate.http import create_app

# Naming a project needs membership: alice belongs to p1.
TOKENS: dict[str, str | Identity] = {
    "tok-alice": Identity("alice", frozenset({"p1"})),
    "tok-bob": "bob",
}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


class S(BaseModel):
    a: int = 0
    b: str = ""
    secret: str = ""


class U(BaseModel):
    theme: str = "light"
    lang: str = "en"


class P(BaseModel):
    hits: int = 0


class Doc(BaseModel):
    title: str = ""


calls: list[str] = []


def _expensive(view: Any) -> int:
    calls.append("expensive")
    a: int = view.state.a
    return a * 100


@handler(name="go", session_state=S, user_state=U, project_state=P)
async def go(input: Any, ctx: Context) -> None:
    await ctx.session.patch_state(a=2, b="hé ✓", secret="TOPSECRET")
    await ctx.user.patch_state(theme="dark", lang="fr")
    if ctx.project is not None:
        await ctx.project.inc_state(hits=1)
    await ctx.session.resources.doc.patch_state(title="t")


def make_server() -> FlowServer:
    flow = define_flow(
        "f",
        {"go": go},
        session=ScopeConfig(
            resources={"doc": define_resource(Doc, client=ResourceClient(expose=["title"]))},
            client=ClientConfig(expose=["a", "b"], derived={"big": _expensive}),
        ),
        user=ScopeConfig(client=ClientConfig(expose=["theme", "lang"])),
        project=ScopeConfig(client=ClientConfig(expose=["hits"])),
    )
    return FlowServer([flow], store="memory://", auth=TOKENS)


@pytest.fixture
async def http() -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    server = make_server()
    transport = httpx.ASGITransport(app=create_app(server))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        run = await client.post(
            "/api/flows/f/actions/go", json={"input": None, "projectId": "p1"}, headers=ALICE
        )
        assert run.status_code == 200, run.text
        yield client, run.json()["sessionId"]
    await server.aclose()


async def state(client: httpx.AsyncClient, sid: str, query: str | None) -> httpx.Response:
    params = None if query is None else {"clientData": query}
    return await client.get(f"/api/flows/sessions/{sid}/state", params=params, headers=ALICE)


async def test_unfiltered_snapshot_has_everything(http: tuple[httpx.AsyncClient, str]) -> None:
    client, sid = http
    body = (await state(client, sid, None)).json()
    assert body["clientData"] == {
        "session": {"a": 2, "b": "hé ✓", "big": 200},
        "user": {"theme": "dark", "lang": "fr"},
        "project": {"hits": 1},
    }
    assert body["resources"] == {"session": {"doc": {"clientData": {"title": "t"}}}}


async def test_filter_returns_only_the_listed_names(http: tuple[httpx.AsyncClient, str]) -> None:
    client, sid = http
    response = await state(client, sid, "session.a,user.lang")
    assert response.status_code == 200
    assert response.json() == {
        "sessionId": sid,
        "flowKind": "f",
        "clientData": {"session": {"a": 2}, "user": {"lang": "fr"}},
    }


async def test_bare_name_means_session_and_org_means_project(
    http: tuple[httpx.AsyncClient, str],
) -> None:
    client, sid = http
    body = (await state(client, sid, "b, org.hits")).json()
    assert body["clientData"] == {"session": {"b": "hé ✓"}, "project": {"hits": 1}}


async def test_unselected_derived_functions_are_not_computed(
    http: tuple[httpx.AsyncClient, str],
) -> None:
    client, sid = http
    calls.clear()
    assert (await state(client, sid, "user.theme")).json()["clientData"] == {
        "user": {"theme": "dark"}
    }
    assert calls == []
    assert (await state(client, sid, "big")).json()["clientData"] == {"session": {"big": 200}}
    assert calls == ["expensive"]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("session.secret", '"session.secret": the session scope has no client data named "secret"'),
        ("user.a", '"user.a": the user scope has no client data named "a"'),
        ("team.a", '"team.a": unknown scope "team"'),
        ("a,nope", '"nope": the session scope has no client data named "nope"'),
    ],
)
async def test_unknown_names_are_refused_with_the_name(
    http: tuple[httpx.AsyncClient, str], query: str, named: str
) -> None:
    client, sid = http
    response = await state(client, sid, query)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert named in error["message"]
    assert error["details"][0]["loc"] == ["query", "clientData"]
    assert "TOPSECRET" not in response.text


async def test_filter_does_not_open_another_users_session(
    http: tuple[httpx.AsyncClient, str],
) -> None:
    client, sid = http
    response = await client.get(
        f"/api/flows/sessions/{sid}/state", params={"clientData": "a"}, headers=BOB
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "session_not_found"


async def test_server_snapshot_takes_the_same_selection() -> None:
    async with make_server() as server:
        run = await server.run("f", "go", None, user_id="alice")
        snap = await server.snapshot("f", run.session_id, user_id="alice", client_data=["a"])
        assert snap["clientData"] == {"session": {"a": 2}}
        assert "resources" not in snap
        with pytest.raises(StateValidationError, match='no client data named "secret"'):
            await server.snapshot("f", run.session_id, user_id="alice", client_data=["secret"])


async def test_python_client_passes_the_selection() -> None:
    from flowstate.client import AsyncClient

    server = make_server()
    app = create_app(server)
    try:
        async with AsyncClient(app=app, token="tok-alice") as client:
            run = await client.run("f", "go", None)
            snap = await client.snapshot(run.session_id, client_data=["a", "user.theme"])
            assert snap["clientData"] == {"session": {"a": 2}, "user": {"theme": "dark"}}
            assert "resources" not in snap
            with pytest.raises(StateValidationError) as caught:
                await client.snapshot(run.session_id, client_data=["nope"])
            assert caught.value.errors[0]["loc"] == ["query", "clientData"]
    finally:
        await server.aclose()
