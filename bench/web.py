"""The HTTP action next to a bare FastAPI endpoint doing the same write (bench_http.py).

Each server runs in its own uvicorn process on a fresh SQLite file (WAL, synchronous=FULL);
the load generator is another process. Rounds start both servers afresh in alternating
order. Server CPU per request comes from ``/proc``, read after the warm-up and after the
timed requests (one-time costs are not counted), and is the steadier figure on a shared
machine; the ratio is the median of per-round ratios. The full and ``--quick`` runs call the
same :func:`bench.bench_http.paired` and differ only in rounds and requests.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import Sizes


def http(sizes: Sizes) -> dict[str, Any]:
    from . import bench_http

    args = argparse.Namespace(
        rounds=sizes.http_rounds,
        requests=sizes.http_requests,
        concurrency=16,
        sse_samples=sizes.http_sse,
        time_limit=300,
    )
    return bench_http.paired(args)
