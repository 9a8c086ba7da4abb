"""The suite's outputs: JSON with every figure, a Markdown report with PNG plots, stdout tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import OPERATIONS, ROOT

BACKEND_NAMES = {"memory": "memory", "sqlite": "SQLite", "postgres": "PostgreSQL"}
SCENARIO_NAMES = {
    "runs_one_user": "runs, 1 user",
    "runs_own_users": "runs, W users",
    "inc_one_user": "inc_state in-run, 1 user",
    "update_one_user": "update_state in-run, 1 user",
    "floor": "raw CAS floor, 1 record",
}
PLOTS = ("growth", "push", "contention")


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _us(x: float) -> str:
    return f"{x / 1000:.2f} ms" if x >= 10_000 else f"{x:,.0f} µs"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sections


def peers_table(data: dict[str, Any]) -> str:
    """flowstate and the LangGraph peers: a counter per user, 1 and 8 concurrent tasks."""
    rows = []
    cont = data.get("contention", {})
    for backend in ("memory", "sqlite", "postgres"):
        for scenario, what in (
            ("runs_one_user", "flowstate `server.run` (`inc_state`)"),
            ("update_one_user", "flowstate `update_state` (read-modify-write)"),
        ):
            cells = cont.get(backend, {}).get(scenario)
            if not cells or "1" not in cells or "8" not in cells:
                continue
            one, eight = cells["1"], cells["8"]
            rows.append(
                [
                    what,
                    BACKEND_NAMES[backend],
                    _n(one["ops_per_s"]),
                    _n(eight["ops_per_s"]),
                    f"{eight['lost']:,} of {eight['ops']:,}",
                ]
            )
        for kind, what in (
            ("store", "LangGraph store `aget`+`aput`"),
            ("checkpoint", "LangGraph checkpointer (graph `ainvoke`)"),
        ):
            peer = data.get("peers", {}).get(f"{kind}-{backend}")
            if peer is None:
                continue
            if "unavailable" in peer:
                rows.append(
                    [what, BACKEND_NAMES[backend], "—", "—", f"unavailable: {peer['unavailable']}"]
                )
                continue
            one, eight = peer["1"], peer["8"]
            pct = 100 * eight["lost"] / eight["ops"] if eight["ops"] else 0
            rows.append(
                [
                    what,
                    BACKEND_NAMES[backend],
                    _n(one["ops_per_s"]),
                    _n(eight["ops_per_s"]),
                    f"{eight['lost']:,} of {eight['ops']:,} ({pct:.0f} %)",
                ]
            )
    if not rows:
        return ""
    return _table(
        [
            "system (unit of work)",
            "backend",
            "1 task /s",
            "8 tasks on 1 user /s",
            "lost updates (8 tasks)",
        ],
        rows,
        "llrrr",
    )


def targets_table(data: dict[str, Any]) -> str:
    """Issue 11's targets, each with this run's figure (a ratio taken within the run)."""
    rows: list[list[str]] = []

    def add(target: str, backend: str, value: float | None, ok: bool | None, how: str) -> None:
        if value is None:
            return
        verdict = "—" if ok is None else ("met" if ok else "**not met**")
        rows.append([target, BACKEND_NAMES[backend], f"{value:.2f}", verdict, how])

    def cell(backend: str, scenario: str, writers: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None
        found = data.get("contention", {}).get(backend, {}).get(scenario, {}).get(writers)
        return found

    for b in ("sqlite", "postgres"):
        run = data.get("ops", {}).get(b, {}).get("run")
        if run:
            v = run["vs_in_run_inc"]
            add("runs/s ≥ 0.75 x in-run op rate", b, v, v >= 0.75, "runs/s ÷ in-run inc_state/s")
    h = data.get("http")
    if h:
        v = h["cpu_ratio"]
        add(
            "HTTP action CPU ≤ 1.3 x bare FastAPI",
            "sqlite",
            v,
            v <= 1.3,
            "server CPU/request, flowstate ÷ bare",
        )
    for b in ("sqlite", "postgres"):
        one, eight = cell(b, "inc_one_user", "1"), cell(b, "inc_one_user", "8")
        if one and eight and one["ops_per_s"]:
            v = eight["ops_per_s"] / one["ops_per_s"]
            add(
                "8 writers on 1 record ≥ 1.5 x 1 writer, 0 lost",
                b,
                v,
                v >= 1.5 and eight["lost"] == 0,
                "in-run inc_state, 8 ÷ 1 writers",
            )
    upd, floor = cell("postgres", "update_one_user", "8"), cell("postgres", "floor", "8")
    if upd and floor and upd["ops_per_s"]:
        v = floor["ops_per_s"] / upd["ops_per_s"]
        add(
            "contended CAS on 1 record ≤ 1.3 x floor",
            "postgres",
            v,
            v <= 1.3,
            "raw CAS ÷ update_state, 8 writers",
        )
    one, eight = cell("postgres", "runs_own_users", "1"), cell("postgres", "runs_own_users", "8")
    if one and eight and one["ops_per_s"]:
        v = eight["ops_per_s"] / one["ops_per_s"]
        add(
            "8 writers on 8 users ≥ 2 x 1 writer",
            "postgres",
            v,
            v >= 2,
            "runs/s, 8 ÷ 1 writers (own users)",
        )
    for b, levels in data.get("push", {}).items():
        by = {lv["length"]: lv["p50_us"] for lv in levels}
        if 100 in by and 100_000 in by:
            v = by[100_000] / by[100]
            add(
                "push onto 100,000 items ≤ 2 x onto 100",
                b,
                v,
                v <= 2,
                "push_state p50, 100,000 ÷ 100 items",
            )
    if not rows:
        return ""
    return _table(["target (issue 11)", "backend", "this run", "", "measured as"], rows, "llrll")


def ops_table(data: dict[str, Any]) -> str:
    rows = []
    for backend, series in data.get("ops", {}).items():
        for name in ("floor", *OPERATIONS, "run"):
            if name not in series:
                continue
            row = series[name]
            label = {"floor": "raw driver CAS (floor)", "run": "whole run (`bump`)"}.get(
                name, f"`{name}`" + (" in-run" if name in OPERATIONS else "")
            )
            ratio = f"{row['floor_ratio']:.2f}x" if "floor_ratio" in row else "—"
            rows.append(
                [
                    BACKEND_NAMES[backend],
                    label,
                    _n(row["ops_per_s"]),
                    _us(row["p50_us"]),
                    _us(row["p99_us"]),
                    ratio,
                ]
            )
    if not rows:
        return ""
    return _table(["backend", "operation", "ops/s", "p50", "p99", "floor ÷ this"], rows, "llrrrr")


def runs_table(data: dict[str, Any]) -> str:
    rows = []
    for backend, series in data.get("ops", {}).items():
        inc, run = series["inc"], series["run"]
        rows.append(
            [
                BACKEND_NAMES[backend],
                _n(inc["ops_per_s"]),
                _n(run["ops_per_s"]),
                f"{run['vs_in_run_inc']:.2f}",
                _us(run["p50_us"]),
            ]
        )
    if not rows:
        return ""
    return _table(
        ["backend", "in-run `inc_state` ops/s", "whole runs/s", "runs ÷ in-run ops", "run p50"],
        rows,
    )


def contention_table(data: dict[str, Any]) -> str:
    rows = []
    for backend, scenarios in data.get("contention", {}).items():
        for scenario, cells in scenarios.items():
            for writers, c in cells.items():
                rows.append(
                    [
                        BACKEND_NAMES[backend],
                        SCENARIO_NAMES[scenario],
                        writers,
                        _n(c["ops_per_s"]),
                        _us(c["p50_us"]),
                        _us(c["p99_us"]),
                        _n(c["retries"]),
                        _n(c["gave_up"]),
                        f"{c['lost']:,} of {c['ops']:,}",
                    ]
                )
    if not rows:
        return ""
    return _table(
        ["backend", "scenario", "writers", "ops/s", "p50", "p99", "retries", "gave up", "lost"],
        rows,
        "llrrrrrrr",
    )


def growth_table(data: dict[str, Any]) -> str:
    rows = []
    for backend, levels in data.get("growth", {}).items():
        for level in levels:
            rows.append(
                [
                    BACKEND_NAMES[backend],
                    _n(level["stored"]),
                    _us(level["inc_p50_us"]),
                    _us(level["run_p50_us"]),
                    _us(level["list_p50_us"]),
                    _us(level["list_after_p50_us"]),
                ]
            )
    if not rows:
        return ""
    return _table(
        [
            "backend",
            "stored sessions & collection instances",
            "`inc_state` p50",
            "run p50",
            "`list(limit=50)` p50",
            "`list(after=middle)` p50",
        ],
        rows,
    )


def push_table(data: dict[str, Any]) -> str:
    rows = []
    for backend, levels in data.get("push", {}).items():
        base = levels[0]["p50_us"] if levels else 0
        for level in levels:
            rows.append(
                [
                    BACKEND_NAMES[backend],
                    _n(level["length"]),
                    _us(level["p50_us"]),
                    _us(level["p99_us"]),
                    f"{level['p50_us'] / base:.2f}x" if base else "—",
                ]
            )
    if not rows:
        return ""
    return _table(["backend", "list length", "`push_state` p50", "p99", "p50 ÷ shortest"], rows)


def http_table(data: dict[str, Any]) -> str:
    h = data.get("http")
    if not h:
        return ""
    rows = []
    for kind, label in (
        ("bare", "bare FastAPI + sqlite3 write"),
        ("flowstate", "flowstate action"),
    ):
        r = h[kind]
        rows.append(
            [
                label,
                _n(r["rps"]),
                f"{r['p50_ms']:.2f} ms",
                f"{r['p99_ms']:.2f} ms",
                f"{r['cpu_ms']:.2f} ms",
                ", ".join(_n(x) for x in r["rounds_rps"]),
            ]
        )
    text = _table(
        ["server", "requests/s", "p50", "p99", "server CPU / request", "per round req/s"], rows
    )
    per_round = h.get("rounds_cpu_ratio")
    text += (
        f"\n\nflowstate ÷ bare server CPU per request: **{h['cpu_ratio']:.2f}x**"
        + (
            f" (median of per-round ratios {', '.join(f'{x:.2f}' for x in per_round)})"
            if per_round
            else ""
        )
        + f"; bare ÷ flowstate requests/s: {h['rps_ratio']:.2f}x "
        f"({h['requests']:,} requests per round"
        + (f" after {h['warmup']} warm-up requests, not counted" if "warmup" in h else "")
        + f", {h['concurrency']} concurrent clients)."
    )
    if "sse" in h:
        s = h["sse"]
        text += (
            f"\n\nSSE delay, committed write → `state_change` frame at the client "
            f"({s['samples']} samples): p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms."
        )
    return text


def machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    load = f"{m['loadavg_start'][0]:.2f} at start, {m.get('loadavg_end', [0])[0]:.2f} at end"
    commit = m["git_commit"][:10] + (" (with uncommitted changes)" if m["git_dirty"] else "")
    return (
        f"{m['mode']} run of {m['date']}, {m['seconds']:.0f} s; commit `{commit}`; "
        f"{m['cpus']} x {m['cpu_model'] or 'CPU'}, {m['memory_gib']} GiB; Python {m['python']}, "
        f"SQLite {m['sqlite']}; **load average {load}** "
        f"(1-minute; {m['cpus']} cores — above {m['cpus']} the machine was shared)."
    )


def tables(data: dict[str, Any], image_dir: str | None) -> str:
    """The report body; ``image_dir`` (relative to the Markdown file) embeds the plots."""
    parts = [f"_{machine_line(data)}_"]

    def section(title: str, body: str, plot: str | None = None) -> None:
        if not body:
            return
        parts.append(f"## {title}\n\n{body}")
        if plot and image_dir is not None:
            parts.append(f"![{plot}]({image_dir}/{plot})")

    stem = data.get("_stem", "")
    section("flowstate and LangGraph: a counter per user", peers_table(data))
    section("Targets", targets_table(data))
    section("Per operation, next to the raw driver floor", ops_table(data))
    section("Whole runs next to the in-run operation rate", runs_table(data))
    section("Contention", contention_table(data), f"{stem}-contention.png")
    section("Growth: stored sessions and collection size", growth_table(data), f"{stem}-growth.png")
    section("Growth: push_state onto a long list", push_table(data), f"{stem}-push.png")
    section("HTTP", http_table(data))
    if data.get("scripts"):
        sc = data["scripts"]
        section(
            "Script state (`flowstate.scripts`)",
            f"`{sc['command']}`:\n\n```text\n{sc['output']}\n```",
        )
    for what, reason in data.get("skipped", {}).items():
        parts.append(f"_Skipped {what}: {reason}_")
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- plots


def plots(data: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Growth and contention curves as PNG (needs matplotlib: ``pip install -e .[bench]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    colors = {"memory": "tab:green", "sqlite": "tab:blue", "postgres": "tab:purple"}

    if data.get("growth"):
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, key, title in zip(
            axes,
            ("inc_p50_us", "run_p50_us", "list_p50_us"),
            ("in-run inc_state p50", "whole run p50", "collection list(limit=50) p50"),
            strict=True,
        ):
            for backend, levels in data["growth"].items():
                ax.plot(
                    [lv["stored"] for lv in levels],
                    [lv[key] for lv in levels],
                    marker="o",
                    label=BACKEND_NAMES[backend],
                    color=colors[backend],
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("stored sessions / collection instances")
            ax.set_ylabel("µs")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out / f"{stem}-growth.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)

    if data.get("push"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for backend, levels in data["push"].items():
            ax.plot(
                [lv["length"] for lv in levels],
                [lv["p50_us"] for lv in levels],
                marker="o",
                label=BACKEND_NAMES[backend],
                color=colors[backend],
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("list length before the push")
        ax.set_ylabel("push_state p50 (µs)")
        ax.set_title("push_state onto a long list")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"{stem}-push.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)

    if data.get("contention"):
        backends = list(data["contention"])
        fig, axes = plt.subplots(2, len(backends), figsize=(5 * len(backends), 7), squeeze=False)
        for col, backend in enumerate(backends):
            for scenario, cells in data["contention"][backend].items():
                xs = [int(w) for w in cells]
                axes[0][col].plot(
                    xs,
                    [c["ops_per_s"] for c in cells.values()],
                    marker="o",
                    label=SCENARIO_NAMES[scenario],
                )
                axes[1][col].plot(
                    xs,
                    [c["p99_us"] / 1000 for c in cells.values()],
                    marker="o",
                    label=SCENARIO_NAMES[scenario],
                )
            axes[0][col].set_title(f"{BACKEND_NAMES[backend]}: throughput")
            axes[0][col].set_ylabel("ops/s")
            axes[1][col].set_title(f"{BACKEND_NAMES[backend]}: p99 latency")
            axes[1][col].set_ylabel("ms")
            writers = [int(w) for w in next(iter(data["contention"][backend].values()))]
            axes[1][col].set_yscale("log")
            for ax in (axes[0][col], axes[1][col]):
                ax.set_xscale("log", base=2)
                ax.set_xticks(writers, [str(w) for w in writers])
                ax.minorticks_off()
                ax.set_xlabel("concurrent writers")
                ax.grid(True, which="both", alpha=0.3)
            axes[0][col].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{stem}-contention.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- files


def write(data: dict[str, Any], out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data["_stem"] = stem
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    images = plots(data, out, stem)
    md = out / f"{stem}.md"
    body = tables(data, image_dir="." if images else None)
    if not images:
        body += "\n_No plots: matplotlib is not installed (`pip install -e .[bench]`)._\n"
    md.write_text(f"# flowstate benchmark report ({stem})\n\n{body}")
    return [json_path, md, *images]


DOCS_HEAD = """# Performance

