"""scripts/setup.sh works with an externally managed python3 (Debian's own, PEP 668), and the
README's two commands, setup.sh and .ci/run agree on the environment they use.

The setup runs for real, in a copy of the script, against stand-ins on PATH: a `python3` that
refuses `pip install` as Debian's does ("externally-managed-environment") but makes a venv, a
venv interpreter that records what pip is asked to install, and `apt-get` / `sudo` that record
their calls. Installing torch for real takes minutes; what matters here is where it goes.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# Debian's python3: pip outside a venv is refused; `-m venv DIR` makes DIR/bin/python, a stand-in
# that logs its arguments (pip included) to $SETUP_LOG; `-c CODE` runs the real interpreter.
_SYSTEM_PYTHON = """#!/usr/bin/env bash
echo "system-python $*" >> "$SETUP_LOG"
if [ "$1" = -m ] && [ "$2" = pip ]; then
  echo "error: externally-managed-environment" >&2
  exit 1
fi
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  printf '#!/usr/bin/env bash\\necho "venv-python $*" >> "$SETUP_LOG"\\n' > "$3/bin/python"
  chmod +x "$3/bin/python"
  exit 0
fi
exec "$REAL_PYTHON" "$@"
"""
_RECORDER = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$SETUP_LOG"
"""


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _make_sandbox(tmp_path: Path) -> None:
    """A copy of setup.sh in tmp_path/repo, and the stand-ins in tmp_path/bin."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    _write_exe(stubs / "python3", _SYSTEM_PYTHON)
    for name in ("apt-get", "sudo"):
        _write_exe(stubs / name, _RECORDER)


def _run_setup(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the sandbox's setup.sh; return the run and the calls the stand-ins recorded."""
    if not (tmp_path / "repo").exists():
        _make_sandbox(tmp_path)
    log = tmp_path / "log"
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "SETUP_LOG": str(log),
        "REAL_PYTHON": sys.executable,
    }
    env.pop("PYTHON", None)
    run = subprocess.run(
        ["bash", str(tmp_path / "repo" / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return run, log.read_text().splitlines()


def test_setup_installs_into_a_venv_on_an_externally_managed_python(tmp_path: Path) -> None:
    run, calls = _run_setup(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr + "\n".join(calls)
    system_pip = [c for c in calls if c.startswith("system-python -m pip")]
    assert not system_pip, f"setup.sh ran pip on the system interpreter: {system_pip}"
    assert "system-python -m venv .venv" in calls
    installs = [c for c in calls if c.startswith("venv-python -m pip install")]
    assert any("torch==2.13.0" in c for c in installs), installs
    assert any("-e .[dev,plots]" in c for c in installs), installs
    torch_at = next(i for i, c in enumerate(calls) if "torch==2.13.0" in c)
    package_at = next(i for i, c in enumerate(calls) if "-e .[dev,plots]" in c)
    assert torch_at < package_at, "torch must be pinned before the package pulls in torch>=2.1"
    assert (tmp_path / "repo" / ".venv" / "bin" / "python").is_file()


def test_setup_reuses_a_working_venv(tmp_path: Path) -> None:
    first, _ = _run_setup(tmp_path)
    assert first.returncode == 0, first.stderr
    again, calls = _run_setup(tmp_path)
    assert again.returncode == 0, again.stderr
    assert not any(c.startswith("system-python -m venv") for c in calls), calls


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the two commands are in a bash block"
    return [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_readme_commands_use_the_venv_and_ci_runs_the_second() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    for command in commands:
        assert command.startswith("bash scripts/setup.sh && .venv/bin/"), command
    assert commands[0] == "bash scripts/setup.sh && .venv/bin/coreprune oneshot"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in [line.strip() for line in ci], (
        f".ci/run must run the README's test command {commands[1]!r}"
    )


def test_venv_is_ignored_by_git() -> None:
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert ".venv/" in ignored or ".venv" in ignored
