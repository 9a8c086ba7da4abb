"""HTTP throughput and latency of an action, next to a bare FastAPI endpoint; SSE delivery delay.

    python bench/bench_http.py [--rounds 3] [--requests 3000] [--concurrency 16]
                               [--sse-samples 300] [--time-limit 300]

Everything runs on loopback, each server in its own uvicorn process (one worker, no access
log) on a fresh SQLite file (WAL, synchronous=FULL), and the load generator in a second
process (httpx + asyncio, keep-alive, ``--concurrency`` workers each with its own session):

- ``flowstate``: ``POST /api/flows/bench/actions/bump`` — a handler doing
  ``ctx.session.inc_state(count=1)``, bearer-token auth, JSON result.
- ``bare``: a FastAPI ``POST /bump/{key}`` doing ``UPDATE counters SET value = value + 1``
  in ``BEGIN IMMEDIATE … COMMIT`` through sqlite3 (one connection, run in a thread under a
  lock: writes to one SQLite file are serial anyway), answering ``{"value": n}``.

The ratio is bare requests/s ÷ flowstate requests/s (1.00 = no overhead over the bare write).
Each round starts both servers afresh, in alternating order; the table shows medians over the
rounds, plus the server process's CPU time per request (from ``/proc``), which shared-machine
noise disturbs much less than throughput.

SSE delay: a client follows ``GET /api/flows/users/me/stream`` while it runs ``stamp`` (one
``ctx.user.inc_state``) one request at a time; the handler returns ``time.time()`` taken right
after the write call returned (commit and event publish done), and the delay is the wall-clock
time at which the matching ``state_change`` frame reached the client minus that stamp (both
processes read the same clock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-token"
WARMUP_PER_WORKER = 10
HEADERS = {"Authorization": f"Bearer {TOKEN}"}

# ----------------------------------------------------------------------------------- servers


def flowstate_app(db: str) -> Any:
    from pydantic import BaseModel

    from flowstate import ClientConfig, Context, FlowServer, ScopeConfig, define_flow, handler
    from flowstate.http import create_app

    class Counter(BaseModel):
        count: int = 0

    class Stamps(BaseModel):
        stamps: int = 0

    @handler(name="bump", session_state=Counter)
    async def bump(input: Any, ctx: Context) -> dict[str, int]:
        await ctx.session.inc_state(count=1)
        return {"count": ctx.session.state.count}

    @handler(name="stamp", user_state=Stamps)
    async def stamp(input: Any, ctx: Context) -> dict[str, float]:
        await ctx.user.inc_state(stamps=1)
        return {"t": time.time()}

    flow = define_flow(
        "bench",
        {"bump": bump, "stamp": stamp},
        session=ScopeConfig(client=ClientConfig(expose=["count"])),
        user=ScopeConfig(client=ClientConfig(expose=["stamps"])),
    )
    server = FlowServer([flow], store=f"sqlite:///{db}", auth={TOKEN: "bench"})
    return create_app(server, close_server=True, web=False)


def bare_app(db: str) -> Any:
    from fastapi import FastAPI

    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER)")
    lock = asyncio.Lock()
    app = FastAPI()

    def write(key: str) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO counters VALUES (?, 1) "
                "ON CONFLICT(key) DO UPDATE SET value = value + 1",
                (key,),
            )
            (value,) = conn.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(value)

    @app.post("/bump/{key}")
    async def bump(key: str) -> dict[str, int]:
        async with lock:
            return {"value": await asyncio.to_thread(write, key)}

    return app


def serve(kind: str, db: str, port: int) -> None:
    import uvicorn

    app = flowstate_app(db) if kind == "flowstate" else bare_app(db)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ----------------------------------------------------------------------------------- load


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(
    kind: str, url: str, requests: int, concurrency: int, server_pid: int
) -> dict[str, Any]:
    """Warm up, then time ``requests`` requests; the server's CPU time is read at both ends of
    the timed part only, so one-time costs (first-request imports and model builds, session
    creation, connection set-up) are not spread over the timed requests."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def one(worker: int, session: list[str | None]) -> float:
            t0 = time.perf_counter()
            if kind == "flowstate":
                body: dict[str, Any] = {"input": None}
                if session[0] is not None:
                    body["sessionId"] = session[0]
                response = await http.post(
                    "/api/flows/bench/actions/bump", json=body, headers=HEADERS
                )
                response.raise_for_status()
                session[0] = response.json()["sessionId"]
            else:
                response = await http.post(f"/bump/w{worker}")
                response.raise_for_status()
                response.json()
            return time.perf_counter() - t0

        sessions: list[list[str | None]] = [[None] for _ in range(concurrency)]
        # Warm-up: connections open, sessions created, code paths hot.
        cpu_start = cpu_seconds(server_pid)
        for _ in range(WARMUP_PER_WORKER):  # sequential per worker: a new session each first
            await asyncio.gather(*(one(w, sessions[w]) for w in range(concurrency)))
        cpu_warm = cpu_seconds(server_pid)
        latencies: list[float] = []
        remaining = [requests]

        async def worker(w: int) -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                latencies.append(await one(w, sessions[w]))

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
        cpu_end = cpu_seconds(server_pid)
    return {
        "warmup": WARMUP_PER_WORKER * concurrency,
        "warmup_cpu_ms": (cpu_warm - cpu_start) * 1e3,
        "cpu_ms": (cpu_end - cpu_warm) / len(latencies) * 1e3,
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.50) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
    }


