"""Per-request event buffers, so a late or reconnecting client can resume a run's stream.

Each run started over HTTP gets a :class:`RequestLog`: the run's wire events (each encoded to
JSON once, as the SSE frame will carry it), a finished flag, and a way to follow it (replay
what is buffered after a given ``seq``, then wait for live events until ``request.completed``
/ ``request.failed``). :class:`RequestLogs` keeps the logs of running requests and of recently
finished ones within a memory budget in bytes: past it the oldest finished logs go first, then
the oldest events of the largest running logs. A client resuming from an event that is no
longer buffered gets :class:`EventsExpired`, never a silent gap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_REQUEST_LOG_BYTES",
    "EVENT_OVERHEAD_BYTES",
    "TERMINAL_EVENTS",
    "EventsExpired",
    "LoggedEvent",
    "RequestLog",
    "RequestLogs",
]

TERMINAL_EVENTS = frozenset({"request.completed", "request.failed"})
DEFAULT_REQUEST_LOG_BYTES = 64 * 1024 * 1024
EVENT_OVERHEAD_BYTES = 200
"""What one buffered event costs besides its JSON text (objects, deque slot), counted too."""

_encode = json.JSONEncoder(separators=(",", ":")).encode  # ASCII: len() is the size in bytes


class EventsExpired(Exception):
    """The events a follower asked for are no longer buffered (budget or event limit)."""


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One buffered event: ``data`` is its wire JSON (ASCII, so ``len`` is its size in bytes)."""

    seq: int
    type: str
    request_id: str
    data: str

    @classmethod
    def of(cls, wire: dict[str, Any]) -> LoggedEvent:
        return cls(int(wire["seq"]), str(wire["type"]), str(wire["requestId"]), _encode(wire))

    @property
    def size(self) -> int:
        return len(self.data) + EVENT_OVERHEAD_BYTES

    def wire(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


class RequestLog:
    """The buffered events of one run (bounded: the oldest are dropped past ``max_events``,
    or when the server's request-log budget needs the room)."""

    def __init__(self, *, user_id: str, flow_kind: str, max_events: int = 1000) -> None:
        self.user_id = user_id
        self.flow_kind = flow_kind
        self.max_events = max_events
        self.request_id: str | None = None
        self.session_id: str | None = None
        self.project_id: str | None = None  # the run's project: its stream needs membership
        self.events: deque[LoggedEvent] = deque()
        self.bytes = 0
        self.dropped_through = 0  # the highest seq no longer buffered (0: none dropped)
        self.finished_at: float | None = None
        self.on_finish: Callable[[RequestLog], None] | None = None
        self.on_grow: Callable[[RequestLog, int], None] | None = None
        self._changed: asyncio.Event | None = None  # created when a follower waits

    @property
    def started(self) -> bool:
        return self.request_id is not None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def append(self, wire: dict[str, Any]) -> LoggedEvent:
        """Add one event (wire form); the first one names the request and its session."""
        if self.request_id is None:
            self.request_id = wire["requestId"]
            self.session_id = wire.get("sessionId")
        event = LoggedEvent.of(wire)
        self.events.append(event)
        grown = event.size
        self.bytes += grown
        while len(self.events) > self.max_events:
            grown -= self._drop_oldest()
        if event.type in TERMINAL_EVENTS:
            self.finish()  # first, so that the budget below may count this log as finished
        if self.on_grow is not None:
            self.on_grow(self, grown)
        self._wake()
        return event

    def _drop_oldest(self) -> int:
        event = self.events.popleft()
        self.bytes -= event.size
        self.dropped_through = max(self.dropped_through, event.seq)
        return event.size

    def shed(self) -> int:
        """Drop the oldest buffered event to save memory, keeping the newest; bytes freed."""
        if len(self.events) <= 1:
            return 0
        freed = self._drop_oldest()
        self._wake()  # followers behind the dropped event must learn it is gone
        return freed

    def finish(self) -> None:
        """Mark the run over (also called if it ends without a terminal event)."""
        if self.finished_at is None:
            self.finished_at = time.monotonic()
            if self.on_finish is not None:
                self.on_finish(self)
        self._wake()

    def _wake(self) -> None:
        # Waiters hold the event they saw; setting it and dropping it wakes each one once.
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _waiter(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def check_available(self, after: int) -> None:
        """Raise :class:`EventsExpired` if events after ``after`` were dropped already."""
        if after < self.dropped_through:
            raise EventsExpired(
                f'request "{self.request_id}": events {after + 1}..{self.dropped_through} are no '
                "longer buffered (a run keeps at most its newest events, and finished runs "
                "within the server's request-log memory budget); resume from a later event id "
                "or fetch the session snapshot"
            )

    async def follow(self, after: int = 0) -> AsyncIterator[LoggedEvent]:
        """Events with ``seq > after``: buffered ones first, then live ones until the end.

        Raises :class:`EventsExpired` (before yielding, or later if a slow follower falls
        behind what the buffer keeps) instead of skipping events silently.
        """
        next_seq = after + 1
        while True:
            self.check_available(next_seq - 1)
            changed = self._waiter()
            for event in list(self.events):
                if event.seq >= next_seq:
                    self.check_available(next_seq - 1)
                    next_seq = event.seq + 1
                    yield event
            if self.finished and (not self.events or self.events[-1].seq < next_seq):
                return
            if changed is self._changed:
                await changed.wait()


class RequestLogs:
    """The logs of running requests plus recently finished ones, by request id.

    Memory is bounded in bytes: the logs together hold at most ``max_bytes`` of events (their
    JSON plus :data:`EVENT_OVERHEAD_BYTES` each). Past it, the oldest finished logs are dropped
    first; if running logs alone exceed it, the largest running log sheds its oldest events
    (each keeps its newest one). Finished logs are also dropped after ``keep_seconds`` and
    beyond ``keep_finished`` of them (the oldest finished go first).
    """

    def __init__(
        self,
        *,
        max_events: int = 1000,
        keep_finished: int = 1000,
        keep_seconds: float = 600.0,
        max_bytes: int = DEFAULT_REQUEST_LOG_BYTES,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"request-log max_bytes must be >= 1, got {max_bytes}")
        self.max_events = max_events
        self.keep_finished = keep_finished
        self.keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        self.bytes = 0  # the events of every log held here
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
        self.bytes += log.bytes
        log.on_grow = self._grew
        self.prune()

    def get(self, request_id: str) -> RequestLog | None:
        return self._logs.get(request_id)

    def _grew(self, log: RequestLog, delta: int) -> None:
        if self._logs.get(log.request_id or "") is not log:
            return
        self.bytes += delta
        if self.bytes > self.max_bytes:
            self.prune()

    def _finished_one(self, log: RequestLog) -> None:
        if log.request_id is not None and log.finished_at is not None:
            self._finished.append((log.finished_at, log.request_id))

    def _drop(self, request_id: str) -> None:
        log = self._logs.pop(request_id, None)
        if log is not None:
            self.bytes -= log.bytes
            log.on_grow = None

    def prune(self, now: float | None = None) -> None:
        """Drop finished logs past ``keep_seconds``, beyond ``keep_finished`` and, oldest
        first, while over ``max_bytes``; then shed running logs' oldest events if needed."""
        now = time.monotonic() if now is None else now
        finished = self._finished
        while finished and (
            len(finished) > self.keep_finished
            or now - finished[0][0] > self.keep_seconds
            or self.bytes > self.max_bytes
        ):
            _, request_id = finished.popleft()
            self._drop(request_id)
        while self.bytes > self.max_bytes:
            largest = max(self._logs.values(), key=lambda g: g.bytes, default=None)
            freed = largest.shed() if largest is not None else 0
            if not freed:
                break  # every log is down to its newest event
            self.bytes -= freed
