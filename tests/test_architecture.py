"""The house (docs/architecture.md): imports go only downward, no package imports its caller,
and no library module grows past the size a reader can hold.

The imports of every module under coreprune/ are read with `ast` (none is run), lazy ones inside
functions and `TYPE_CHECKING` blocks included: an import at call time is an arrow all the same.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "coreprune"

# Lowest first. A package may import its own modules and packages of a lower rank only; two
# packages of one rank know nothing of each other. "<root>" is coreprune/__init__.py, the top,
# which composes the layers (it plugs certify's search into compress(guarantee=...)).
#   geometry < surgery < coreset < scoring < compress < certify    (the core)
#   training < methods < harness                                  (train-time pruning, the rest)
#   zoo < serialization, harness                                  (specs saved with arch=)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_version", "checks"),  # the version string; argument checks
    ("torch_utils", "zoo"),  # torch helpers; the model zoo (torch layers only)
    ("geometry", "training", "serialization"),  # leaves over the foundation
    ("surgery",),
    ("coreset",),
    ("scoring",),
    ("compress",),
    ("certify", "methods"),
    ("harness",),
    ("<root>",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

# Arrows that still run up, each with its reason; the test fails when one disappears too, so
# this list is kept true.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}

# Library modules above this many lines, each with its reason.
MAX_LINES = 550
KNOWN_LONG: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported coreprune module, line) for every import statement in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [module]
        else:
            continue
        for target in targets:
            if target == "coreprune" or target.startswith("coreprune."):
                yield target, node.lineno


def _layer(module: str) -> str:
    parts = module.split(".")
    return "<root>" if len(parts) == 1 else parts[1]


def _arrows() -> list[tuple[str, str, int, str, str]]:
    """(importer, imported, line, importer's layer, imported's layer) across layers."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for imported, line in _imports(path):
            a, b = _layer(importer), _layer(imported)
            if a != b:
                out.append((importer, imported, line, a, b))
    return out


def test_every_package_has_a_layer() -> None:
    found = {
        p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    found.discard("__init__")
    assert found <= set(RANK), f"give these a place in LAYERS: {sorted(found - set(RANK))}"


def test_imports_only_go_down() -> None:
    upward = {}
    for importer, imported, line, a, b in _arrows():
        if RANK[b] >= RANK[a]:
            upward[(importer, imported)] = f"{importer} (line {line}) -> {imported}: {a} -> {b}"
    unexplained = [text for key, text in upward.items() if key not in KNOWN_UPWARD]
    assert not unexplained, "imports that run up or sideways:\n" + "\n".join(unexplained)
    gone = [key for key in KNOWN_UPWARD if key not in upward]
    assert not gone, f"no longer imported; drop from KNOWN_UPWARD: {gone}"


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for _, _, _, a, b in _arrows():
        graph.setdefault(a, set()).add(b)
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    known = {(_layer(a), _layer(b)) for a, b in KNOWN_UPWARD}
    real = [c for c in cycles if not any(f"{a} -> {b}" in c for a, b in known)]
    assert not real, "import cycles between packages:\n" + "\n".join(sorted(set(real)))


def test_library_modules_stay_short() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    unexplained = {p: n for p, n in long.items() if p not in KNOWN_LONG}
    assert not unexplained, f"modules over {MAX_LINES} lines (split along a seam): {unexplained}"
    gone = [p for p in KNOWN_LONG if p not in long]
    assert not gone, f"now short enough; drop from KNOWN_LONG: {gone}"


def test_packages_named_like_functions_import_as_packages() -> None:
    # In a fresh interpreter: each form once failed while coreprune.compress was the function.
    code = """
import coreprune.compress.choosers.coreset as a
import coreprune.certify.heldout as b
from coreprune.compress.choosers import coreset as c
import coreprune.compress.refit_choice
assert a is c and a.__name__ == "coreprune.compress.choosers.coreset"
assert b.__name__ == "coreprune.certify.heldout"
assert coreprune.compress.refit_choice.__name__ == "coreprune.compress.refit_choice"
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_packages_named_like_functions_call_them() -> None:
    import coreprune
    from coreprune.certify.heldout import certify
    from coreprune.compress.api import compress

    for package, function in ((coreprune.compress, compress), (coreprune.certify, certify)):
        assert callable(package)
        assert inspect.signature(package) == inspect.signature(function)
    assert importlib.import_module("coreprune.compress") is coreprune.compress
