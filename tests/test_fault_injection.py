"""Fault injection against real ``flowstate serve`` processes under concurrent HTTP load.

- ``kill -9`` of the server while clients write (SQLite and PostgreSQL): after a restart every
  acknowledged write is there.
- PostgreSQL connections of the server terminated mid-load, and a full outage (a TCP proxy in
  front of PostgreSQL stops and starts): the same process recovers by itself, every answer is
  200 or 503 ``store_unavailable``, nothing hangs, nothing acknowledged is lost.
- A session deleted while a run is in flight stays deleted over HTTP.

Bounded by default; ``FLOWSTATE_FAULT_BUDGET=N`` multiplies the rounds (release checks). The
totals are printed at the end of the run (see ``tests.faults.COUNTS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from flowstate import FlowServer
from flowstate.stores import open_store
from tests.conftest import postgres_url
from tests.fault_app import flow as fault_flow
from tests.faults import (
    COUNTS,
    FAULT_BUDGET,
    TcpProxy,
    terminate_backends,
    unique_app_name,
    via,
    with_options,
)

ALICE = {"Authorization": "Bearer fault-a"}
BOB = {"Authorization": "Bearer fault-b"}
CLIENTS = 6
ROUNDS = max(1, round(2 * FAULT_BUDGET))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    """One ``flowstate serve tests.fault_app:server`` process on ``store``."""

    def __init__(self, store: str, log: Path) -> None:
        self.store = store
        self.log = log
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api/flows"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        env = {
            **os.environ,
            "FLOWSTATE_TOKENS": "fault-a:alice,fault-b:bob",
            "FLOWSTATE_STORE": "",
            "PYTHONPATH": str(Path(__file__).parent.parent),
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "flowstate"),
                    "serve",
                    "tests.fault_app:server",
                    "--port",
                    str(self.port),
                    "--store",
                    self.store,
                    "--log-level",
                    "warning",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                assert self.proc.poll() is None, "the server exited:\n" + self.log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{self.url}/sessions", headers=ALICE)).status_code == 200:
                        return
                assert time.monotonic() < deadline, "the server did not start"
                await asyncio.sleep(0.1)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        COUNTS["kills"] += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.asynccontextmanager
async def serving(store: str, tmp_path: Path) -> AsyncIterator[Served]:
    served = Served(store, tmp_path / "serve.log")
    await served.start()
    try:
        yield served
    finally:
        served.stop()


class Load:
    """``CLIENTS`` clients, each writing increasing values to its own session until stopped.

    ``acked`` holds the values answered 200; ``statuses`` every other answer's status and
    code; a client stops at a transport error only when ``dead_ok`` (the server was killed).
    """

    def __init__(self, url: str, base: int, *, dead_ok: bool) -> None:
        self.url = url
        self.base = base
        self.dead_ok = dead_ok
        self.acked: dict[str, set[int]] = {f"c{i}": set() for i in range(CLIENTS)}
        self.failures: list[tuple[int, str]] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._client(sid)) for sid in self.acked]

    async def until_acked(self, n: int, timeout: float = 30) -> None:
        """Wait until ``n`` writes are acknowledged in all (the load is under way)."""
        deadline = time.monotonic() + timeout
        while sum(map(len, self.acked.values())) < n:
            assert time.monotonic() < deadline, f"fewer than {n} writes acknowledged"
            assert not any(t.done() for t in self.tasks), "a client stopped early"
            await asyncio.sleep(0.02)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 60)

    async def _client(self, sid: str) -> None:
        n = self.base
        async with httpx.AsyncClient(timeout=20) as http:
            while not self.stop.is_set():
                n += 1
                try:
                    answer = await http.post(
                        f"{self.url}/faults/actions/write",
                        json={"input": {"n": n}, "sessionId": sid},
                        headers=ALICE,
                    )
                except httpx.TimeoutException:
                    raise AssertionError("a request hung for 20 s") from None
                except httpx.TransportError:
                    if self.dead_ok:
                        return
                    raise
                if answer.status_code == 200:
                    assert answer.json()["output"] == n
                    self.acked[sid].add(n)
                else:
                    self.failures.append((answer.status_code, answer.json()["error"]["code"]))
                    await asyncio.sleep(0.02)


async def check_acknowledged(url: str, acked: dict[str, set[int]]) -> None:
    """Every acknowledged value is stored, exactly once, as read through a running server."""
    async with httpx.AsyncClient(timeout=20) as http:
        for sid, values in acked.items():
            answer = await http.post(
                f"{url}/faults/actions/read", json={"sessionId": sid}, headers=ALICE
            )
            assert answer.status_code == 200, answer.text
            seen = answer.json()["output"]["seen"]
            assert len(seen) == len(set(seen)), f"{sid}: a value was stored twice"
            lost = values - set(seen)
            COUNTS["writes checked"] += len(values)
            COUNTS["lost"] += len(lost)
            assert not lost, f"{sid}: {len(lost)} acknowledged writes lost: {sorted(lost)[:10]}"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_kill_9_under_load_loses_no_acknowledged_write(backend: str, tmp_path: Path) -> None:
    store = postgres_url() if backend == "postgres" else f"sqlite:///{tmp_path / 'k.db'}"
    rng = random.Random(9)
    acked: dict[str, set[int]] = {f"c{i}": set() for i in range(CLIENTS)}
    for round_ in range(ROUNDS):
        served = Served(store, tmp_path / "serve.log")
        await served.start()
        try:
            load = Load(served.url, round_ * 1_000_000, dead_ok=True)
            load.start()
            await load.until_acked(10 * CLIENTS)
            await asyncio.sleep(rng.uniform(0, 0.5))  # kill at a random point of the load
            served.kill9()
            await load.finish()
        finally:
            served.stop()
        assert load.failures == []
        assert sum(map(len, load.acked.values())) > 0, "no write was acknowledged"
        for sid, values in load.acked.items():
            acked[sid] |= values
    async with serving(store, tmp_path) as served:  # the restart
        await check_acknowledged(served.url, acked)


def _postgres_store(name: str, port: int | None = None) -> str:
    url = postgres_url()
    if port is not None:
        url = via(url, port)
    return with_options(url, application_name=name, connect_timeout="2", command_timeout="10")


async def test_terminated_postgres_connections_are_survived_by_the_same_process(
    tmp_path: Path,
) -> None:
    name = unique_app_name()
    async with serving(_postgres_store(name), tmp_path) as served:
        load = Load(served.url, 0, dead_ok=False)
        load.start()
        await load.until_acked(5 * CLIENTS)
        for _ in range(ROUNDS * 2):
            await asyncio.sleep(0.4)
            COUNTS["faults injected"] += await terminate_backends(name)
        before = sum(map(len, load.acked.values()))
        await load.until_acked(before + 5 * CLIENTS, timeout=15)  # writes resume
        await load.finish()
        assert {f for f in load.failures if f != (503, "store_unavailable")} == set()
        await check_acknowledged(served.url, load.acked)


async def test_a_postgres_outage_answers_503_fast_and_the_same_process_resumes(
    tmp_path: Path,
) -> None:
    proxy = TcpProxy()
    await proxy.start()
    try:
        async with serving(_postgres_store(unique_app_name(), proxy.port), tmp_path) as served:
            load = Load(served.url, 0, dead_ok=False)
            load.start()
            await load.until_acked(5 * CLIENTS)
            for _ in range(ROUNDS):
                await asyncio.sleep(0.5)
                failed = len(load.failures)
                await proxy.stop()
                COUNTS["faults injected"] += 1
                await asyncio.sleep(1.0)
                assert len(load.failures) > failed, "no request noticed the outage"
                await proxy.start()
            before = sum(map(len, load.acked.values()))
            await load.until_acked(before + 5 * CLIENTS, timeout=15)  # writes resume
            await load.finish()
            assert {f for f in load.failures if f != (503, "store_unavailable")} == set()
            await check_acknowledged(served.url, load.acked)
    finally:
        await proxy.stop()


@pytest.mark.parametrize("deleter", ["http", "other-process"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_session_deleted_while_its_run_is_in_flight_stays_deleted(
    backend: str, deleter: str, tmp_path: Path
) -> None:
    """The run is in the served process; the deletion comes over HTTP (same process) or from
    this test process's own FlowServer on the same database (another process)."""
    store = postgres_url() if backend == "postgres" else f"sqlite:///{tmp_path / 'd.db'}"
    async with serving(store, tmp_path) as served, httpx.AsyncClient(timeout=20) as http:
        slow = asyncio.create_task(
            http.post(
                f"{served.url}/faults/actions/slow",
                json={"input": 1.5, "sessionId": "d"},
                headers=ALICE,
            )
        )
        deadline = time.monotonic() + 10
        while (await http.get(f"{served.url}/sessions/d", headers=ALICE)).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the run has written its secret by now
        if deleter == "http":
            deleted = await http.delete(f"{served.url}/sessions/d", headers=ALICE)
            assert deleted.status_code in (200, 204), deleted.text
        else:
            async with FlowServer([fault_flow], store=store) as elsewhere:
                assert await elsewhere.delete_session("d", user_id="alice") is True
        answer = await slow
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "session_not_found"

        bob = await http.post(
            f"{served.url}/faults/actions/read", json={"sessionId": "d"}, headers=BOB
        )
        assert bob.status_code == 200 and bob.json()["output"]["seen"] == []
        gone = await http.get(f"{served.url}/sessions/d/state", headers=ALICE)
        assert gone.status_code == 404
    store_ = open_store(store)
    try:
        assert await store_.read("session/d/state") is None
    finally:
        await store_.aclose()
