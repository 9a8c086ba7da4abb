"""Sessions you can find (pages, metadata) and sessions that expire, on every backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from flowstate import (
    FlowServer,
    ScopeConfig,
    SessionNotFoundError,
    StateValidationError,
    define_flow,
    define_resource_collection,
    handler,
)
from flowstate.client import AsyncClient
from flowstate.http import create_app
from flowstate.stores import Store

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


class Count(BaseModel):
    n: int = 0


class Note(BaseModel):
    text: str = ""


@handler(name="bump")
async def bump(input: Any, ctx: Any) -> Any:
    await ctx.session.inc_state(n=1)
    if input == "note":
        await ctx.session.resources.notes.create("a", {"text": "hi"})
    return ctx.session.state.n


def flow(kind: str, ttl: timedelta | None = None) -> Any:
    notes = define_resource_collection("notes/*", Note)
    return define_flow(
        kind,
        actions={"bump": bump},
        session=ScopeConfig(state=Count, ttl=ttl, resources={"notes": notes}),
    )


async def test_sessions_page_by_id_and_kind(store: Store) -> None:
    server = FlowServer([flow("chat"), flow("admin")], store=store)
    for i in range(7):
        kind = "chat" if i % 2 == 0 else "admin"
        await server.run(kind, "bump", None, user_id="alice", session_id=f"s{i}")
    await server.run("chat", "bump", None, user_id="bob", session_id="b0")
    page, after = await server.list_sessions_page(user_id="alice", limit=3)
    assert [s.session_id for s in page] == ["s0", "s1", "s2"] and after == "s2"
    page, after = await server.list_sessions_page(user_id="alice", limit=3, after=after)
    assert [s.session_id for s in page] == ["s3", "s4", "s5"] and after == "s5"
    page, after = await server.list_sessions_page(user_id="alice", limit=3, after=after)
    assert [s.session_id for s in page] == ["s6"] and after is None
    chats, after = await server.list_sessions_page(user_id="alice", kind="chat", limit=2)
    assert [s.session_id for s in chats] == ["s0", "s2"] and after == "s2"
    chats, after = await server.list_sessions_page(
        user_id="alice", kind="chat", limit=2, after="s2"
    )
    assert [s.session_id for s in chats] == ["s4", "s6"] and after is None
    everything = await server.list_sessions(user_id="alice")
    assert len(everything) == 7
    assert [s.session_id for s in await server.list_sessions(user_id="bob")] == ["b0"]


async def test_session_metadata_merges_deletes_and_is_checked(store: Store) -> None:
    server = FlowServer([flow("chat")], store=store)
    await server.run("chat", "bump", None, user_id="alice", session_id="s1")
    info = await server.set_session_metadata(
        "s1", {"title": "Trip to Lisbon", "tags": ["travel"]}, user_id="alice"
    )
    assert info.metadata == {"title": "Trip to Lisbon", "tags": ["travel"]}
    info = await server.set_session_metadata("s1", {"tags": None, "pinned": True}, user_id="alice")
    assert info.metadata == {"title": "Trip to Lisbon", "pinned": True}
    assert (await server.get_session("s1", user_id="alice")).metadata == info.metadata
    listed = await server.list_sessions(user_id="alice")
    assert listed[0].metadata == info.metadata and listed[0].to_wire()["metadata"] == info.metadata
    with pytest.raises(SessionNotFoundError):
        await server.set_session_metadata("s1", {"title": "mine now"}, user_id="bob")
    with pytest.raises(StateValidationError, match="over the limit of 4096"):
        await server.set_session_metadata("s1", {"blob": "x" * 5000}, user_id="alice")
    with pytest.raises(StateValidationError, match="must be a JSON object"):
        await server.set_session_metadata("s1", ["title"], user_id="alice")  # type: ignore[arg-type]
    with pytest.raises(StateValidationError, match="at most 64 characters"):
        await server.set_session_metadata("s1", {"k" * 65: 1}, user_id="alice")
    with pytest.raises(StateValidationError, match="metadata"):
        await server.set_session_metadata("s1", {"x": float("nan")}, user_id="alice")
    assert (await server.get_session("s1", user_id="alice")).metadata == info.metadata
    # the state is untouched by metadata writes
    assert (await server.run("chat", "bump", None, user_id="alice", session_id="s1")).output == 2


async def test_concurrent_metadata_patches_all_land(store: Store) -> None:
    server = FlowServer([flow("chat")], store=store)
    await server.run("chat", "bump", None, user_id="alice", session_id="s1")
    await asyncio.gather(
        *(server.set_session_metadata("s1", {f"k{i}": i}, user_id="alice") for i in range(8))
    )
    meta = (await server.get_session("s1", user_id="alice")).metadata
    assert meta == {f"k{i}": i for i in range(8)}


async def test_an_expired_session_behaves_like_a_deleted_one(store: Store) -> None:
    server = FlowServer([flow("chat", ttl=timedelta(seconds=1))], store=store)
    await server.run("chat", "bump", "note", user_id="alice", session_id="s1")
    await server.run("chat", "bump", None, user_id="alice", session_id="s1")
    await asyncio.sleep(0.6)
    # activity keeps it alive
    assert (await server.run("chat", "bump", None, user_id="alice", session_id="s1")).output == 3
    await asyncio.sleep(0.6)
    assert (await server.get_session("s1", user_id="alice")).session_id == "s1"
    await asyncio.sleep(1.1)
    with pytest.raises(SessionNotFoundError):
        await server.get_session("s1", user_id="alice")
    with pytest.raises(SessionNotFoundError):
        await server.snapshot("chat", "s1", user_id="alice")
    assert await server.list_sessions(user_id="alice") == []
    # a run on the id starts a new, empty session (and removes the old one's records)
    assert (await server.run("chat", "bump", None, user_id="alice", session_id="s1")).output == 1
    assert await store.count("session/s1/c/") == 0
    # another user may take the id of an expired session too, as of a deleted one
    await asyncio.sleep(1.1)
    assert (await server.run("chat", "bump", None, user_id="bob", session_id="s1")).output == 1
    assert [s.session_id for s in await server.list_sessions(user_id="bob")] == ["s1"]


async def test_http_sessions_pages_and_metadata() -> None:
    server = FlowServer([flow("chat"), flow("admin")], store="memory://", auth=TOKENS)
    for i in range(5):
        await server.run("chat", "bump", None, user_id="alice", session_id=f"s{i}")
    await server.run("admin", "bump", None, user_id="alice", session_id="t0")
    app = create_app(server)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        page = (await http.get("/api/flows/sessions?limit=2", headers=ALICE)).json()
        assert [s["sessionId"] for s in page["sessions"]] == ["s0", "s1"]
        assert page["next"] == "s1"
        assert page["sessions"][0]["metadata"] == {}
        page = (
            await http.get(
                "/api/flows/sessions", params={"limit": 10, "after": "s1"}, headers=ALICE
            )
        ).json()
        assert [s["sessionId"] for s in page["sessions"]] == ["s2", "s3", "s4", "t0"]
        assert page["next"] is None
        kinds = (await http.get("/api/flows/sessions?kind=admin", headers=ALICE)).json()
        assert [s["sessionId"] for s in kinds["sessions"]] == ["t0"] and kinds["next"] is None
        bad = await http.get("/api/flows/sessions?limit=0", headers=ALICE)
        assert bad.status_code == 422
        patched = await http.patch(
            "/api/flows/sessions/s0/metadata", json={"title": "Plan", "tags": ["a"]}, headers=ALICE
        )
        assert patched.status_code == 200
        assert patched.json()["metadata"] == {"title": "Plan", "tags": ["a"]}
        patched = await http.patch(
            "/api/flows/sessions/s0/metadata", json={"tags": None}, headers=ALICE
        )
        assert patched.json()["metadata"] == {"title": "Plan"}
        got = (await http.get("/api/flows/sessions/s0", headers=ALICE)).json()
        assert got["metadata"] == {"title": "Plan"}
        other = await http.patch(
            "/api/flows/sessions/s0/metadata", json={"title": "x"}, headers=BOB
        )
        assert other.status_code == 404 and other.json()["error"]["code"] == "session_not_found"
        wrong = await http.patch("/api/flows/sessions/s0/metadata", json=[1], headers=ALICE)
        assert wrong.status_code == 422 and "JSON object" in wrong.json()["error"]["message"]
        big = await http.patch(
            "/api/flows/sessions/s0/metadata", json={"t": "y" * 5000}, headers=ALICE
        )
        assert big.status_code == 422 and big.json()["error"]["code"] == "validation_error"
        assert "Plan" not in (await http.get("/api/flows/sessions", headers=BOB)).text
    async with AsyncClient(app=app, token="tok-alice") as client:
        everything = await client.list_sessions()
        assert [s.session_id for s in everything] == ["s0", "s1", "s2", "s3", "s4", "t0"]
        assert everything[0].metadata == {"title": "Plan"}
        page, after = await client.list_sessions_page("chat", limit=4)
        assert len(page) == 4 and after == "s3"
        info = await client.set_session_metadata("s1", {"title": "Other"})
        assert info.metadata == {"title": "Other"}
    await server.aclose()


def test_metadata_size_limit_counts_utf8_bytes() -> None:
    from flowstate.sessions import MAX_METADATA_BYTES, merge_metadata

    merge_metadata({}, {"t": "é" * 2000})  # 4000 bytes + overhead: fits
    with pytest.raises(StateValidationError, match="over the limit"):
        merge_metadata({}, {"t": "é" * (MAX_METADATA_BYTES // 2)})
