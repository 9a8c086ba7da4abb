"""The wmill-compatible HTTP routes, in process: payloads, status codes, errors, versions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from flowstate import FlowServer, Identity, scripts
from flowstate.http import create_app
from flowstate.scripts import ScriptContext, use_context

AUTH = {"Authorization": "Bearer tok-alice"}


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'state.db'}"
    scripts.shutdown()


@pytest.fixture
async def client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with FlowServer([], store=url) as server:
        alice = Identity("alice", frozenset({"default", "acme", "other"}))
        app = create_app(server, auth={"tok-alice": alice}, max_body_bytes=2000)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fs") as http:
            yield http


def as_script(url: str, **fields: str) -> AbstractContextManager[ScriptContext]:
    return use_context(ScriptContext(store_url=url, **fields), export_env=False)


async def test_every_route_needs_a_token(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/w/default/resources/get_value_interpolated/u/a/x"),
        ("GET", "/api/w/default/resources/get/u/a/x"),
        ("GET", "/api/w/default/resources/exists/u/a/x"),
        ("POST", "/api/w/default/resources/create"),
        ("POST", "/api/w/default/resources/update_value/u/a/x"),
        ("GET", "/api/w/default/jobs_u/get_root_job_id/j1"),
        ("GET", "/api/w/default/jobs/flow/user_states/r1/k"),
        ("POST", "/api/w/default/jobs/flow/user_states/r1/k"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = await client.request(method, path, headers=headers, json={"value": 1})
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "auth_error"
            assert response.headers["www-authenticate"] == "Bearer"


async def test_create_get_update_a_resource(client: httpx.AsyncClient, url: str) -> None:
    base = "/api/w/acme/resources"
    response = await client.get(f"{base}/get/u/alice/db", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "resource_not_found",
        "message": 'resource "u/alice/db" does not exist in workspace "acme"',
    }
    assert (await client.get(f"{base}/exists/u/alice/db", headers=AUTH)).json() is False
    body = {"path": "u/alice/db", "value": {"host": "db1"}, "resource_type": "postgresql"}
    response = await client.post(f"{base}/create", json=body, headers=AUTH)
    assert (response.status_code, response.text) == (201, "u/alice/db")
    assert response.headers["x-flowstate-version"] == "1"
    response = await client.post(f"{base}/create", json=body, headers=AUTH)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "resource_already_exists"
    assert (await client.get(f"{base}/exists/u/alice/db", headers=AUTH)).json() is True
    response = await client.get(f"{base}/get/u/alice/db", headers=AUTH)
    assert response.json() == {
        "workspace_id": "acme",
        "path": "u/alice/db",
        "value": {"host": "db1"},
        "resource_type": "postgresql",
        "description": None,
        "is_oauth": False,
        "version": 1,
    }
    response = await client.post(
        f"{base}/update_value/u/alice/db", json={"value": {"host": "db2"}}, headers=AUTH
    )
    assert response.status_code == 200 and response.headers["x-flowstate-version"] == "2"
    for route in ("get_value", "get_value_interpolated"):
        response = await client.get(f"{base}/{route}/u/alice/db", headers=AUTH)
        assert response.json() == {"host": "db2"}
        assert response.headers["x-flowstate-version"] == "2"
    # The same record seen through flowstate.scripts: the type stayed, the version moved.
    with as_script(url, project="acme"):
        info = scripts.get_resource_info("u/alice/db")
    assert (info.value, info.version, info.resource_type) == ({"host": "db2"}, 2, "postgresql")


async def test_update_value_needs_an_existing_resource_and_honours_if_version(
    client: httpx.AsyncClient,
) -> None:
    base = "/api/w/default/resources"
    response = await client.post(f"{base}/update_value/u/alice/x", json={"value": 1}, headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == 'resource "u/alice/x" does not exist'
    await client.post(f"{base}/create", json={"path": "u/alice/x", "value": 1}, headers=AUTH)
    response = await client.post(
        f"{base}/update_value/u/alice/x?if_version=7", json={"value": 2}, headers=AUTH
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "concurrent_modification"
    assert "at version 1, not the expected version 7" in response.json()["error"]["message"]
    response = await client.post(
        f"{base}/update_value/u/alice/x?if_version=1", json={"value": 2}, headers=AUTH
    )
    assert response.headers["x-flowstate-version"] == "2"
    response = await client.post(
        f"{base}/update_value/u/alice/x?if_version=one", json={"value": 2}, headers=AUTH
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert "if_version must be a version number" in response.json()["error"]["message"]


async def test_bad_requests_are_rejected_and_write_nothing(client: httpx.AsyncClient) -> None:
    base = "/api/w/default/resources"
    cases = [
        (f"{base}/create", {"path": "u/../x", "value": 1}, 422, "invalid_key", '".." segments'),
        (f"{base}/create", {"value": 1}, 422, "invalid_key", '"path" must be a non-empty string'),
        (f"{base}/create", {"path": "u/alice/x", "value": 1, "resource_type": 3}, 422,
         "validation_error", '"resource_type" must be a non-empty string'),
        (f"{base}/create", [1], 422, "validation_error",
         'the body must be a JSON object {"path"'),
        (f"{base}/update_value/u/alice/x", {"val": 1}, 422, "validation_error",
         'the body must be a JSON object {"value"'),
    ]  # fmt: skip
    for path, body, status, code, fragment in cases:
        response = await client.post(path, json=body, headers=AUTH)
        assert response.status_code == status, (path, body, response.text)
        assert response.json()["error"]["code"] == code, (path, body, response.text)
        assert fragment in response.json()["error"]["message"], (path, body, response.text)
    response = await client.post(f"{base}/create", content=b"{nope", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert "request body is not valid JSON" in response.json()["error"]["message"]
    big = {"path": "u/alice/big", "value": "x" * 5000}
    response = await client.post(f"{base}/create", json=big, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "payload_too_large",
        "message": "the request body is larger than the limit of 2000 bytes",
    }
    response = await client.post(
        f"{base}/create", content=b'{"path": "u/alice/nan", "value": NaN}', headers=AUTH
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    for path in ("u/alice/x", "u/alice/big", "u/alice/nan"):
        assert (await client.get(f"{base}/exists/{path}", headers=AUTH)).json() is False
    response = await client.get(f"{base}/get/u/alice/x", headers={**AUTH})
    assert response.status_code == 404
    response = await client.get("/api/w/bad%01ws/resources/get/u/alice/x", headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_key"
    assert "workspace" in response.json()["error"]["message"]


async def test_flow_user_state_routes(client: httpx.AsyncClient, url: str) -> None:
    base = "/api/w/default/jobs/flow/user_states"
    assert (await client.get(f"{base}/run1/FOO", headers=AUTH)).json() is None
    response = await client.post(f"{base}/run1/FOO", json=[1, {"a": 2}], headers=AUTH)
    assert response.status_code == 200
    assert (await client.get(f"{base}/run1/FOO", headers=AUTH)).json() == [1, {"a": 2}]
    # wmill sends no body for set_flow_user_state(key, None): that stores null.
    await client.post(f"{base}/run1/BAR", headers=AUTH)
    await client.post(f"{base}/run1/FOO", headers=AUTH)
    assert (await client.get(f"{base}/run1/FOO", headers=AUTH)).json() is None
    assert (await client.get(f"{base}/run2/FOO", headers=AUTH)).json() is None
    await client.post(f"{base}/run2/FOO", json="two", headers=AUTH)
    with as_script(url, flow_run_id="run2"):
        assert scripts.get_flow_user_state("FOO") == "two"
        scripts.set_flow_user_state("FROM_SCRIPT", 5)
    assert (await client.get(f"{base}/run2/FROM_SCRIPT", headers=AUTH)).json() == 5


async def test_root_job_id_of_a_flow_step_is_its_flow_run(
    client: httpx.AsyncClient, url: str
) -> None:
    from flowstate.scripts import engine
    from flowstate.scripts.storage import record_job

    engine.call(url, lambda store: record_job(store, "default", "step-job", "flow-run"))
    route = "/api/w/default/jobs_u/get_root_job_id"
    assert (await client.get(f"{route}/step-job", headers=AUTH)).json() == "flow-run"
    assert (await client.get(f"{route}/lonely-job", headers=AUTH)).json() == "lonely-job"
    assert (
        await client.get("/api/w/other/jobs_u/get_root_job_id/step-job", headers=AUTH)
    ).json() == ("step-job")


async def test_scripts_and_http_share_states(client: httpx.AsyncClient, url: str) -> None:
    with as_script(url, username="alice", script_path="u/alice/etl"):
        scripts.set_state({"from": "script"})
    route = "/api/w/default/resources/get_value_interpolated/u/alice/etl/user"
    response = await client.get(route, headers=AUTH)
    assert response.json() == {"from": "script"}
    assert response.headers["x-flowstate-version"] == "1"
    response = await client.post(
        "/api/w/default/resources/update_value/u/alice/etl/user",
        json={"value": {"from": "http"}},
        headers=AUTH,
    )
    with as_script(url, username="alice", script_path="u/alice/etl"):
        assert scripts.get_state() == {"from": "http"}
        assert scripts.get_state_version() == 2
