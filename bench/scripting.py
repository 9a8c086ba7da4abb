"""Windmill-style script state (bench_scripts.py), run as a subprocess and kept verbatim.

The synchronous ``flowstate.scripts`` API runs its own event loop thread and the runner
starts processes, so this section runs the standalone script in a child process and puts its
printed figures into the report as they are.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import Sizes

SCRIPT = Path(__file__).with_name("bench_scripts.py")


def scripts(sizes: Sizes) -> dict[str, Any]:
    ops, runs = (50, 1) if sizes.quick else (300, 3)
    command = [sys.executable, "-P", str(SCRIPT), "--ops", str(ops), "--runs", str(runs)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return {
        "command": f"python bench/bench_scripts.py --ops {ops} --runs {runs}",
        "output": proc.stdout.strip(),
    }
