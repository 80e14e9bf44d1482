"""The repository passes its own linters: ``ruff check``, ``ruff format --check`` and ``mypy``.

Each tool runs with the configuration in pyproject.toml, on the whole repository, through the
interpreter running the tests (so the versions pinned in the ``dev`` extra are the ones used).
A failure shows the tool's own output, which names every file and line to fix.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "ruff check": ["-m", "ruff", "check", "--no-cache", "."],
    "ruff format": ["-m", "ruff", "format", "--check", "--no-cache", "."],
    "mypy": ["-m", "mypy"],
}


@pytest.mark.parametrize("tool", list(COMMANDS))
def test_repository_is_clean(tool: str) -> None:
    run = subprocess.run(
        [sys.executable, *COMMANDS[tool]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = (run.stdout + run.stderr).strip()
    assert run.returncode == 0, f"{tool} failed (exit {run.returncode}):\n{output}"
