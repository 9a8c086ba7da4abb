"""Per-request event buffers, so a late or reconnecting client can resume a run's stream.

Each run started over HTTP gets a :class:`RequestLog`: the last ``max_events`` wire events of
the run, a finished flag, and a way to follow it (replay what is buffered after a given
``seq``, then wait for live events until ``request.completed`` / ``request.failed``).
:class:`RequestLogs` keeps the logs of running requests and of recently finished ones.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["TERMINAL_EVENTS", "RequestLog", "RequestLogs"]

TERMINAL_EVENTS = frozenset({"request.completed", "request.failed"})


class RequestLog:
    """The buffered events of one run (bounded: the oldest are dropped past ``max_events``)."""

    def __init__(self, *, user_id: str, flow_kind: str, max_events: int = 1000) -> None:
        self.user_id = user_id
        self.flow_kind = flow_kind
        self.request_id: str | None = None
        self.session_id: str | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.finished_at: float | None = None
        self.on_finish: Callable[[RequestLog], None] | None = None
        self._changed = asyncio.Event()

    @property
    def started(self) -> bool:
        return self.request_id is not None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def append(self, wire: dict[str, Any]) -> None:
        """Add one event (wire form); the first one names the request and its session."""
        if self.request_id is None:
            self.request_id = wire["requestId"]
            self.session_id = wire.get("sessionId")
        self.events.append(wire)
        if wire["type"] in TERMINAL_EVENTS:
            self.finish()
        self._wake()

    def finish(self) -> None:
        """Mark the run over (also called if it ends without a terminal event)."""
        if self.finished_at is None:
            self.finished_at = time.monotonic()
            if self.on_finish is not None:
                self.on_finish(self)
        self._wake()

    def _wake(self) -> None:
        # Waiters hold the event they saw; setting it and replacing it wakes each one once.
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Events with ``seq > after``: buffered ones first, then live ones until the end."""
        next_seq = after + 1
        while True:
            changed = self._changed
            for wire in list(self.events):
                if wire["seq"] >= next_seq:
                    next_seq = wire["seq"] + 1
                    yield wire
            if self.finished and (not self.events or self.events[-1]["seq"] < next_seq):
                return
            if changed is self._changed:
                await changed.wait()


class RequestLogs:
    """The logs of running requests plus recently finished ones, by request id.

    Finished logs are kept for ``keep_seconds`` and at most ``keep_finished`` of them (the
    oldest finished go first), so a client can resume a stream shortly after it ended;
    running logs are never dropped.
    """

    def __init__(
        self,
        *,
        max_events: int = 1000,
        keep_finished: int = 1000,
        keep_seconds: float = 600.0,
    ) -> None:
        self.max_events = max_events
        self.keep_finished = keep_finished
        self.keep_seconds = keep_seconds
        self._logs: dict[str, RequestLog] = {}
        self._finished: deque[tuple[float, str]] = deque()  # in the order they finished

    def __len__(self) -> int:
        return len(self._logs)

    def new(self, *, user_id: str, flow_kind: str) -> RequestLog:
        """A log for a run about to start; :meth:`add` it once its first event names it."""
        log = RequestLog(user_id=user_id, flow_kind=flow_kind, max_events=self.max_events)
        log.on_finish = self._finished_one
        return log

    def add(self, log: RequestLog) -> None:
        assert log.request_id is not None
        self._logs[log.request_id] = log
        self.prune()

    def get(self, request_id: str) -> RequestLog | None:
        return self._logs.get(request_id)

    def _finished_one(self, log: RequestLog) -> None:
        if log.request_id is not None and log.finished_at is not None:
            self._finished.append((log.finished_at, log.request_id))

    def prune(self, now: float | None = None) -> None:
        """Drop finished logs past ``keep_seconds``, then the oldest beyond ``keep_finished``."""
        now = time.monotonic() if now is None else now
        finished = self._finished
        while finished and (
            len(finished) > self.keep_finished or now - finished[0][0] > self.keep_seconds
        ):
            _, request_id = finished.popleft()
            self._logs.pop(request_id, None)