Every figure on this page comes from one run of the benchmark suite, `python -m bench`
(regenerated with `python -m bench --docs`), on this project's machine kind. The run's raw
figures are in [`{json}`](../bench/results/{json}). Nothing in the test suite asserts a speed;
`.ci/run` runs `python -m bench --quick` so the harness cannot rot, and prints its figures.

## How it measures

- **Public API only.** Every flowstate figure goes through a `FlowServer` on the backend's
  store URL and `server.run`. Per-operation figures are taken *inside* a run: the `ops` action
  loops one state operation (`inc_state`, `patch_state`, `push_state`, `update_state`,
  `set_state_record`) on `ctx.user` for a fixed time and returns each call's latency.
- **Next to the floor, at the same durability.** The floor is the bare driver doing the same
  versioned write — `UPDATE raw SET value = ?, version = version + 1 WHERE key = ? AND
  version = ?`, a JSON value, one transaction per write, re-read and retried on a miss.
  SQLite: `sqlite3`, WAL, `synchronous=FULL` (flowstate's default: a committed write survives
  power loss), `BEGIN IMMEDIATE … COMMIT`. PostgreSQL: asyncpg, autocommit, the server's
  `synchronous_commit`, a pool as big as flowstate's (10). Memory has no driver floor.
- **Paired rounds, medians.** Each cell runs for a fixed time per round; the series of one
  table run in rotating order each round, so a burst of outside load hits all alike. Rates are
  medians over rounds; ratios are taken *within* a round and the median reported; p50/p99 are
  over every call of every round.
