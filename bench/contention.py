"""Contention: 1, 8 and 32 concurrent writers; throughput, p50/p99, retries, lost updates.

Scenarios per backend and writer count W (each a cell in paired rounds):

- ``runs, 1 user``: W tasks, each with its own session of one user, loop ``server.run(bump)``
  (one ``ctx.user.inc_state`` per run) — W writers on one record;
- ``runs, W users``: the same with one user per task — W writers on W records;
- ``inc in-run, 1 user``: W concurrent runs of ``ops`` looping ``inc_state`` on one user;
- ``update_state, 1 user``: the same with ``update_state`` (compare-and-swap, retried by
  flowstate: retries = extra calls of the update function; ``gave up`` = calls that raised
  ``ConcurrentModificationError`` after the scope's retry budget);
- ``raw CAS, 1 record``: the driver floor with W writers (SQLite: W threads, one connection
  each; PostgreSQL: W tasks on a pool as big as flowstate's).

Lost updates are verified, never assumed: the stored counter is read before and after each
cell and ``lost = calls that returned - (after - before)``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from flowstate import FlowServer

from .common import Backend, Sizes, median, pct
from .floors import Cell, Floor
from .operations import in_run

SCENARIOS = ("runs_one_user", "runs_own_users", "inc_one_user", "update_one_user", "floor")


async def _count(server: FlowServer, user: str) -> int:
    out = await server.run("bench", "read", None, user_id=user)
    return int(out.output["count"])


async def _runs_cell(
    server: FlowServer, users: list[str], sessions: list[str], seconds: float
) -> Cell:
    distinct = sorted(set(users))
    before = sum([await _count(server, u) for u in distinct])
    cell = Cell(0, 0.0)
    stop = time.perf_counter() + seconds

    async def writer(user: str, session: str) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await server.run("bench", "bump", None, user_id=user, session_id=session)
            cell.latencies.append(time.perf_counter() - t0)
            cell.ops += 1

    start = time.perf_counter()
    await asyncio.gather(*(writer(u, s) for u, s in zip(users, sessions, strict=True)))
    cell.seconds = time.perf_counter() - start
    after = sum([await _count(server, u) for u in distinct])
    cell.lost = cell.ops - (after - before)
    return cell


async def _in_run_cell(
    server: FlowServer, op: str, user: str, writers: int, seconds: float
) -> Cell:
    before = await _count(server, user)
    start = time.perf_counter()
    until = start + seconds
    parts = await asyncio.gather(
        *(in_run(server, op, seconds, user, until=until) for _ in range(writers))
    )
    elapsed = time.perf_counter() - start
    cell = Cell(
        sum(p.ops for p in parts),
        elapsed,
        [x for p in parts for x in p.latencies],
        retries=sum(p.retries for p in parts),
        gave_up=sum(p.gave_up for p in parts),
    )
    cell.lost = cell.ops - (await _count(server, user) - before)
    return cell


async def _at(
    server: FlowServer, floor: Floor | None, writers: int, tag: str, sizes: Sizes
) -> dict[str, dict[str, Any]]:
    """Every scenario with ``writers`` concurrent writers, in paired rounds."""
    hot = f"hot-{writers}-{tag}"
    own = [f"own-{writers}-{i}-{tag}" for i in range(writers)]
    hot_sessions, own_sessions = [], []
    for i in range(writers):  # sessions exist before timing starts
        res = await server.run("bench", "bump", None, user_id=hot)
        hot_sessions.append(res.session_id)
        res = await server.run("bench", "bump", None, user_id=own[i])
        own_sessions.append(res.session_id)
    scenarios = [s for s in SCENARIOS if s != "floor" or floor is not None]

    async def cell(name: str, seconds: float) -> Cell:
        if name == "runs_one_user":
            return await _runs_cell(server, [hot] * writers, hot_sessions, seconds)
        if name == "runs_own_users":
            return await _runs_cell(server, own, own_sessions, seconds)
        if name == "inc_one_user":
            return await _in_run_cell(server, "inc", hot, writers, seconds)
        if name == "update_one_user":
            return await _in_run_cell(server, "update", hot, writers, seconds)
        assert floor is not None
        return await floor.run(seconds, writers)

    for name in scenarios:  # warm-up
        await cell(name, 0.05)
    cells: dict[str, list[Cell]] = {name: [] for name in scenarios}
    for r in range(sizes.contention_rounds):
        turn = scenarios[r % len(scenarios) :] + scenarios[: r % len(scenarios)]
        for name in turn:
            cells[name].append(await cell(name, sizes.contention_seconds))
    out = {}
    for name in scenarios:
        lat = [x for c in cells[name] for x in c.latencies]
        out[name] = {
            "ops_per_s": median([c.rate for c in cells[name]]),
            "p50_us": pct(lat, 0.5) * 1e6,
            "p99_us": pct(lat, 0.99) * 1e6,
            "ops": sum(c.ops for c in cells[name]),
            "retries": sum(c.retries for c in cells[name]),
            "gave_up": sum(c.gave_up for c in cells[name]),
            "lost": sum(c.lost or 0 for c in cells[name]),
            "rounds": [round(c.rate, 1) for c in cells[name]],
        }
    return out


async def contention(b: Backend, sizes: Sizes) -> dict[str, Any]:
    """scenario -> writers -> figures, for one backend."""
    floor = await Floor.open(b)
    tag = uuid.uuid4().hex[:6]
    out: dict[str, Any] = {}
    try:
        async with b.server() as server:
            for writers in sizes.writers:
                for name, row in (await _at(server, floor, writers, tag, sizes)).items():
                    out.setdefault(name, {})[str(writers)] = row
    finally:
        if floor:
            await floor.close()
    return out
