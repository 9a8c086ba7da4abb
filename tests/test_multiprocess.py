"""No lost writes across OS processes sharing one SQLite file, through the public API."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flowstate import FlowServer, define_flow, handler

N = 60


class Tally(BaseModel):
    count: int = 0
    log: list[str] = Field(default_factory=list)


@handler(name="bump", user_state=Tally)
async def bump(input: Any, ctx: Any) -> None:
    await ctx.user.inc_state(count=1)
    await ctx.user.push_state("log", input["who"])


@handler(name="cas", user_state=Tally)
async def cas(input: Any, ctx: Any) -> None:
    await ctx.user.update_state(lambda s: {"count": s.count + 1})


FLOW = define_flow("tally", actions={"bump": bump, "cas": cas})


def worker(url: str, who: str, action: str) -> None:
    async def main() -> None:
        async with FlowServer([FLOW], store=url) as server:
            for _ in range(N):
                await server.run("tally", action, {"who": who}, user_id="shared")

    asyncio.run(main())


def _run_workers(url: str, action: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(url, who, action)) for who in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


async def _read(url: str) -> Tally:
    async with FlowServer([FLOW], store=url) as server:
        record = await server.store.read("user/shared/state")
        assert record is not None
        return Tally.model_validate(dict(record.fields))


def test_two_processes_inc_and_push_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    _run_workers(url, "bump")
    tally = asyncio.run(_read(url))
    assert tally.count == 2 * N
    assert sorted(tally.log) == ["p1"] * N + ["p2"] * N


def test_two_processes_compare_and_swap_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    _run_workers(url, "cas")
    assert asyncio.run(_read(url)).count == 2 * N