- **Lost updates are counted, not assumed:** the stored counter is read before and after every
  contention cell; `lost = calls that returned - stored increase`.
- **Peers** run in their own virtual environment (created on demand from PyPI), driven by
  [`bench/peers_worker.py`](../bench/peers_worker.py), which prints JSON; each does the same
  logical work — a counter per user, read-modify-write as application code writes it — from 1
  and from 8 concurrent asyncio tasks on one user. A peer that cannot be installed shows as
  "unavailable" instead of failing the run.
- **Growth** clones a real session (written by `server.run`) and a real collection instance
  inside the database (`INSERT … SELECT`) to reach each size, then times the operation.
- **HTTP**: each server in its own uvicorn process on loopback, a separate load process, fresh
  SQLite files (WAL, `synchronous=FULL`), rounds in alternating order; server CPU per request
  from `/proc`, read after the warm-up (10 requests per client, not counted) and after the
  timed requests; the ratio is the median of per-round ratios. The full run and `--quick`
  differ only in rounds and requests (3 x 800 and 2 x 300).

## Reproduce

```sh
pip install -e ".[server,postgres,bench]"
python -m bench            # full suite, ~10 minutes on 2 cores; writes bench/results/<date>.*
python -m bench --quick    # < 2 minutes, small sizes, no peers (what CI runs)
python -m bench --only contention,peers --backends sqlite,postgres
```

