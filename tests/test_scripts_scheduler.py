"""The scheduler and the "watch for changes" pattern, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flowstate import scripts
from flowstate.cli import main as cli
from flowstate.scripts import ScriptContext, use_context
from flowstate.scripts.runner import run_script
from flowstate.scripts.scheduler import ScheduledRun, run_schedule

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scripts"
WATCH = EXAMPLES / "watch_new_items.py"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'state.db'}"
    scripts.shutdown()


def put(path: Path, items: list[Any]) -> None:
    path.write_text(json.dumps(items), encoding="utf-8")


def test_watch_for_changes_through_the_scheduler(tmp_path: Path, url: str) -> None:
    source = tmp_path / "stars.json"
    # What the watched system holds before each run (the scheduler's callback changes it).
    snapshots = [
        [{"id": 1, "user": "ann"}, {"id": 2, "user": "bo"}],
        [{"id": 1, "user": "ann"}, {"id": 2, "user": "bo"}, {"id": 3, "user": "cy"}],
        [{"id": 1, "user": "ann"}, {"id": 2, "user": "bo"}, {"id": 3, "user": "cy"}],
        [{"id": 3, "user": "cy"}, {"id": 4, "user": "di"}, {"id": 5, "user": "ed"}],
    ]
    put(source, snapshots[0])
    runs: list[ScheduledRun] = []

    def on_run(run: ScheduledRun) -> None:
        runs.append(run)
        if run.index < len(snapshots):
            put(source, snapshots[run.index])

    def job() -> Any:
        return run_script(
            WATCH, {"source": str(source)}, user="alice", schedule="u/alice/watch", store=url
        )

    failures = run_schedule(job, every=0.01, times=4, on_run=on_run)
    assert failures == 0
    assert [r.result for r in runs] == [
        [{"id": 1, "user": "ann"}, {"id": 2, "user": "bo"}],  # first run: everything is new
        [{"id": 3, "user": "cy"}],
        [],
        [{"id": 4, "user": "di"}, {"id": 5, "user": "ed"}],
    ]
    # The schedule's state lives at the scheduled path (trigger = user name) …
    ctx = ScriptContext(username="alice", store_url=url)
    with use_context(ctx, export_env=False):
        info = scripts.get_resource_info("u/alice/watch_new_items/alice")
        assert info.version == 3  # the third run found nothing new and wrote nothing
        assert scripts.get_resource("u/alice/watch_new_items/user", none_if_undefined=True) is None
    # … so a manual run keeps its own state and sees everything as new.
    manual = run_script(WATCH, {"source": str(source)}, user="alice", store=url)
    assert [item["id"] for item in manual] == [3, 4, 5]


def test_overlapping_watchers_never_report_an_item_twice(tmp_path: Path, url: str) -> None:
    source = tmp_path / "items.json"
    put(source, list(range(50)))
    reported: list[Any] = []
    lock = threading.Lock()

    def watch() -> None:
        found = run_script(WATCH, {"source": str(source)}, user="alice", store=url)
        with lock:
            reported.extend(found)

    threads = [threading.Thread(target=watch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(reported) == list(range(50))


def test_run_schedule_paces_runs_and_survives_failures() -> None:
    calls: list[float] = []

    def flaky() -> int:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("second run fails")
        return len(calls)

    runs: list[ScheduledRun] = []
    failures = run_schedule(flaky, every=0.05, times=4, on_run=runs.append)
    assert failures == 1
    assert [r.index for r in runs] == [1, 2, 3, 4]
    assert [r.result for r in runs] == [1, None, 3, 4]
    assert isinstance(runs[1].error, RuntimeError) and not runs[1].ok
    # Ticks are fixed-rate (start + n * every): run n never starts before its tick, though a
    # late run may be followed sooner by the next one.
    offsets = [t - calls[0] for t in calls]
    assert all(offset >= n * 0.05 - 0.002 for n, offset in enumerate(offsets)), offsets


def test_a_run_that_overruns_skips_missed_ticks_and_never_overlaps() -> None:
    active: list[int] = []
    overlaps: list[bool] = []
    starts: list[float] = []

    def slow() -> None:
        starts.append(time.monotonic())
        if active:
            overlaps.append(True)
        active.append(1)
        time.sleep(0.12)
        active.pop()

    run_schedule(slow, every=0.05, times=3)
    assert overlaps == []
    # Each 0.12 s run misses ticks; the next run waits for the next tick instead of starting
    # at once: ticks 0, 0.15, 0.30 rather than 0, 0.12, 0.24.
    offsets = [t - starts[0] for t in starts]
    assert offsets[1] >= 0.149 and offsets[2] >= 0.299, offsets


def test_run_schedule_stops_when_asked() -> None:
    stop = threading.Event()
    runs: list[ScheduledRun] = []

    def job() -> None:
        if len(runs) == 1:
            stop.set()

    run_schedule(job, every=0.01, on_run=runs.append, stop=stop)
    assert len(runs) == 2
    with pytest.raises(ValueError, match="every must be greater than zero"):
        run_schedule(job, every=0)
    with pytest.raises(ValueError, match="times must be at least 1"):
        run_schedule(job, every=1, times=0)


def test_cli_schedule_watches_a_changing_file(tmp_path: Path) -> None:
    source = tmp_path / "items.json"
    put(source, ["a", "b"])
    env = {**os.environ, "FLOWSTATE_STORE": f"sqlite:///{tmp_path / 'state.db'}"}
    proc = subprocess.Popen(
        ["flowstate", "schedule", str(WATCH), "--every", "0.6s", "--times", "3",
         "--user", "alice", "--arg", f"source={source}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    following = [["a", "b", "c"], ["b", "c", "d", "e"]]
    for line in proc.stdout:
        lines.append(json.loads(line))
        if following:
            put(source, following.pop(0))  # change the watched list before the next tick
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    assert lines == [["a", "b"], ["c"], ["d", "e"]]
    with use_context(ScriptContext(store_url=env["FLOWSTATE_STORE"]), export_env=False):
        assert scripts.get_resource("u/alice/watch_new_items/alice") == [
            json.dumps(x) for x in ["b", "c", "d", "e"]
        ]
    scripts.shutdown()


def test_cli_schedule_reports_failures_and_goes_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    script = tmp_path / "flaky.py"
    script.write_text(
        "from flowstate import scripts\n"
        "def main():\n"
        "    n = scripts.update_state(lambda n: (n or 0) + 1)\n"
        "    if n == 2:\n"
        "        raise RuntimeError('run two broke')\n"
        "    return n\n"
    )
    result = CliRunner().invoke(
        cli, ["schedule", str(script), "--every", "10ms", "--times", "3", "--store", url]
    )
    assert result.exit_code == 1
    assert [json.loads(x) for x in result.stdout.splitlines()] == [1, 3]
    assert "run 2 failed:" in result.stderr and "RuntimeError: run two broke" in result.stderr


def test_cli_schedule_a_flow_and_usage_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    a = tmp_path / "a.py"
    a.write_text(
        "from flowstate import scripts\n"
        "def main():\n"
        "    return scripts.update_state(lambda n: (n or 0) + 1)\n"
    )
    b = tmp_path / "b.py"
    b.write_text(
        "from flowstate import scripts\n"
        "def main(previous_result):\n"
        "    return [previous_result, scripts.get_state_path()]\n"
    )
    args = ["schedule", str(a), str(b), "--every", "10ms", "--times", "2", "--store", url]
    result = CliRunner().invoke(cli, [*args, "--flow", "f/team/etl", "--user", "bo"])
    assert result.exit_code == 0, result.output
    assert [json.loads(x) for x in result.stdout.splitlines()] == [
        [1, "f/team/etl/b_bo"],
        [2, "f/team/etl/b_bo"],
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "several scripts form a flow" in result.output
    result = CliRunner().invoke(cli, ["schedule", str(a), "--every", "soon", "--store", url])
    assert result.exit_code == 2 and "interval 'soon' is not a number" in result.output
    result = CliRunner().invoke(cli, ["schedule", str(a), "--every", "1s", "--times", "0"])
    assert result.exit_code == 2 and "--times" in result.output
