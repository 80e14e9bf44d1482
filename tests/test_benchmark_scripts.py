"""Every benchmark runs as its docstring says, `python benchmarks/bench_x.py`: a script that
imports the `benchmarks` package first puts the repository root on `sys.path` (run as a script,
only `benchmarks/` itself is there). Read with `ast`, so no benchmark is run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("bench_*.py"))


def _imports_benchmarks(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "benchmarks"
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "benchmarks" for a in node.names)
    return False


def _puts_root_on_path(node: ast.stmt) -> bool:
    return "sys.path.insert" in ast.unparse(node)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_a_benchmark_finds_its_package_when_run_as_a_script(script: Path) -> None:
    body = ast.parse(script.read_text(encoding="utf-8")).body
    first_import = next((i for i, n in enumerate(body) if _imports_benchmarks(n)), None)
    if first_import is None:
        return
    assert any(_puts_root_on_path(n) for n in body[:first_import]), (
        f"{script.name} imports the benchmarks package before putting the repository root on "
        "sys.path, so `python benchmarks/<script>` fails"
    )


def test_one_benchmark_runs_as_a_script() -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_choice_speed.py", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_a_benchmark_parses_its_arguments(script: Path) -> None:
    """`--help` must say what a benchmark runs, not run it (and overwrite committed results)."""
    assert "ArgumentParser(" in script.read_text(encoding="utf-8"), script.name
