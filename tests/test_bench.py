"""The benchmark harness (``bench/``) runs end to end on tiny sizes, so it cannot rot.

Nothing here asserts a speed. The assertions are what the reports must mean: every section
produces its figures, flowstate loses no update under contention (checked against the stored
counts), the raw floors verify their own counts, reports and plots are written, PostgreSQL
schemas are dropped, and an unreachable PostgreSQL or peer is reported with its reason
instead of failing the run.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bench import common, peers, report, suite, web
from bench.common import Sizes
from bench.floors import SQLiteFloor

from .conftest import require_postgres


def run_suite(tmp_path: Path, *args: str) -> dict[str, Any]:
    assert suite.main(["--tiny", "--out", str(tmp_path), "--name", "t", *args]) == 0
    data: dict[str, Any] = json.loads((tmp_path / "t.json").read_text())
    return data


def check_flowstate_sections(data: dict[str, Any], backend: str) -> None:
    ops = data["ops"][backend]
    for name in (*common.OPERATIONS, "run"):
        assert ops[name]["ops"] > 0 and ops[name]["ops_per_s"] > 0, (backend, name)
    if backend != "memory":
        assert ops["floor"]["ops"] > 0 and ops["inc"]["floor_ratio"] > 0
    assert ops["run"]["vs_in_run_inc"] > 0
    for scenario, cells in data["contention"][backend].items():
        assert set(cells) == {"1", "4"}, scenario
        for writers, cell in cells.items():
            assert cell["ops"] > 0, (backend, scenario, writers)
            assert cell["lost"] == 0, (backend, scenario, writers, cell)
    assert [row["stored"] for row in data["growth"][backend]] == [50, 200]
    assert [row["length"] for row in data["push"][backend]] == [10, 100]


def test_suite_runs_every_local_section_and_writes_its_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = run_suite(tmp_path, "--only", "ops,contention,growth", "--backends", "memory,sqlite")
    for backend in ("memory", "sqlite"):
        check_flowstate_sections(data, backend)
    machine = data["machine"]
    assert len(machine["git_commit"]) == 40 and len(machine["loadavg_start"]) == 3
    assert machine["mode"] == "tiny" and "loadavg_end" in machine
    markdown = (tmp_path / "t.md").read_text()
    for title in ("Per operation", "Whole runs", "Contention", "stored sessions", "push_state"):
        assert title in markdown
    assert "load average" in markdown
    assert "## Contention" in capsys.readouterr().out  # the table goes to stdout too
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "No plots" in markdown
    else:
        for plot in report.PLOTS:
            assert (tmp_path / f"t-{plot}.png").stat().st_size > 1000
            assert f"t-{plot}.png" in markdown


def test_postgres_sections_run_and_drop_their_schemas(tmp_path: Path) -> None:
    require_postgres()
    before = len(common.CREATED_SCHEMAS)
    data = run_suite(tmp_path, "--only", "ops,contention,growth", "--backends", "postgres")
    check_flowstate_sections(data, "postgres")
    created = common.CREATED_SCHEMAS[before:]
    assert created

    async def left() -> list[str]:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(common.plain_dsn(common.postgres_base_url()))
        try:
            rows = await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)", created
            )
        finally:
            await conn.close()
        return [r[0] for r in rows]

    assert asyncio.run(left()) == []


def test_unreachable_postgres_is_skipped_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSTATE_BENCH_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/none")
    data = run_suite(tmp_path, "--only", "ops", "--backends", "memory,postgres")
    assert "unreachable" in data["skipped"]["postgres"]
    assert list(data["ops"]) == ["memory"]
    assert "Skipped postgres: PostgreSQL unreachable" in (tmp_path / "t.md").read_text()


def test_unknown_section_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        suite.main(["--only", "ops,nope"])
    assert exc.value.code == 2
    assert "unknown section 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the docs page only ever shows a full run
        suite.main(["--quick", "--docs"])
    assert "--docs regenerates docs/performance.md from a full run" in capsys.readouterr().err


def test_sqlite_floor_verifies_its_count_under_contention(tmp_path: Path) -> None:
    floor = SQLiteFloor(str(tmp_path / "floor.db"))
    cell = floor.run(0.1, writers=4)
    assert cell.ops > 0 and cell.lost == 0
    assert floor.total(["k0"]) == cell.ops


def test_missing_peers_are_reported_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSTATE_BENCH_PEERS_VENV", str(tmp_path / "no-venv"))
    results = peers.peers(Sizes.tiny(), tmp_path, None, install=False)
    assert set(results) == set(peers.PEERS)
    assert all("not installed" in r["unavailable"] for r in results.values())
    table = report.peers_table({"peers": results})
    assert table.count("unavailable: peers venv") == len(peers.PEERS)


def test_peer_worker_reports_throughput_and_lost_updates(tmp_path: Path) -> None:
    python, reason = peers.ensure_venv(install=False)
    if python is None:
        pytest.skip(reason)
    for peer in ("store-memory", "store-sqlite"):
        result = peers.run_peer(python, peer, Sizes.tiny(), tmp_path, None)
        assert "unavailable" not in result, result
        assert result["versions"]["langgraph"]
        assert result["1"]["ops"] > 0 and result["1"]["lost"] == 0  # one task cannot lose
        assert 0 <= result["8"]["lost"] <= result["8"]["ops"]


def test_http_section_measures_both_servers() -> None:
    result = web.http(Sizes.tiny())
    for kind in ("bare", "flowstate"):
        assert result[kind]["rps"] > 0 and result[kind]["cpu_ms"] > 0
    assert result["cpu_ratio"] > 0
