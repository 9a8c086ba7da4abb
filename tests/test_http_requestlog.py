"""The per-request event buffers behind resumable SSE streams."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from flowstate.http._requestlog import EventsExpired, RequestLog, RequestLogs


def wire(rid: str, seq: int, type_: str = "state_change") -> dict[str, Any]:
    return {"type": type_, "seq": seq, "requestId": rid, "sessionId": "s"}


def started(logs: RequestLogs, rid: str, *, finish: bool) -> RequestLog:
    log = logs.new(user_id="u", flow_kind="k")
    log.append(wire(rid, 1, "request.created"))
    logs.add(log)
    if finish:
        log.append(wire(rid, 2, "request.completed"))
    return log


async def collect(log: RequestLog, after: int) -> list[int]:
    return [event.seq async for event in log.follow(after)]


async def test_follow_replays_then_waits_for_live_events_until_the_end() -> None:
    log = RequestLog(user_id="u", flow_kind="k")
    log.append(wire("r", 1, "request.created"))
    log.append(wire("r", 2))
    assert (log.request_id, log.session_id, log.finished) == ("r", "s", False)
    task = asyncio.create_task(collect(log, 1))
    await asyncio.sleep(0.01)
    assert not task.done()  # waiting for more
    log.append(wire("r", 3))
    log.append(wire("r", 4, "request.failed"))
    assert await asyncio.wait_for(task, 1) == [2, 3, 4]
    assert log.finished
    assert await collect(log, 0) == [1, 2, 3, 4]
    assert await collect(log, 4) == []


async def test_a_log_keeps_only_its_newest_events() -> None:
    log = RequestLog(user_id="u", flow_kind="k", max_events=3)
    for seq in range(1, 6):
        log.append(wire("r", seq))
    log.append(wire("r", 6, "request.completed"))
    # Resuming from before what is kept is an error, never a silent gap.
    with pytest.raises(EventsExpired, match=r"events 1\.\.3 are no longer buffered"):
        await collect(log, 0)
    assert await collect(log, 3) == [4, 5, 6]
    assert await collect(log, 5) == [6]


async def test_a_run_that_ends_without_a_terminal_event_ends_its_followers() -> None:
    log = RequestLog(user_id="u", flow_kind="k")
    log.append(wire("r", 1, "request.created"))
    task = asyncio.create_task(collect(log, 1))
    await asyncio.sleep(0.01)
    log.finish()
    assert await asyncio.wait_for(task, 1) == []


async def test_finished_logs_are_dropped_oldest_first_beyond_the_limit() -> None:
    logs = RequestLogs(keep_finished=2)
    running = started(logs, "running", finish=False)
    for rid in ("a", "b", "c"):
        started(logs, rid, finish=True)
    started(logs, "d", finish=False)  # adding prunes
    assert logs.get("a") is None
    assert [logs.get(r) is not None for r in ("b", "c", "d", "running")] == [True] * 4
    running.finish()
    logs.prune()
    assert logs.get("b") is None and logs.get("running") is not None
    assert len(logs) == 3


async def test_finished_logs_expire() -> None:
    logs = RequestLogs(keep_seconds=60)
    started(logs, "old", finish=True)
    started(logs, "live", finish=False)
    logs.prune(time.monotonic() + 30)
    assert logs.get("old") is not None
    logs.prune(time.monotonic() + 61)
    assert logs.get("old") is None and logs.get("live") is not None
