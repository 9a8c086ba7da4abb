"""The per-record size limit end to end (docs/security.md): ``FlowServer(max_record_bytes=)``
reaches the store it opens, and a run whose write would make a record too large answers 422
over HTTP with the record and the limit named, and writes nothing — on every backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from flowstate import (
    DefinitionError,
    FlowServer,
    Identity,
    StateValidationError,
    define_flow,
    handler,
)
from flowstate.http import create_app
from flowstate.stores import MemoryStore

TOKENS = {"tok-a": Identity("alice", frozenset())}
A = {"Authorization": "Bearer tok-a"}
LIMIT = 400


class Log(BaseModel):
    items: list[str] = []
    note: str = ""


async def push(input: Any, ctx: Any) -> Any:
    await ctx.session.push_state("items", input)
    return ctx.session.version


async def note(input: Any, ctx: Any) -> Any:
    await ctx.session.patch_state(note=input)
    return ctx.session.version


def log_flow() -> Any:
    return define_flow(
        "log",
        actions={
            "push": handler(name="push", execute=push),
            "note": handler(name="note", execute=note),
        },
        session={"state": Log},
    )


@pytest.fixture
async def server(store_url: str) -> AsyncIterator[FlowServer]:
    async with FlowServer(
        [log_flow()], store=store_url, auth=TOKENS, max_record_bytes=LIMIT
    ) as srv:
        yield srv


@pytest.fixture
async def http(server: FlowServer) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(server))
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=A) as client:
        yield client


async def run(http: httpx.AsyncClient, action: str, body: dict[str, Any]) -> httpx.Response:
    return await http.post(f"/api/flows/log/actions/{action}", content=json.dumps(body))


async def test_a_write_over_the_record_limit_answers_422_and_writes_nothing(
    http: httpx.AsyncClient, server: FlowServer
) -> None:
    assert server.store.max_record_bytes == LIMIT
    first = await run(http, "push", {"input": "x" * 80})
    assert first.status_code == 200, first.text
    sid = first.json()["sessionId"]
    key = f"session/{sid}/state"
    statuses = []
    for _ in range(6):  # 84 bytes a push: the fifth or so no longer fits
        response = await run(http, "push", {"input": "x" * 80, "sessionId": sid})
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
    assert statuses[-1] == 422 and set(statuses[:-1]) == {200}
    before = await server.store.read(key)
    assert before is not None
    rule = "the record would be larger than the limit of 400 bytes (max_record_bytes)"
    error = response.json()["error"]
    assert error["message"] == f'session state: field "(state)": {rule} (record_size)'
    assert error["details"] == [{"loc": [], "msg": rule, "type": "record_size"}]
    again = await run(http, "note", {"input": "n" * 100, "sessionId": sid})
    assert again.status_code == 422 and again.json()["error"] == error
    after = await server.store.read(key)
    assert after is not None and (after.version, after.fields) == (before.version, before.fields)
    assert len(after.fields["items"]) == len(statuses)
    # the same from Python, without HTTP
    with pytest.raises(StateValidationError) as exc:
        await server.run("log", "push", "x" * 80, session_id=sid, user_id="alice")
    assert str(exc.value) == (
        f'session state: record "{key}" would be larger than the limit of 400 bytes '
        "(max_record_bytes); nothing was written"
    )


async def test_max_record_bytes_goes_to_the_store_flowserver_opens() -> None:
    async with FlowServer([log_flow()], store="memory://") as default:
        assert default.store.max_record_bytes == 16 * 1024 * 1024
    with pytest.raises(DefinitionError, match="give it to the store you pass"):
        FlowServer([log_flow()], store=MemoryStore(), max_record_bytes=10)
    async with FlowServer([log_flow()], store=MemoryStore(max_record_bytes=10)) as own:
        assert own.store.max_record_bytes == 10
