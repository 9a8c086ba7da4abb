"""Benchmark: the synchronous script-state API (flowstate.scripts) and the runner.

    python bench/bench_scripts.py [--ops 1000] [--runs 10]

Sections: per-call latency of get_state / set_state / update_state / set_flow_user_state
through the helper-thread event loop on memory and SQLite (fsync on every commit, the default);
two processes doing update_state on one state at once (throughput, retries); and the wall time
of one `flowstate run` of a trivial script (process start + import + store open). Every figure
comes from this run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowstate import scripts
from flowstate.scripts import ScriptContext, use_context


def timed(n: int, op: Callable[[int], Any]) -> tuple[float, float, float]:
    """ops/s, p50 and p99 latency (µs) of n sequential calls."""
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        op(i)
        lat.append((time.perf_counter() - t0) * 1e6)
    total = time.perf_counter() - start
    lat.sort()
    return n / total, lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def calls(url: str, n: int) -> None:
    ctx = ScriptContext(
        username="bench", script_path="u/bench/calls", flow_run_id="run", store_url=url
    )
    rows = []
    with use_context(ctx, export_env=False):
        scripts.set_state({"n": 0, "items": list(range(20))})
        rows.append(("get_state", *timed(n, lambda i: scripts.get_state())))
        rows.append(("set_state", *timed(n, lambda i: scripts.set_state({"n": i, "x": "y"}))))
        rows.append(
            ("update_state", *timed(n, lambda i: scripts.update_state(lambda s: {"n": s["n"] + 1})))
        )
        rows.append(
            ("set_flow_user_state", *timed(n, lambda i: scripts.set_flow_user_state("k", i)))
        )
    scripts.shutdown()
    kind = url.split(":", 1)[0]
    for name, rate, p50, p99 in rows:
        print(f"{kind:8} {name:20} {rate:10.0f} ops/s   p50 {p50:8.0f} µs   p99 {p99:8.0f} µs")


COUNTER = """
    from flowstate import ConcurrentModificationError, scripts

    def main(n: int):
        calls = gave_up = 0

        def bump(count):
            nonlocal calls
            calls += 1
            return (count or 0) + 1

        done = 0
        while done < n:
            try:
                scripts.update_state(bump)
                done += 1
            except ConcurrentModificationError:
                gave_up += 1  # out of attempts: count it and try again
        return [calls, gave_up]
"""


def two_processes(url: str, n: int, tmp: Path) -> None:
    script = tmp / "counter.py"
    script.write_text(textwrap.dedent(COUNTER))
    env = {**os.environ, "FLOWSTATE_STORE": url}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["flowstate", "run", str(script), "--path", "u/bench/shared", json.dumps({"n": n})],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    fn_calls = sum(o[0] for o in outcomes)
    gave_up = sum(o[1] for o in outcomes)
    wall = time.perf_counter() - start
    with use_context(ScriptContext(script_path="u/bench/shared", store_url=url), export_env=False):
        final = scripts.get_state()
    scripts.shutdown()
    print(
        f"2 processes x {n} update_state in tight loops: final {final} (expected {2 * n}), "
        f"fn calls {fn_calls} ({fn_calls - 2 * n} retries), {gave_up} update_state calls "
        f"ran out of attempts, wall {wall:.2f} s incl. start-up"
    )


def cli_run(url: str, runs: int, tmp: Path) -> None:
    script = tmp / "hello.py"
    script.write_text(
        "from flowstate import scripts\ndef main():\n    return scripts.set_state(1)\n"
    )
    env = {**os.environ, "FLOWSTATE_STORE": url}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["flowstate", "run", str(script)], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    print(
        f"flowstate run (trivial script): median {statistics.median(times) * 1000:.0f} ms, "
        f"min {min(times) * 1000:.0f} ms over {runs} runs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        print(f"## per-call latency ({args.ops} sequential calls each)")
        calls("memory://", args.ops)
        calls(f"sqlite:///{tmp / 'calls.db'}", args.ops)
        print("\n## two OS processes, one state (SQLite)")
        two_processes(f"sqlite:///{tmp / 'shared.db'}", max(10, args.ops // 2), tmp)
        print("\n## runner start-up")
        cli_run(f"sqlite:///{tmp / 'run.db'}", args.runs, tmp)


if __name__ == "__main__":
    main()
