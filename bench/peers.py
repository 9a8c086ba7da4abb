"""LangGraph peers in their own virtual environment, driven through ``peers_worker.py``.

The venv (``$FLOWSTATE_BENCH_PEERS_VENV``, default ``/work/venvs/bench-peers`` when
``/work/venvs`` exists, else ``~/.cache/flowstate/bench-peers``) is created on demand and the
peers installed from PyPI with pip, so their pins never meet ours. A peer that cannot be
installed or run is reported as ``unavailable: reason``; it never fails the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from .common import Sizes, log, median, plain_dsn, postgres_base_url

PEERS = (
    "store-memory",
    "store-sqlite",
    "store-postgres",
    "checkpoint-memory",
    "checkpoint-sqlite",
    "checkpoint-postgres",
)
PACKAGES = (
    "langgraph",
    "langgraph-checkpoint-sqlite",
    "langgraph-checkpoint-postgres",
    "psycopg[binary]",
    "psycopg-pool",
    "aiosqlite",
)
WORKER = Path(__file__).with_name("peers_worker.py")
CHECK = "import langgraph.store.sqlite, langgraph.checkpoint.postgres, psycopg_pool, aiosqlite"


def venv_path() -> Path:
    explicit = os.environ.get("FLOWSTATE_BENCH_PEERS_VENV")
    if explicit:
        return Path(explicit)
    if Path("/work/venvs").is_dir():
        return Path("/work/venvs/bench-peers")
    return Path.home() / ".cache" / "flowstate" / "bench-peers"


def ensure_venv(install: bool = True) -> tuple[str | None, str]:
    """(python, "") when the peers import; (None, reason) otherwise."""
    venv = venv_path()
    python = venv / "bin" / "python"

    def works() -> bool:
        if not python.exists():
            return False
        probe = subprocess.run(
            [str(python), "-c", CHECK], capture_output=True, text=True, timeout=120, check=False
        )
        return probe.returncode == 0

    if works():
        return str(python), ""
    if not install:
        return None, f"peers venv {venv} not installed (run the full suite once, or --peers)"
    log(f"creating the peers venv {venv} (pip install {' '.join(PACKAGES)})")
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300
        )
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PACKAGES],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not create {venv}: {exc}"
    if pip.returncode != 0:
        tail = (pip.stderr or pip.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"pip install failed: {tail[0][:200]}"
    if not works():
        return None, "peers installed but do not import"
    return str(python), ""


def run_peer(python: str, peer: str, sizes: Sizes, tmp: Path, pg_problem: str | None) -> Any:
    if peer.endswith("postgres") and pg_problem:
        return {"unavailable": pg_problem}
    cfg = {
        "peer": peer,
        "tasks": [1, 8],
        "seconds": sizes.peer_seconds,
        "rounds": sizes.peer_rounds,
        "tmp": str(tmp),
        "pg_url": plain_dsn(postgres_base_url()),
        "schema": f"fs_bench_peer_{uuid.uuid4().hex[:8]}",
        "pool": 10,
    }
    try:
        proc = subprocess.run(
            [python, str(WORKER), json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=120 + 10 * sizes.peer_seconds * sizes.peer_rounds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"unavailable": "worker timed out"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"unavailable": f"worker failed: {tail[0][:200]}"}
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    out: dict[str, Any] = {
        "versions": raw["versions"],
        "settings": raw["settings"],
    }
    for tasks in (1, 8):
        cells = [c for c in raw["cells"] if c["tasks"] == tasks]
        out[str(tasks)] = {
            "ops_per_s": median([c["rate"] for c in cells]),
            "p50_us": median([c["p50_us"] for c in cells]),
            "p99_us": median([c["p99_us"] for c in cells]),
            "ops": sum(c["ops"] for c in cells),
            "lost": sum(c["lost"] for c in cells),
            "errors": sum(c["errors"] for c in cells),
        }
    return out


def peers(sizes: Sizes, tmp: Path, pg_problem: str | None, install: bool) -> dict[str, Any]:
    python, reason = ensure_venv(install)
    if python is None:
        return {peer: {"unavailable": reason} for peer in PEERS}
    results = {}
    for peer in PEERS:
        log(f"peer {peer}")
        results[peer] = run_peer(python, peer, sizes, tmp, pg_problem)
    return results