PostgreSQL comes from `$FLOWSTATE_BENCH_POSTGRES_URL` (else `$FLOWSTATE_TEST_POSTGRES_URL`, else
`postgresql://postgres@127.0.0.1:5432/test`); the suite works in its own schemas and drops them.
When the server is unreachable the PostgreSQL rows are skipped with the reason.
The peers' venv is `$FLOWSTATE_BENCH_PEERS_VENV` (default `/work/venvs/bench-peers`, or
`~/.cache/flowstate/bench-peers`).

**Read the load average below before the figures.** On a machine shared with other jobs,
absolute rates move by ±30 % or more from run to run; ratios taken within one round are the
comparable numbers.

"""


NOTES_MARKER = "<!-- Hand-written notes below this line are kept when the page is regenerated. -->"


def write_docs(data: dict[str, Any], out: Path, stem: str) -> Path:
    """Regenerate docs/performance.md from this run; the plots stay in bench/results/.

    Everything above ``NOTES_MARKER`` is generated; what follows it (readings of the figures,
    targets and their status) is carried over from the current page.
    """
    docs = ROOT / "docs"
    if out.resolve() != (ROOT / "bench" / "results").resolve():
        raise ValueError("docs/performance.md embeds plots from bench/results/: use that --out")
    body = tables(data, image_dir="../bench/results")
    page = docs / "performance.md"
    notes = ""
    if page.exists() and NOTES_MARKER in page.read_text():
        notes = page.read_text().split(NOTES_MARKER, 1)[1].lstrip("\n")
    page.write_text(
        DOCS_HEAD.format(json=f"{stem}.json") + body + "\n" + NOTES_MARKER + "\n\n" + notes
    )
    return page
