"""The HTTP action next to a bare FastAPI endpoint doing the same write (bench_http.py).

Each server runs in its own uvicorn process on a fresh SQLite file (WAL, synchronous=FULL);
the load generator is another process. Rounds start both servers afresh in alternating
order; medians over rounds. Server CPU per request comes from ``/proc`` and is the steadier
figure on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from .common import Sizes, median


def http(sizes: Sizes) -> dict[str, Any]:
    from . import bench_http

    args = argparse.Namespace(
        requests=sizes.http_requests,
        concurrency=16,
        sse_samples=sizes.http_sse,
        time_limit=300,
    )
    rounds: dict[str, list[dict[str, Any]]] = {"bare": [], "flowstate": []}
    with tempfile.TemporaryDirectory(prefix="flowstate-bench-http-") as tmp:
        for number in range(sizes.http_rounds):
            kinds = ("bare", "flowstate") if number % 2 == 0 else ("flowstate", "bare")
            for kind in kinds:
                sse = kind == "flowstate" and number == sizes.http_rounds - 1 and args.sse_samples
                rounds[kind].append(bench_http.measure(kind, Path(tmp), args, sse=bool(sse)))
    out: dict[str, Any] = {"requests": sizes.http_requests, "concurrency": 16}
    for kind, results in rounds.items():
        out[kind] = {
            "rps": median([r["rps"] for r in results]),
            "p50_ms": median([r["p50_ms"] for r in results]),
            "p99_ms": median([r["p99_ms"] for r in results]),
            "cpu_ms": median([r["cpu_ms"] for r in results]),
            "rounds_rps": [round(r["rps"], 1) for r in results],
        }
    out["rps_ratio"] = out["bare"]["rps"] / out["flowstate"]["rps"]
    out["cpu_ratio"] = out["flowstate"]["cpu_ms"] / out["bare"]["cpu_ms"]
    sse_result = rounds["flowstate"][-1].get("sse")
    if sse_result:
        out["sse"] = sse_result
    return out
