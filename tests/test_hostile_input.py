"""Hostile input and the limits (docs/security.md): every refusal is a 4xx with a clear message,
writes nothing and is the same on every backend; internal errors reach clients only as an error
id; nothing a client receives names a key or a value it cannot see."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, field_validator

from flowstate import (
    FlowServer,
    Identity,
    KeyPatternError,
    PublicError,
    ResourceClient,
    StateValidationError,
    define_flow,
    define_resource,
    define_resource_collection,
    handler,
)
from flowstate.http import create_app
from flowstate.limits import MAX_DEPTH, MAX_INT, MAX_KEY_BYTES
from flowstate.stores import Store
from flowstate.stores.base import prefix_end

from .http_support import parse_sse

TOKENS = {"tok-a": Identity("alice", frozenset({"ws"}))}  # a member of Windmill workspace "ws"
A = {"Authorization": "Bearer tok-a"}
SSE = {"Accept": "text/event-stream"}
SECRET = "SECRET-91c2"
ERROR_ID = re.compile(r"internal error \(id ([0-9a-f]{6})\)")

# Keys from the far end of Unicode: the last code point, the first after the surrogates, a
# supplementary-plane emoji and plain ASCII, each alone and as a prefix of more text.
FAR_KEYS = ["\U0010ffff", "\U0010ffffz", "\U0010ffff\U0010ffff", "\ue000", "😀x", "a", "zz"]


class Note(BaseModel):
    n: int = 0


class Account(BaseModel):
    level: int = 0
    pin: str = ""
    data: Any = None
    total: int = 0

    @field_validator("pin")
    @classmethod
    def four_digits(cls, value: str) -> str:
        if value and not (value.isdigit() and len(value) == 4):
            raise ValueError(f"pin {value!r} must be four digits")
        return value


async def bump(input: Any, ctx: Any) -> Any:
    return await ctx.session.inc_state(total=input)


async def put(input: Any, ctx: Any) -> Any:
    await ctx.session.patch_state(input)
    return ctx.session.version


async def make(input: Any, ctx: Any) -> Any:
    coll = ctx.session.resources[input["coll"]]
    for key in input["keys"]:
        await coll.create(key)
    return {"count": await coll.count(), "keys": await coll.list()}


async def content(input: Any, ctx: Any) -> Any:
    await ctx.session.resources.doc.write_content(input)


async def echo(input: Any, ctx: Any) -> Any:
    return input


async def deep_output(input: Any, ctx: Any) -> Any:
    await ctx.session.inc_state(total=1)
    value: Any = "leaf"
    for _ in range(input):
        value = [value]
    return value


async def fail(input: Any, ctx: Any) -> Any:
    if input == "public":
        raise PublicError("quota exceeded: try again tomorrow", code="quota", status=429)
    raise RuntimeError(f"database said: {SECRET}")


async def touch_hidden(input: Any, ctx: Any) -> Any:
    await ctx.session.resources.hidden.create(input)
    await ctx.session.resources.plan.patch_state(n=1)
    await ctx.session.resources.hidden.get(input + "-missing")


def hostile_flow() -> Any:
    actions = {
        name: handler(name=name, execute=fn)
        for name, fn in {
            "bump": bump,
            "put": put,
            "make": make,
            "content": content,
            "echo": echo,
            "deep_output": deep_output,
            "fail": fail,
            "touch_hidden": touch_hidden,
        }.items()
    }
    return define_flow(
        "h",
        actions=actions,
        session={
            "state": Account,
            "resources": {
                "capped": define_resource_collection(
                    "capped/**", Note, max_instances=5, client=ResourceClient()
                ),
                "lru": define_resource_collection(
                    "lru/*", Note, max_instances=3, eviction="lru", client=ResourceClient()
                ),
                "hidden": define_resource_collection("hidden/*", Note),
                "plan": define_resource(Note),
                "doc": define_resource(Note, client=ResourceClient(content=True)),
            },
        },
    )


@pytest.fixture
async def server(store_url: str) -> AsyncIterator[FlowServer]:
    async with FlowServer([hostile_flow()], store=store_url, auth=TOKENS) as srv:
        yield srv


@pytest.fixture
async def http(server: FlowServer) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(server, max_body_bytes=100_000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=A) as client:
        yield client


async def state_of(server: FlowServer, sid: str) -> tuple[dict[str, Any], int]:
    record = await server.store.read(f"session/{sid}/state")
    return ({}, 0) if record is None else (dict(record.fields), record.version)


# ------------------------------------------------------------------ defect 4: U+10FFFF keys


def test_prefix_end_is_the_successor_of_the_prefix() -> None:
    assert prefix_end("a/") == "a0"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"  # the surrogates are skipped
    for prefix in ["", "a", "a/", "\U0010ffff", "x\U0010ffff\U0010ffff", "😀"]:
        end = prefix_end(prefix)
        for key in FAR_KEYS + [prefix + k for k in FAR_KEYS]:
            assert key.startswith(prefix) == (prefix <= key < end), (prefix, key)


async def test_scan_and_count_see_keys_at_the_end_of_unicode(store: Store) -> None:
    from flowstate.ops import Change, FieldOp
    from flowstate.schema import Schema

    keys = [f"p/{k}" for k in FAR_KEYS] + ["p\U0010ffff", "q"]
    for key in keys:
        await store.apply(key, Change(Schema(None), ops=(FieldOp("set", "v", 1),)))
    under = sorted(k for k in keys if k.startswith("p/"))
    assert await store.scan("p/") == under
    assert await store.count("p/") == len(under)
    assert await store.scan("p/\U0010ffff") == [k for k in under if k.startswith("p/\U0010ffff")]
    assert await store.count("p/\U0010ffff") == 3
    assert await store.scan("") == sorted(keys)
    assert await store.count("") == len(keys)
    assert await store.delete_prefix("p/\U0010ffff") == 3
    assert await store.count("p/") == len(under) - 3


async def test_a_cap_holds_for_keys_at_the_end_of_unicode(server: FlowServer) -> None:
    keys = [f"\U0010ffff{i}" for i in range(5)] + [f"\U0010ffff/{i}" for i in range(3)]
    out = await server.run("h", "make", {"coll": "capped", "keys": keys[:5]}, user_id="alice")
    assert out.output["count"] == 5
    assert out.output["keys"] == sorted(f"capped/{k}" for k in keys[:5])
    with pytest.raises(Exception, match="is full") as full:
        await server.run(
            "h",
            "make",
            {"coll": "capped", "keys": keys[5:]},
            user_id="alice",
            session_id=out.session_id,
        )
    assert full.value.__class__.__name__ == "CollectionFullError"
    stored = await server.store.count(f"session/{out.session_id}/c/capped/")
    assert stored == 5
    lru = await server.run(
        "h",
        "make",
        {"coll": "lru", "keys": ["\U0010ffff", "\U0010ffffa", "\U0010ffffb", "z"]},
        user_id="alice",
    )
    assert lru.output["count"] == 3
    assert len(lru.output["keys"]) == 3


# ------------------------------------------------------------------ defect 9: the limits


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"total": MAX_INT + 1}, "integers must lie within"),
        ({"total": -(MAX_INT + 1)}, "integers must lie within"),
        ({"data": 10**5000}, "integers must lie within"),
        ({"data": {"k": [MAX_INT + 1]}}, "integers must lie within"),
        ({"pin": "12\x0034"}, "NUL"),
        ({"data": "a\ud800b"}, "lone surrogate"),
        ({"data": {"k\ud800": 1}}, "lone surrogate"),
        ({"data": {"a\x00": 1}}, "NUL"),
    ],
)
async def test_state_limits_refuse_and_write_nothing(
    server: FlowServer, fields: dict[str, Any], rule: str
) -> None:
    ok = await server.run("h", "put", {"level": 1}, user_id="alice")
    before = await state_of(server, ok.session_id)
    with pytest.raises(StateValidationError, match=re.escape(rule)):
        await server.run("h", "put", fields, user_id="alice", session_id=ok.session_id)
    assert await state_of(server, ok.session_id) == before


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


async def test_nesting_is_limited_to_64_levels(server: FlowServer) -> None:
    ok = await server.run("h", "put", {"data": nested(MAX_DEPTH)}, user_id="alice")
    assert (await state_of(server, ok.session_id))[0]["data"] == nested(MAX_DEPTH)
    with pytest.raises(StateValidationError, match="nest deeper than 64 levels"):
        await server.run(
            "h", "put", {"data": nested(MAX_DEPTH + 1)}, user_id="alice", session_id=ok.session_id
        )
    with pytest.raises(StateValidationError, match="nest deeper than 64 levels"):
        await server.run("h", "put", {"data": nested(5000)}, user_id="alice")


async def test_inc_state_past_the_integer_range_writes_nothing(server: FlowServer) -> None:
    ok = await server.run("h", "bump", MAX_INT - 1, user_id="alice")
    assert await state_of(server, ok.session_id) == ({"total": MAX_INT - 1}, 1)
    await server.run("h", "bump", 1, user_id="alice", session_id=ok.session_id)
    for amount in (1, 10**4400, MAX_INT):
        with pytest.raises(StateValidationError, match="integers must lie within"):
            await server.run("h", "bump", amount, user_id="alice", session_id=ok.session_id)
    assert await state_of(server, ok.session_id) == ({"total": MAX_INT}, 2)


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("k" * (MAX_KEY_BYTES + 1), "longer than the limit of 512 UTF-8 bytes"),
        ("é" * 300, "the limit is 512"),  # 300 characters, 600 bytes
        ("a\ud800", "lone surrogate"),
        ("a\x00b", "control characters and NUL"),
        ("a\x7fb", "control characters and NUL"),
    ],
)
async def test_collection_keys_are_limited_the_same_everywhere(
    server: FlowServer, key: str, rule: str
) -> None:
    with pytest.raises(KeyPatternError, match=re.escape(rule)):
        await server.run("h", "make", {"coll": "capped", "keys": [key]}, user_id="alice")
    assert await server.store.scan("session/") == []
    longest = "é" * ((MAX_KEY_BYTES - len("capped/")) // 2)
    out = await server.run("h", "make", {"coll": "capped", "keys": [longest]}, user_id="alice")
    assert out.output["keys"] == [f"capped/{longest}"]


async def test_content_with_nul_or_a_lone_surrogate_is_refused(server: FlowServer) -> None:
    ok = await server.run("h", "content", "fine", user_id="alice")
    for text in ("a\x00b", "a\udfffb"):
        with pytest.raises(StateValidationError, match="content: strings must"):
            await server.run("h", "content", text, user_id="alice", session_id=ok.session_id)
    record = await server.store.read(f"session/{ok.session_id}/r/doc")
    assert record is not None and record.content == "fine" and record.version == 1


# ------------------------------------------------------------------ defect 9 over HTTP


async def post(http: httpx.AsyncClient, action: str, raw: str | bytes, **kw: Any) -> Any:
    return await http.post(
        f"/api/flows/h/actions/{action}",
        content=raw,
        headers={**A, "Content-Type": "application/json", **kw.pop("headers", {})},
        **kw,
    )


@pytest.mark.parametrize(
    ("raw", "status", "text"),
    [
        ('{"input": ' + "9" * 5000 + "}", 400, "not valid JSON"),
        ('{"input": ' + "[" * 30_000 + "]" * 30_000 + "}", 400, "nests deeper"),
        ('{"input": ' + "[" * 70 + "]" * 70 + "}", 422, "nest deeper than 64 levels"),
        ('{"input": "\\ud800"}', 422, "lone surrogate"),
        ('{"input": {"\\udc00": 1}}', 422, "lone surrogate"),
        (b'{"input": "\xff"}', 400, "not valid JSON"),
        ('{"input": 1, "sessionId": "a/b"}', 422, "sessionId"),
        ('{"input": 1, "sessionId": "' + "s" * 513 + '"}', 422, "sessionId"),
    ],
)
async def test_bad_bodies_answer_4xx_and_write_nothing(
    http: httpx.AsyncClient, server: FlowServer, raw: str, status: int, text: str
) -> None:
    response = await post(http, "echo", raw)
    assert response.status_code == status, response.text
    assert text in response.text
    assert response.headers.get("connection") != "close"
    assert await server.store.scan("session/") == []


async def test_integer_overflow_and_surrogates_in_state_over_http(
    http: httpx.AsyncClient, server: FlowServer
) -> None:
    first = (await post(http, "bump", str(MAX_INT).join(['{"input": ', "}"]))).json()
    sid = first["sessionId"]
    response = await post(http, "bump", json.dumps({"input": 1, "sessionId": sid}))
    assert response.status_code == 422
    assert "integers must lie within" in response.json()["error"]["message"]
    response = await post(http, "put", json.dumps({"input": {"data": "x\x00"}, "sessionId": sid}))
    assert response.status_code == 422
    assert await state_of(server, sid) == ({"total": MAX_INT}, 1)


async def test_output_too_deep_to_serialise_is_a_4xx(
    http: httpx.AsyncClient, server: FlowServer
) -> None:
    response = await post(http, "deep_output", '{"input": 3000}')
    assert response.status_code == 422
    assert "nest deeper than 128 levels" in response.json()["error"]["message"]
    assert (await state_of(server, response.json()["sessionId"]))[0] == {"total": 1}
    ok = await post(http, "echo", '{"input": "\\u0000 is fine in an input"}')
    assert ok.status_code == 200 and ok.json()["output"] == "\x00 is fine in an input"


async def test_non_ascii_digits_and_huge_numbers_in_headers_and_queries(
    http: httpx.AsyncClient,
) -> None:
    body = (await post(http, "echo", '{"input": 1}')).json()
    rid = body["requestId"]
    stream = f"/api/flows/h/requests/{rid}/stream"
    # A header value arrives as latin-1 text: b"\xb2" is "²" to the server.
    for bad in (
        b"\xb2",
        f"{rid}:²".encode("latin-1"),
        f"{rid}:{'9' * 5000}".encode(),
        "٣".encode(),
    ):
        response = await http.get(stream, headers=[(b"Last-Event-ID", bad)])
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid_last_event_id"
    url = "/api/w/ws/resources/update_value/f/x/state"
    for bad_version in ("²", "9" * 5000, "-1"):
        response = await http.post(url, params={"if_version": bad_version}, json={"value": 1})
        assert response.status_code == 422, (bad_version, response.text)
        assert "if_version must be a version number" in response.json()["error"]["message"]


# ------------------------------------------------------------------ defect 8: no leaks


async def test_internal_errors_reach_clients_as_an_error_id(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="flowstate")
    response = await post(http, "fail", '{"input": "x"}')
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    match = ERROR_ID.fullmatch(error["message"])
    assert match is not None
    assert SECRET not in response.text
    # the log holds the detail under the same id
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert SECRET in str(logged[0].exc_info[1])
    # the SSE replay of the failed run carries the same opaque message
    frames = parse_sse(
        (await http.get(f"/api/flows/h/requests/{response.json()['requestId']}/stream")).text
    )
    assert frames[-1]["data"]["error"] == error
    live = await post(http, "fail", '{"input": "x"}', headers=SSE)
    assert SECRET not in live.text
    assert ERROR_ID.search(live.text)


async def test_a_public_error_reaches_the_client_as_raised(http: httpx.AsyncClient) -> None:
    response = await post(http, "fail", '{"input": "public"}')
    assert response.status_code == 429
    assert response.json()["error"] == {
        "code": "quota",
        "message": "quota exceeded: try again tomorrow",
    }


async def test_a_validator_message_with_the_value_is_not_forwarded(
    http: httpx.AsyncClient, server: FlowServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flowstate")
    response = await post(http, "put", json.dumps({"input": {"pin": SECRET}}))
    assert response.status_code == 422
    error = response.json()["error"]
    assert SECRET not in response.text
    assert error["details"] == [
        {
            "loc": ["pin"],
            "msg": "the value is invalid (the validator's message is kept in the server log)",
            "type": "value_error",
        }
    ]
    error_id = re.search(r"\(id ([0-9a-f]{6})\)", error["message"])
    assert error_id is not None and 'field "pin"' in error["message"]
    assert any(
        error_id.group(1) in r.getMessage() and SECRET in r.getMessage() for r in caplog.records
    )
    frames = parse_sse(
        (await http.get(f"/api/flows/h/requests/{response.json()['requestId']}/stream")).text
    )
    assert SECRET not in json.dumps(frames)
    # in-process code is trusted and reads the validator's own message
    with pytest.raises(StateValidationError, match=SECRET):
        await server.run("h", "put", {"pin": SECRET}, user_id="alice")


async def test_keys_of_invisible_resources_never_reach_clients(
    http: httpx.AsyncClient, server: FlowServer
) -> None:
    hidden_key = f"k-{SECRET}"
    response = await post(http, "touch_hidden", json.dumps({"input": hidden_key}), headers=SSE)
    assert SECRET not in response.text
    assert '"plan"' not in response.text  # an invisible static resource: no name either
    frames = parse_sse(response.text)
    changes = [f["data"] for f in frames if f["event"] == "resource_change"]
    assert changes == [
        {
            "type": "resource_change",
            "seq": c["seq"],
            "requestId": c["requestId"],
            "scope": "session",
            "changeType": t,
        }
        for c, t in zip(changes, ["created", "updated"], strict=True)
    ]
    assert frames[-1]["data"]["error"]["code"] == "resource_not_found"
    assert "(hidden key)" in frames[-1]["data"]["error"]["message"]
    # in-process, the run's events keep the keys (trusted code)
    with pytest.raises(Exception, match=SECRET):
        await server.run("h", "touch_hidden", hidden_key + "2", user_id="alice")
    events = [e async for e in server.stream("h", "touch_hidden", "k3", user_id="alice")]
    keys = [e.data["key"] for e in events if e.type == "resource_change"]
    assert keys == ["hidden/k3", "plan"]
    assert all("key" not in e.to_wire() for e in events if e.type == "resource_change")
