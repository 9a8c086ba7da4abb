"""``python -m bench``: the whole benchmark suite in one run.

    python -m bench                 # full run (~10 min on 2 cores), peers included
    python -m bench --quick         # < 2 min: small sizes, short cells, no peers
    python -m bench --only ops,contention --backends sqlite,postgres
    python -m bench --docs          # full run, then regenerate docs/performance.md
    python -m bench --from-json bench/results/<date>.json [--docs]   # re-render only

Writes ``bench/results/<date>[-quick].json`` (every figure, machine info, git commit) and
``<date>[-quick].md`` with PNG plots beside it, and prints the report's tables on stdout.
Figures are printed, never asserted: the suite fails only when something crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from . import contention, growth, operations, peers, report, scripting, web
from .common import ROOT, Sizes, backend, log, machine_info, postgres_base_url, postgres_problem

SECTIONS = ("ops", "contention", "growth", "http", "scripts", "peers")
BACKENDS = ("memory", "sqlite", "postgres")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 2 minutes")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--peers",
        action="store_true",
        help="run the LangGraph peers in --quick mode too (always on in a full run)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the peers")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", default=None, help="result file stem (default: the date)")
    parser.add_argument(
        "--growth-max",
        type=int,
        default=None,
        help="largest growth size (default 1,000,000; 10,000 with --quick)",
    )
    parser.add_argument("--docs", action="store_true", help="regenerate docs/performance.md")
    parser.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="re-render the report (and --docs) from a saved results JSON without measuring",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # harness test
    args = parser.parse_args(argv)
    if (
        args.docs
        and not args.from_json
        and (args.quick or args.tiny or args.only != ",".join(SECTIONS))
    ):
        parser.error("--docs regenerates docs/performance.md from a full run of every section")
    for name in args.only.split(","):
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r} (choose from {', '.join(SECTIONS)})")
    for name in args.backends.split(","):
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    return args


async def collect(args: argparse.Namespace, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    only = set(args.only.split(","))
    wanted = [b for b in BACKENDS if b in args.backends.split(",")]
    results: dict[str, Any] = {"skipped": {}}
    pg_problem = await postgres_problem(postgres_base_url())
    if pg_problem and "postgres" in wanted:
        wanted.remove("postgres")
        results["skipped"]["postgres"] = pg_problem
        log(f"PostgreSQL skipped: {pg_problem}")

    async def per_backend(section: str, fn: Any) -> None:
        results[section] = {}
        for name in wanted:
            t0 = time.perf_counter()
            async with backend(name, tmp, section) as b:
                results[section][name] = await fn(b, sizes)
            log(f"{section} {name}: {time.perf_counter() - t0:.1f} s")

    if "ops" in only:
        await per_backend("ops", operations.per_operation)
    if "contention" in only:
        await per_backend("contention", contention.contention)
    if "growth" in only:
        await per_backend("push", growth.push_lengths)
        await per_backend("growth", growth.stored)
    if "http" in only:
        t0 = time.perf_counter()
        results["http"] = await asyncio.to_thread(web.http, sizes)
        log(f"http: {time.perf_counter() - t0:.1f} s")
    if "scripts" in only:
        t0 = time.perf_counter()
        results["scripts"] = await asyncio.to_thread(scripting.scripts, sizes)
        log(f"scripts: {time.perf_counter() - t0:.1f} s")
    run_peers = "peers" in only and not args.no_peers and (not sizes.quick or args.peers)
    if run_peers:
        t0 = time.perf_counter()
        results["peers"] = await asyncio.to_thread(peers.peers, sizes, tmp, pg_problem, True)
        log(f"peers: {time.perf_counter() - t0:.1f} s")
    elif "peers" in only:
        results["skipped"]["peers"] = (
            "--no-peers" if args.no_peers else "not run in --quick mode (add --peers)"
        )
    return results


def rerender(args: argparse.Namespace) -> int:
    """Report, plots and (with --docs) the docs page again from figures already measured."""
    path = Path(args.from_json)
    data = json.loads(path.read_text())
    if args.docs and data["machine"]["mode"] != "full":
        raise SystemExit(f"{path} is a {data['machine']['mode']} run; --docs needs a full run")
    report.write(data, path.parent, path.stem)
    print(report.tables(data, image_dir=None))
    if args.docs:
        report.write_docs(data, path.parent, path.stem)
        log("regenerated docs/performance.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.from_json:
        return rerender(args)
    sizes = Sizes.tiny() if args.tiny else Sizes.quick_sizes() if args.quick else Sizes.full()
    if args.growth_max is not None:
        kept = tuple(n for n in sizes.growth if n <= args.growth_max)
        sizes = dataclasses.replace(sizes, growth=kept or (args.growth_max,))
    mode = "tiny" if args.tiny else "quick" if sizes.quick else "full"
    started = time.time()
    info = machine_info()
    log(f"{mode} run, load average {info['loadavg_start'][0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="flowstate-bench-") as tmp:
        results = asyncio.run(collect(args, sizes, Path(tmp)))
    info["loadavg_end"] = list(os.getloadavg())
    info["seconds"] = round(time.time() - started, 1)
    info["mode"] = mode
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    info["postgres_url"] = postgres_base_url().split("@")[-1]  # no credentials in reports
    data = {"machine": info, "sizes": sizes.__dict__, **results}
    stem = args.name or time.strftime("%Y-%m-%d", time.gmtime(started)) + (
        "" if mode == "full" else f"-{mode}"
    )
    out = Path(args.out)
    paths = report.write(data, out, stem)
    print(report.tables(data, image_dir=None))
    log(f"wrote {', '.join(str(p) for p in paths)} in {info['seconds']:.0f} s")
    if args.docs:
        report.write_docs(data, out, stem)
        log("regenerated docs/performance.md")
    return 0
