"""The TypeScript client (clients/js): its own test suite, and the inspector bundle's freshness.

``npm ci`` installs the JS toolchain from the lock file, then ``npm test`` builds the package,
type-checks it and runs vitest: the client and React hooks against a real ``flowstate serve``
(this venv's), generated types through ``tsc``, and the inspector in headless Chromium. The
inspector bundle committed in ``src/flowstate/static`` must equal a fresh build of its sources.

Without Node.js (≥ 18) these tests skip with the reason; ``FLOWSTATE_REQUIRE_NODE=1`` (set by
``.ci/run``) makes a missing Node a failure instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "clients" / "js"
STATIC = ROOT / "src" / "flowstate" / "static"
REQUIRED = os.environ.get("FLOWSTATE_REQUIRE_NODE") == "1"


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} [FLOWSTATE_REQUIRE_NODE=1]", pytrace=False)
    pytest.skip(reason)


def _env() -> dict[str, str]:
    """This venv's ``flowstate`` first on PATH (the JS tests start it as a subprocess)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("CI", "true")  # vitest: no watch mode
    env["NO_COLOR"] = "1"  # readable failure output in pytest's report
    env.pop("FORCE_COLOR", None)
    return env


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=JS, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def node_modules() -> Iterator[Path]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("Node.js is not installed (node and npm are needed for the JS client's tests)")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    major = re.match(r"v(\d+)", version.stdout.strip())
    if major is None or int(major.group(1)) < 18:
        _missing(f"Node.js >= 18 is needed, found {version.stdout.strip() or 'none'}")
    modules = JS / "node_modules"
    stamp = modules / ".package-lock.json"
    lock = JS / "package-lock.json"
    # npm ci (from the lock file) when node_modules is missing or older than the lock file.
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        installed = _run([npm, "ci", "--no-audit", "--no-fund"], timeout=900)
        assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout}\n{installed.stderr}"
    yield modules


def test_inspector_bundle_matches_a_fresh_build(node_modules: Path, tmp_path: Path) -> None:
    built = _run(["node", "scripts/build-inspector.mjs", "--outdir", str(tmp_path)], timeout=300)
    assert built.returncode == 0, built.stderr
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == ["app.js", "index.html", "style.css"]
    for name in fresh:
        assert (STATIC / name).read_bytes() == (tmp_path / name).read_bytes(), (
            f"src/flowstate/static/{name} is stale: run `npm run build:inspector` in clients/js"
        )


def test_js_client_suite_against_a_real_server(node_modules: Path) -> None:
    npm = shutil.which("npm")
    assert npm is not None
    result = _run([npm, "test"], timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"npm test failed:\n{output[-15000:]}"
    summary = re.search(r"Tests\s+(\d+) passed", re.sub(r"\x1b\[[0-9;]*m", "", output))
    assert summary is not None, output[-3000:]
    print(f"JS tests: {summary.group(1)} passed")
