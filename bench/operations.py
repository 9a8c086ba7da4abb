"""Per-operation figures next to the raw floor, and whole runs next to the in-run rate.

Per backend, in paired rounds (the order rotates each round so a burst of outside load hits
every series alike): the raw floor's CAS loop, each state operation looped inside one
``server.run`` of the ``ops`` action on ``ctx.user`` (``inc``, ``patch``, ``push``,
``update``, ``set_record``), and whole runs (``server.run`` of ``bump``, one
``ctx.user.inc_state`` each, on one existing session). Ratios are taken per round and the
median reported: ``floor ÷ op`` (1.00 = as fast as the bare driver) and ``runs ÷ in-run inc``
(the fraction of the operation rate a whole run keeps).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flowstate import FlowServer

from .common import OPERATIONS, Backend, Sizes, median, pct
from .floors import Cell, Floor


async def in_run(
    server: FlowServer,
    op: str,
    seconds: float,
    user: str,
    *,
    limit: int | None = None,
    until: float | None = None,
) -> Cell:
    """One run of the ``ops`` action looping ``op`` on ``user``'s record."""
    payload: dict[str, Any] = {"op": op, "seconds": seconds}
    if until is not None:
        payload["until"] = until
    if limit is not None:
        payload["max"] = limit
    out = (await server.run("bench", "ops", payload, user_id=user)).output
    lat = out["lat"]
    retries = out["attempts"] - len(lat) - out["gave_up"] if op == "update" else 0
    return Cell(len(lat), out["elapsed"], lat, retries=max(0, retries), gave_up=out["gave_up"])


async def runs(server: FlowServer, seconds: float, user: str, session: str | None) -> Cell:
    """Sequential whole runs of ``bump`` on one session until ``seconds`` pass."""
    lat: list[float] = []
    start = time.perf_counter()
    stop = start + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        await server.run("bench", "bump", None, user_id=user, session_id=session)
        lat.append(time.perf_counter() - t0)
    return Cell(len(lat), time.perf_counter() - start, lat)


def summarize(cells: list[Cell]) -> dict[str, Any]:
    lat = [x for c in cells for x in c.latencies]
    return {
        "ops_per_s": median([c.rate for c in cells]),
        "p50_us": pct(lat, 0.5) * 1e6,
        "p99_us": pct(lat, 0.99) * 1e6,
        "rounds": [round(c.rate, 1) for c in cells],
        "ops": sum(c.ops for c in cells),
        "retries": sum(c.retries for c in cells),
    }


async def per_operation(b: Backend, sizes: Sizes) -> dict[str, Any]:
    """The per-operation and whole-run table rows of one backend."""
    floor = await Floor.open(b)
    tag = uuid.uuid4().hex[:6]
    async with b.server() as server:
        session = (await server.run("bench", "bump", None, user_id=f"run-{tag}")).session_id
        series = ["floor", *OPERATIONS, "run"] if floor else [*OPERATIONS, "run"]

        async def cell(name: str, seconds: float) -> Cell:
            if name == "floor":
                assert floor is not None
                return await floor.run(seconds)
            if name == "run":
                return await runs(server, seconds, f"run-{tag}", session)
            if name == "push":  # every round pushes onto a list of the same length
                await server.run("bench", "set_items", {"n": 0}, user_id=f"op-push-{tag}")
            return await in_run(server, name, seconds, f"op-{name}-{tag}")

        try:
            for name in series:  # warm-up: connections, statements, caches
                await cell(name, min(0.05, sizes.seconds))
            cells: dict[str, list[Cell]] = {name: [] for name in series}
            for r in range(sizes.rounds):
                turn = series[r % len(series) :] + series[: r % len(series)]
                for name in turn:
                    cells[name].append(await cell(name, sizes.seconds))
        finally:
            if floor:
                await floor.close()
    out: dict[str, Any] = {}
    for name in series:
        row = summarize(cells[name])
        if floor:
            row["floor_ratio"] = median(
                [f.rate / c.rate for f, c in zip(cells["floor"], cells[name], strict=True)]
            )
        out[name] = row
    out["run"]["vs_in_run_inc"] = median(
        [r.rate / i.rate for r, i in zip(cells["run"], cells["inc"], strict=True)]
    )
    return out
