"""OpenAPI-driven fuzzing (schemathesis over /openapi.json) of the in-process app: every route,
valid and invalid requests, no answer is a 5xx and none hangs.

The budget is ``$FLOWSTATE_FUZZ_EXAMPLES`` examples per route and generation mode (default 8,
about 500 requests in about a minute); release checks run it with more (see
docs/security.md). The number of requests sent is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowstate import FlowServer
from flowstate.client import StreamingASGITransport
from flowstate.http import create_app

from .conftest import SUITE_COUNTS
from .http_support import Gate, lab_flow

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.generation import GenerationMode  # noqa: E402

EXAMPLES = int(os.environ.get("FLOWSTATE_FUZZ_EXAMPLES", "8"))
TIMEOUT = 20.0  # seconds one request may take before it counts as a hang
AUTH = {"Authorization": "Bearer tok-fuzz"}

_gate = Gate()
_gate.open()  # the lab's "slow" action must not wait for anyone
_server = FlowServer([lab_flow(_gate)], store="memory://", auth={"tok-fuzz": "f"})
_app = create_app(_server, max_body_bytes=20_000)
_schema = schemathesis.openapi.from_asgi("/openapi.json", _app)
_operations = [result.ok() for result in _schema.get_all_operations()]
_loop = asyncio.new_event_loop()  # one loop for the store and every request
_counts: dict[str, int] = {"requests": 0, "4xx": 0, "2xx": 0, "sse": 0, "500 by design": 0}
FAILING_ACTIONS = {"boom"}  # actions whose block raises on purpose
ERROR_ID = re.compile(r"internal error \(id [0-9a-f]{6}\)")


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    _loop.run_until_complete(_server.aclose())
    SUITE_COUNTS.append(
        f"OpenAPI fuzz: {_counts['requests']} requests over {len(_operations)} routes "
        f"({_counts['2xx']} 2xx, {_counts['4xx']} 4xx, {_counts['sse']} streams, "
        f"{_counts['500 by design']} opaque 500s from blocks that raise on purpose), no other 5xx, "
        f"no hang (FLOWSTATE_FUZZ_EXAMPLES={EXAMPLES})"
    )


async def _send(kwargs: dict[str, Any]) -> tuple[int, str]:
    transport = StreamingASGITransport(_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
        request = client.build_request(**kwargs)
        response = await client.send(request, stream=True)
        try:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                _counts["sse"] += 1
                # A live stream need not end: its first bytes show it answered.
                async for _ in response.aiter_bytes():
                    break
                return response.status_code, ""
            body = await response.aread()
            return response.status_code, body.decode("utf-8", "replace")
        finally:
            await response.aclose()


def _request_kwargs(case: Any) -> dict[str, Any]:
    headers = {**{k: str(v) for k, v in (case.headers or {}).items()}, **AUTH}
    kwargs: dict[str, Any] = {
        "method": case.method.upper(),
        "url": case.formatted_path,
        "params": case.query or None,
        "headers": headers,
    }
    if case.body is not None and not isinstance(case.body, type(None)):
        try:
            kwargs["content"] = json.dumps(case.body).encode()
            headers["content-type"] = "application/json"
        except (TypeError, ValueError):
            kwargs["content"] = str(case.body).encode()
    return kwargs


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("operation", _operations, ids=lambda op: f"{op.method} {op.path}")
def test_no_route_answers_5xx_or_hangs(operation: Any, mode: Any) -> None:
    try:
        strategy = operation.as_strategy(generation_mode=mode)
    except Exception as exc:  # a route with nothing to negate (no parameters, no body)
        pytest.skip(f"no {mode} cases: {exc}")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize="FLOWSTATE_FUZZ_EXAMPLES" not in os.environ,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(strategy)
        kwargs = _request_kwargs(case)
        try:
            status, body = _loop.run_until_complete(asyncio.wait_for(_send(kwargs), TIMEOUT))
        except TimeoutError:
            pytest.fail(f"hang: {kwargs['method']} {kwargs['url']} took over {TIMEOUT} s")
        _counts["requests"] += 1
        if status >= 500 and kwargs["url"].rsplit("/", 1)[-1] in FAILING_ACTIONS:
            # Blocks that raise on purpose: a 500, but only the opaque error id.
            error = json.loads(body)["error"]
            assert error["code"] == "internal_error"
            assert ERROR_ID.fullmatch(error["message"]), body
            _counts["500 by design"] += 1
            return
        _counts["4xx" if 400 <= status < 500 else "2xx"] += 1
        assert status < 500, f"{kwargs['method']} {kwargs['url']} {kwargs} → {status} {body}"

    check()
