"""Re-run a script (or a flow) on an interval as a *scheduled* run: the "watch for changes" loop.

A scheduled run's state path uses the user name as its trigger (``{script_path}/{user}``
instead of ``{script_path}/user``), so a schedule keeps its own state apart from manual runs.
Runs start at fixed-rate ticks (start, start + every, …); runs never overlap: a run that
overruns skips the ticks it missed. A failing run is reported and the schedule goes on.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ScheduledRun", "parse_interval", "run_schedule"]

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_interval(text: str) -> float:
    """``"5m"`` → 300.0 seconds. Units: ``ms``, ``s`` (the default), ``m``, ``h``, ``d``."""
    match = _INTERVAL.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"interval {text!r} is not a number with an optional unit (ms, s, m, h, d), "
            'e.g. "30s" or "5m"'
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"interval {text!r} must be greater than zero")
    return seconds


@dataclass(frozen=True)
class ScheduledRun:
    """One run of a schedule: its 1-based index, result or error, start and end times."""

    index: int
    started_at: float
    finished_at: float
    result: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_schedule(
    job: Callable[[], Any],
    *,
    every: float,
    times: int | None = None,
    on_run: Callable[[ScheduledRun], None] | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Call ``job()`` now and then every ``every`` seconds, ``times`` times (None = forever).

    ``on_run`` receives each :class:`ScheduledRun` (after the run, before the next wait);
    setting ``stop`` ends the schedule after the current run. Returns how many runs failed.
    """
    if every <= 0:
        raise ValueError(f"every must be greater than zero, got {every!r}")
    if times is not None and times < 1:
        raise ValueError(f"times must be at least 1, got {times!r}")
    stop = stop or threading.Event()
    start = clock()
    failures = 0
    index = 0
    while times is None or index < times:
        index += 1
        began = time.time()
        try:
            result, error = job(), None
        except Exception as exc:
            result, error = None, exc
            failures += 1
        run = ScheduledRun(index, began, time.time(), result, error)
        if on_run is not None:
            on_run(run)
        if (times is not None and index >= times) or stop.is_set():
            break
        elapsed = clock() - start
        ticks = int(elapsed // every) + 1
        if stop.wait(max(0.0, start + ticks * every - clock())):
            break
    return failures
