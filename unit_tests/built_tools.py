"""Where toolchain/build.sh keeps the Go tools the tests run (helm, ct, promtool, actionlint, ...).

A tool that is not built fails the test that needs it, naming the command that builds it: the tests
never fall back to whatever else is installed, and never skip.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@cache
def built(*tools: str) -> str:
    """The PATH fragment holding `tools` (one folder per tool, ':'-joined)."""
    result = subprocess.run(
        [str(ROOT / "toolchain" / "build.sh"), "--path", *tools], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"toolchain/build.sh --path {' '.join(tools)}: {result.stderr.strip()}", pytrace=False)
    return result.stdout.strip()


def binary(tool: str, name: str) -> str:
    """The built executable `name` of `tool` (e.g. binary("prometheus", "promtool"))."""
    path = Path(built(tool)) / name
    if not path.exists():
        pytest.fail(f"{name} is not in {path.parent}; run toolchain/build.sh {tool}", pytrace=False)
    return str(path)