async def sse_delay(url: str, samples: int) -> dict[str, Any]:
    import httpx

    arrivals: dict[str, float] = {}
    subscribed = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as http:

        async def follow() -> None:
            async with http.stream(
                "GET", "/api/flows/users/me/stream", timeout=httpx.Timeout(60, read=None)
            ) as response:
                async for line in response.aiter_lines():
                    if line.startswith(": subscribed"):
                        subscribed.set()
                    elif line.startswith("data: "):
                        now = time.time()
                        arrivals[json.loads(line[6:])["requestId"]] = now

        reader = asyncio.create_task(follow())
        await asyncio.wait_for(subscribed.wait(), 10)
        delays: list[float] = []
        for i in range(samples + 10):
            response = await http.post("/api/flows/bench/actions/stamp", json={"input": None})
            data = response.json()
            deadline = time.monotonic() + 5
            while data["requestId"] not in arrivals and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)
            if i >= 10:  # the first ten warm up
                delays.append(arrivals[data["requestId"]] - data["output"]["t"])
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return {
        "samples": len(delays),
        "p50_ms": pct(delays, 0.50) * 1e3,
        "p99_ms": pct(delays, 0.99) * 1e3,
        "max_ms": max(delays) * 1e3,
    }


# ----------------------------------------------------------------------------------- driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_up(port: int, timeout: float = 30, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"server on port {port} exited with code {process.returncode} before it "
                "listened (its traceback is above)"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def me(*args: str, time_limit: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-P", __file__, *args],
        capture_output=True,
        text=True,
        timeout=time_limit,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench_http {args[0]} failed:\n{done.stderr[-3000:]}")
    return done


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, tmp: Path, args: argparse.Namespace, *, sse: bool) -> dict[str, Any]:
    port = free_port()
    db = str(tmp / f"{kind}-{port}.db")
    server = subprocess.Popen([sys.executable, "-P", __file__, "--serve", kind, db, str(port)])
    try:
        wait_up(port, process=server)
        url = f"http://127.0.0.1:{port}"
        out = me(
            "--load",
            kind,
            url,
            str(args.requests),
            str(args.concurrency),
            str(server.pid),
            time_limit=args.time_limit,
        )
        result: dict[str, Any] = json.loads(out.stdout)
        if sse:
            out = me("--sse", url, str(args.sse_samples), time_limit=args.time_limit)
            result["sse"] = json.loads(out.stdout)
        return result
    finally:
        server.terminate()
        server.wait(30)


def median(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rounds)


