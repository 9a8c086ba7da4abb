"""What clients see: expose, derived, resource client projections, the snapshot's shape."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from flowstate import (
    ClientConfig,
    DefinitionError,
    FlowServer,
    ResourceClient,
    ScopeConfig,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
)


class Session(BaseModel):
    mode: Literal["chat", "agent"] = "chat"
    messageCount: int = 0
    apiKey: str = ""


class Prefs(BaseModel):
    theme: str = "dark"
    token: str = ""


class Artifacts(BaseModel):
    byId: dict[str, dict[str, str]] = Field(default_factory=dict)
    order: list[str] = Field(default_factory=list)


class File(BaseModel):
    size: int = 0
    owner: str = ""
    secret: str = ""


SECRET = "sk-live-VERY-SECRET-1234"


async def write_everything(input: Any, ctx: Any) -> Any:
    await ctx.session.patch_state(mode="agent", messageCount=3, apiKey=SECRET)
    await ctx.user.patch_state(theme="light", token=SECRET)
    await ctx.session.resources.artifacts.patch_state(
        byId={"d1": {"title": "Design"}, "d2": {"title": "Plan"}}, order=["d1", "d2"]
    )
    await ctx.session.resources.hidden.patch_state(note=SECRET)
    files = ctx.session.resources.files
    await files.create("a.py", {"size": 10, "owner": "al", "secret": SECRET})
    await files.create("src/b.py", {"size": 20, "owner": "bo", "secret": SECRET})
    await ctx.user.resources.profile.patch_state(size=1, owner="me", secret=SECRET)
    return "ok"


def artifacts_list(view: Any) -> list[dict[str, str]]:
    art = view.resources["artifacts"]
    return [{"id": i, "title": art.byId[i].get("title", "Untitled")} for i in art.order]


def full_flow(**overrides: Any) -> Any:
    session = ScopeConfig(
        state=Session,
        resources={
            "artifacts": define_resource(
                Artifacts, client=ResourceClient(data=lambda s: {"count": len(s.order)})
            ),
            "hidden": define_resource(),
            "files": define_resource_collection(
                "files/**", File, client=ResourceClient(exclude=["secret"])
            ),
        },
        client=ClientConfig(
            expose=["mode"],
            derived={
                "artifactsList": artifacts_list,
                "messageCount": lambda view: view.state.messageCount,
                "stateType": lambda view: type(view.state).__name__,
            },
        ),
    )
    user = ScopeConfig(
        state=Prefs,
        resources={"profile": define_resource(File, client=ResourceClient(expose=["owner"]))},
        client={"expose": ["theme"]},
    )
    kwargs: dict[str, Any] = {"session": session, "user": user, **overrides}
    return define_flow("app", actions={"go": handler(name="w", execute=write_everything)}, **kwargs)


async def test_snapshot_shape_and_contents(store_url: str) -> None:
    async with FlowServer([full_flow()], store=store_url) as server:
        result = await server.run("app", "go", None, user_id="alice")
        snap = await server.snapshot("app", result.session_id, user_id="alice")
    assert snap == {
        "sessionId": result.session_id,
        "flowKind": "app",
        "clientData": {
            "session": {
                "mode": "agent",
                "artifactsList": [{"id": "d1", "title": "Design"}, {"id": "d2", "title": "Plan"}],
                "messageCount": 3,
                "stateType": "AppSessionState",
            },
            "user": {"theme": "light"},
        },
        "resources": {
            "session": {
                "artifacts": {"clientData": {"count": 2}},
                "files": {
                    "count": 2,
                    "items": [
                        {"key": "files/a.py", "clientData": {"size": 10, "owner": "al"}},
                        {"key": "files/src/b.py", "clientData": {"size": 20, "owner": "bo"}},
                    ],
                },
            },
            "user": {"profile": {"clientData": {"owner": "me"}}},
        },
    }
    assert SECRET not in repr(snap)


async def test_snapshot_of_a_fresh_session_shows_defaults_and_leaves_empty_scopes_out() -> None:
    async def noop(input: Any, ctx: Any) -> Any:
        return input

    flow = define_flow(
        "app",
        actions={"go": handler(name="n", execute=noop)},
        session={"state": Session, "client": {"expose": ["mode", "messageCount"]}},
        user={"state": Prefs},  # no client config: nothing of it is visible
        project={"state": Prefs, "client": {"expose": ["theme"]}},
    )
    async with FlowServer([flow], store="memory://") as server:
        info = await server.create_session("app", user_id="u")
        snap = await server.snapshot("app", info.session_id, user_id="u")
        assert snap == {
            "sessionId": info.session_id,
            "flowKind": "app",
            "clientData": {"session": {"mode": "chat", "messageCount": 0}},
        }
        with_project = await server.create_session("app", user_id="u", project_id="p")
        snap = await server.snapshot("app", with_project.session_id, user_id="u")
        assert snap["clientData"] == {
            "session": {"mode": "chat", "messageCount": 0},
            "project": {"theme": "dark"},
        }


async def test_a_flow_without_any_client_config_shows_nothing() -> None:
    async def write(input: Any, ctx: Any) -> Any:
        await ctx.session.patch_state(secret=SECRET)
        await ctx.session.resources.doc.patch_state(secret=SECRET)

    flow = define_flow(
        "app",
        actions={"go": handler(name="w", execute=write)},
        session={"resources": {"doc": define_resource()}},
    )
    async with FlowServer([flow], store="memory://") as server:
        result = await server.run("app", "go", None, user_id="u")
        snap = await server.snapshot("app", result.session_id, user_id="u")
    assert snap == {"sessionId": result.session_id, "flowKind": "app", "clientData": {}}


async def test_derived_functions_may_be_async_and_see_free_form_state_as_a_dict() -> None:
    seen: list[Any] = []

    async def derived(view: Any) -> Any:
        seen.append(view.state)
        return view.state.get("n", 0) * 2

    async def write(input: Any, ctx: Any) -> Any:
        await ctx.session.inc_state(n=21)

    flow = define_flow(
        "app",
        actions={"go": handler(name="w", execute=write)},
        session={"client_data": {"double": derived}},
    )
    async with FlowServer([flow], store="memory://") as server:
        result = await server.run("app", "go", None, user_id="u")
        snap = await server.snapshot("app", result.session_id, user_id="u")
    assert snap["clientData"] == {"session": {"double": 42}}
    assert seen == [{"n": 21}]


async def test_resource_client_data_gets_the_state_model() -> None:
    seen: list[Any] = []

    def project(state: Any) -> Any:
        seen.append(state)
        return {"owner": state.owner.upper()}

    async def write(input: Any, ctx: Any) -> Any:
        await ctx.project.resources.file.patch_state(owner="ann", secret=SECRET)

    flow = define_flow(
        "app",
        actions={"go": handler(name="w", execute=write)},
        project={"resources": {"file": define_resource(File, client=ResourceClient(data=project))}},
    )
    async with FlowServer([flow], store="memory://") as server:
        result = await server.run("app", "go", None, user_id="u", project_id="p")
        snap = await server.snapshot("app", result.session_id, user_id="u")
    assert snap["resources"] == {"project": {"file": {"clientData": {"owner": "ANN"}}}}
    assert type(seen[0]) is File


def test_resource_client_takes_one_projection() -> None:
    with pytest.raises(DefinitionError, match="takes one of data=, expose=, exclude="):
        ResourceClient(data=lambda s: s, expose=["a"])


async def test_snapshot_lists_at_most_snapshot_limit_items_but_counts_all() -> None:
    async def make(input: Any, ctx: Any) -> Any:
        for i in range(5):
            await ctx.session.resources.files.create(f"f{i}")

    flow = define_flow(
        "app",
        actions={"go": handler(name="m", execute=make)},
        session={
            "resources": {
                "files": define_resource_collection(
                    "files/*", File, client=ResourceClient(expose=["size"])
                )
            }
        },
    )
    async with FlowServer([flow], store="memory://", snapshot_limit=2) as server:
        result = await server.run("app", "go", None, user_id="u")
        snap = await server.snapshot("app", result.session_id, user_id="u")
    files = snap["resources"]["session"]["files"]
    assert files["count"] == 5
    assert [i["key"] for i in files["items"]] == ["files/f0", "files/f1"]
