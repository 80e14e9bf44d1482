"""Run folders: deleting a previous run's own files (what --overwrite does)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

__all__ = ["remove_files"]


def remove_files(folder: Path, names: Iterable[str]) -> None:
    """Delete `folder / name` for each name, a file or a whole directory; absent ones are
    skipped and nothing else in the folder is touched."""
    for name in names:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