def paired(args: argparse.Namespace) -> dict[str, Any]:
    """Both servers ``args.rounds`` times, in alternating order, each round measured alike.

    The CPU ratio is taken within each round (flowstate ÷ bare, the two measured back to back)
    and the median of those per-round ratios is reported: drift in the machine's load hits
    both sides of one round alike. ``python -m bench`` (full and ``--quick``) calls this too,
    so both report the same measure and differ only in rounds and requests.
    """
    rounds: dict[str, list[dict[str, Any]]] = {"bare": [], "flowstate": []}
    with tempfile.TemporaryDirectory(prefix="flowstate-bench-http-") as tmp:
        for number in range(args.rounds):  # alternate the order: drift hits both alike
            kinds = ("bare", "flowstate") if number % 2 == 0 else ("flowstate", "bare")
            for kind in kinds:
                last = number == args.rounds - 1
                sse = kind == "flowstate" and last and args.sse_samples > 0
                rounds[kind].append(measure(kind, Path(tmp), args, sse=sse))
    out: dict[str, Any] = {
        "rounds": args.rounds,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "warmup": rounds["bare"][0]["warmup"],
    }
    for kind, results in rounds.items():
        out[kind] = {
            "rps": median(results, "rps"),
            "p50_ms": median(results, "p50_ms"),
            "p99_ms": median(results, "p99_ms"),
            "cpu_ms": median(results, "cpu_ms"),
            "warmup_cpu_ms": median(results, "warmup_cpu_ms"),
            "rounds_rps": [round(r["rps"], 1) for r in results],
            "rounds_cpu_ms": [round(r["cpu_ms"], 3) for r in results],
        }
    cpu_ratios = [
        f["cpu_ms"] / b["cpu_ms"] for b, f in zip(rounds["bare"], rounds["flowstate"], strict=True)
    ]
    rps_ratios = [
        b["rps"] / f["rps"] for b, f in zip(rounds["bare"], rounds["flowstate"], strict=True)
    ]
    out["rounds_cpu_ratio"] = [round(r, 3) for r in cpu_ratios]
    out["cpu_ratio"] = statistics.median(cpu_ratios)
    out["rps_ratio"] = statistics.median(rps_ratios)
    sse_result = rounds["flowstate"][-1].get("sse")
    if sse_result:
        out["sse"] = sse_result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sse-samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=300)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "DB", "PORT"))
    parser.add_argument(
        "--load", nargs=5, metavar=("KIND", "URL", "REQUESTS", "CONCURRENCY", "SERVER_PID")
    )
    parser.add_argument("--sse", nargs=2, metavar=("URL", "SAMPLES"))
    args = parser.parse_args()
    if args.serve:
        kind, db, port = args.serve
        serve(kind, db, int(port))
        return
    if args.load:
        kind, url, n, c, pid = args.load
        print(json.dumps(asyncio.run(load(kind, url, int(n), int(c), int(pid)))))
        return
    if args.sse:
        url, n = args.sse
        print(json.dumps(asyncio.run(sse_delay(url, int(n)))))
        return

    result = paired(args)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"# bench_http: {args.rounds} rounds x {args.requests} requests (after "
        f"{result['warmup']} warm-up requests, not counted), concurrency {args.concurrency}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, SQLite WAL "
        "synchronous=FULL, loopback (medians)\n"
    )
    print("| server | requests/s | p50 ms | p99 ms | server CPU ms/request | per round CPU ms |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {"bare": "bare FastAPI + sqlite3 UPDATE", "flowstate": "flowstate action"}
    for kind in ("bare", "flowstate"):
        r = result[kind]
        print(
            f"| {names[kind]} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['cpu_ms']:.3f} | {', '.join(f'{x:.3f}' for x in r['rounds_cpu_ms'])} |"
        )
    print(
        f"\nserver CPU per request, flowstate ÷ bare (median of per-round ratios): "
        f"{result['cpu_ratio']:.2f}x (rounds: "
        f"{', '.join(f'{x:.2f}' for x in result['rounds_cpu_ratio'])}); "
        f"bare ÷ flowstate requests/s: {result['rps_ratio']:.2f}x"
    )
    sse_result = result.get("sse")
    if sse_result:
        print(
            f"\nSSE delay, committed write → state_change frame at the client "
            f"({sse_result['samples']} samples): p50 {sse_result['p50_ms']:.2f} ms, "
            f"p99 {sse_result['p99_ms']:.2f} ms, max {sse_result['max_ms']:.2f} ms"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
