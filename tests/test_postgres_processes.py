"""Two ``flowstate serve`` processes on one PostgreSQL database: no lost writes, shared events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from .test_cli_server import APP, free_port, running

pytestmark = pytest.mark.postgres

TOKEN = "two-process-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
PER_SERVER = 500


async def _user_changes(client: httpx.AsyncClient, base: str, seen: list[dict[str, Any]],
                        ready: asyncio.Event) -> None:
    async with client.stream("GET", f"{base}/users/me/stream") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith(":"):
                ready.set()
            elif line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                seen.append(event)
                if event["type"] == "state_change" and event["scope"] == "user":
                    return


def test_two_servers_share_one_database(postgres_store_url: str, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    args = [
        ["serve", APP, "--port", str(p), "--store", postgres_store_url] for p in ports
    ]
    bases = [f"http://127.0.0.1:{p}/api/flows" for p in ports]
    env = {"FLOWSTATE_TOKENS": f"{TOKEN}:local"}
    with running(args[0], tmp_path, env), running(args[1], tmp_path, env):

        async def main() -> None:
            # Idle connections expire before the server's 5 s keep-alive closes them (else a
            # reused connection may be reset under load: httpx.ReadError).
            limits = httpx.Limits(max_connections=32, keepalive_expiry=2.0)
            async with httpx.AsyncClient(headers=HEADERS, timeout=60, limits=limits) as client:
                created = await client.post(f"{bases[0]}/demo/sessions", json={})
                assert created.status_code in (200, 201), created.text
                session_id = created.json()["sessionId"]

                seen: list[dict[str, Any]] = []
                ready = asyncio.Event()
                watcher = asyncio.create_task(_user_changes(client, bases[0], seen, ready))
                await asyncio.wait_for(ready.wait(), 10)

                gate = asyncio.Semaphore(32)

                async def bump(base: str) -> int:
                    async with gate:
                        r = await client.post(
                            f"{base}/demo/actions/increment",
                            json={"input": {"amount": 1}, "sessionId": session_id},
                        )
                        return r.status_code

                codes = await asyncio.gather(
                    *(bump(bases[i % 2]) for i in range(2 * PER_SERVER))
                )
                assert codes.count(200) == 2 * PER_SERVER, sorted(set(codes))

                for base in bases:  # both processes read the same committed total
                    snap = await client.get(f"{base}/sessions/{session_id}/state")
                    assert snap.json()["clientData"]["session"]["messageCount"] == 2 * PER_SERVER

                # a user-scope write through server B reaches the stream open on server A
                theme = await client.post(
                    f"{bases[1]}/demo/actions/theme", json={"input": {"theme": "dark"}}
                )
                assert theme.status_code == 200, theme.text
                await asyncio.wait_for(watcher, 15)
                change = seen[-1]
                assert change["scope"] == "user" and change["fields"] == ["theme"]
                assert change["values"] == {"theme": "dark"}  # exposed, so it may travel

        asyncio.run(main())
